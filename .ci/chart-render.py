"""Lints and renders a Helm chart with Helm's own engine, without a helm binary or a cluster.

    .venv-deploy/bin/python .ci/chart-render.py CHART OUT.yaml [--values FILE]... [--release NAME]
                                                [--namespace NS] [--kube-version v1.30.0]

helm-python-sdk (scripts/install-deploy-tools.sh) carries Helm v4's Go SDK. This runs, in its terms:
  helm lint --strict CHART -f FILE... --kube-version V      (any error or warning fails)
  helm install --dry-run=client NAME CHART -f FILE...       (client-only: values coalescing, the chart's
                                                             kubeVersion, the manifests parsed and sorted)
  helm template: every template rendered, hooks included, written to OUT.yaml with `# Source:` lines.
Values files are merged as helm merges -f files: maps key by key, anything else replaced by the later file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import helm_python as helm

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("chart", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--values", type=Path, action="append", default=[])
    parser.add_argument("--release", default="corral")
    parser.add_argument("--namespace", default="corral")
    parser.add_argument("--kube-version", default="v1.30.0")
    args = parser.parse_args()

    values: dict[str, Any] = {}
    for path in args.values:
        values = merge(values, helm.values_from_yaml(path.read_text()))
    label = " ".join(f"-f {path}" for path in args.values) or "(default values)"

    report = helm.lint(str(args.chart), values, strict=True, namespace=args.namespace,
                       kube_version=args.kube_version)
    findings = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + \
        [{"severity": 3, "path": "", "error": e} for e in report.get("errors") or []]
    for message in report.get("messages", []):
        print(f"  lint {SEVERITY.get(message.get('severity', 0))}: {message.get('path')}: {message.get('error')}")
    if findings:
        print(f"helm lint --strict {label}: {len(findings)} finding(s)")
        return 1
    print(f"helm lint --strict {label} --kube-version {args.kube_version}: "
          f"{report.get('total_charts_linted', 0)} chart linted, 0 warnings, 0 errors")

    with helm.Chart.load(str(args.chart)) as chart:
        chart.validate_schema(values)
        with helm.Config(storage_driver="memory", namespace=args.namespace) as config:
            release = config.install(chart, args.release, values, namespace=args.namespace, dry_run="client")
        print(f"helm install --dry-run=client {args.release} {label}: {release['status']}, "
              f"chart {release['chart_name']}-{release['chart_version']}")
        rendered = chart.render(values=values, name=args.release, namespace=args.namespace, is_install=True)
    documents = []
    for source in sorted(rendered):
        if source.endswith("NOTES.txt") or not rendered[source].strip():
            continue
        for document in rendered[source].split("\n---"):
            if document.strip().strip("-").strip():
                documents.append(f"---\n# Source: {source}\n{document.strip().removeprefix('---').strip()}\n")
    args.out.write_text("".join(documents))
    print(f"rendered {len(documents)} objects into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
