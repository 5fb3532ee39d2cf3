"""Build a tiny Llama-architecture model, with random weights, that the real vLLM engine can serve on a CPU.

Run with the vLLM venv's interpreter (it needs torch, transformers, tokenizers and safetensors, which Corral's own
venv does not have)::

    .venv-vllm/bin/python inference/engine/tiny_model.py var/models/tiny-llama [--lora var/models/tiny-llama-lora]

No weights can be downloaded where Corral is built and tested, so the model is made here: a 2-layer Llama
(hidden 128, 4 query heads and 2 key/value heads of dimension 32, vocabulary 2048), saved with safetensors, and a
byte-level BPE tokenizer trained on this Python's standard-library sources, with a Llama-3-like chat template. Its
answers are gibberish; what it exercises is the engine: loading, tokenizing, scheduling, streaming, usage,
metrics and LoRA. The head dimension matters: vLLM's CPU attention kernel supports 32, 64, 80, 96, 112, 128...;
with 16 the server reports healthy and then dies on the first request.

The build is deterministic (fixed seeds, sorted corpus) on a given Python version, and idempotent: a directory
that already holds a complete model (or adapter) is left alone. Output is written to a sibling temporary
directory and renamed into place, so an interrupted build never looks complete.

This module is a script for the vLLM venv: it must not import Django or anything from Corral.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

# torch and transformers take ~8 s to import: they are imported where a build needs them, so that re-running on
# a finished directory returns at once.
if TYPE_CHECKING:
    from transformers import LlamaConfig, PreTrainedTokenizerFast

SEED = 20261128
VOCAB_SIZE = 2048
MAX_POSITIONS = 512
CORPUS_MAX_BYTES = 4_000_000  # enough text for 2048 merges; training takes a few seconds

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|pad|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, START_HEADER, END_HEADER, EOT]

# Llama 3's chat layout: each message is a header with the role, a blank line, the content and <|eot_id|>.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

LORA_RANK = 8
LORA_ALPHA = 16
LORA_TARGET_MODULES = ["q_proj", "v_proj"]

# Written last into a finished directory: its presence, with this content, is what "complete" means. Change the
# key when the recipe changes, and old builds are rebuilt.
MODEL_MARKER = ".corral-tiny-model"
MODEL_KEY = f"tiny-llama v1 seed={SEED} vocab={VOCAB_SIZE}"
LORA_MARKER = ".corral-tiny-lora"
LORA_KEY = f"tiny-llama-lora v1 seed={SEED} r={LORA_RANK}"


def model_config() -> LlamaConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=SPECIAL_TOKENS.index(BOS),
        eos_token_id=SPECIAL_TOKENS.index(EOS),
        pad_token_id=SPECIAL_TOKENS.index(PAD),
        tie_word_embeddings=False,
        dtype="float32",
    )


def stdlib_corpus(max_bytes: int = CORPUS_MAX_BYTES) -> Iterator[str]:
    """Yield the standard library's top-level .py files in name order, up to about max_bytes of text."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        yield text
        total += len(text)
        if total >= max_bytes:
            return


def train_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,  # ids 0..5, in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable: no unknown token
        show_progress=False,
    )
    tokenizer.train_from_iterator(stdlib_corpus(), trainer=trainer)
    # Like Llama 3: a plain encode starts with <|begin_of_text|>; the chat template writes it itself.
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[START_HEADER, END_HEADER, EOT],
        model_max_length=MAX_POSITIONS,
        chat_template=CHAT_TEMPLATE,
    )


def is_complete(directory: Path, marker: str, key: str) -> bool:
    marker_path = directory / marker
    return marker_path.is_file() and marker_path.read_text().strip() == key


def write_atomically(directory: Path, marker: str, key: str, fill: Callable[[Path], None]) -> None:
    """Call fill(tmp_dir) on a fresh sibling directory, mark it complete and rename it to directory."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the model is not a secret
        fill(tmp)
        (tmp / marker).write_text(key + "\n")
        if directory.exists():  # an incomplete or outdated build
            shutil.rmtree(directory)
        tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fill_model(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    torch.manual_seed(SEED)
    config = model_config()
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(out)  # model.safetensors + config.json
    eos_ids = [SPECIAL_TOKENS.index(EOS), SPECIAL_TOKENS.index(EOT)]
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=eos_ids, pad_token_id=config.pad_token_id
    ).save_pretrained(out)
    train_tokenizer().save_pretrained(out)


def fill_lora(out: Path) -> None:
    """Write a random LoRA adapter in PEFT's file layout, without needing the peft package.

    PEFT starts lora_B at zero (an adapter that changes nothing); here both factors are random, so a request
    through the adapter gives different tokens from the base model, which is what a test wants to see.
    """
    import torch
    from safetensors.torch import save_file

    config = model_config()
    head_dim = config.hidden_size // config.num_attention_heads
    out_features = {
        "q_proj": config.num_attention_heads * head_dim,
        "v_proj": config.num_key_value_heads * head_dim,
    }
    generator = torch.Generator().manual_seed(SEED + 1)
    tensors = {}
    for layer in range(config.num_hidden_layers):
        for module in LORA_TARGET_MODULES:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(LORA_RANK, config.hidden_size, generator=generator) * 0.05
            tensors[f"{prefix}.lora_B.weight"] = (
                torch.randn(out_features[module], LORA_RANK, generator=generator) * 0.05
            )
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "tiny-llama",
        "r": LORA_RANK,
        "lora_alpha": LORA_ALPHA,
        "lora_dropout": 0.0,
        "target_modules": LORA_TARGET_MODULES,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_rslora": False,
        "use_dora": False,
    }
    (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")


def build(out_dir: Path, lora_dir: Path | None = None) -> None:
    for directory, marker, key, fill, what in [
        (out_dir, MODEL_MARKER, MODEL_KEY, fill_model, "model"),
        (lora_dir, LORA_MARKER, LORA_KEY, fill_lora, "LoRA adapter"),
    ]:
        if directory is None:
            continue
        if is_complete(directory, marker, key):
            print(f"tiny {what}: {directory} is already built")
            continue
        started = time.monotonic()
        write_atomically(directory, marker, key, fill)
        size = sum(f.stat().st_size for f in directory.iterdir())
        print(f"tiny {what}: built {directory} in {time.monotonic() - started:.1f} s ({size / 1024:.0f} KiB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="where to write the model (skipped if already complete)")
    parser.add_argument("--lora", type=Path, metavar="OUT_LORA_DIR", help="also write a random LoRA adapter here")
    args = parser.parse_args(argv)
    build(args.out_dir, args.lora)
    return 0


if __name__ == "__main__":
    sys.exit(main())
