"""Dequantize a GGUF checkpoint into a plain Hugging Face folder (bf16 safetensors + tokenizer)
that vLLM and transformers load offline.

Needs torch, transformers (5.x) and gguf. ``python -m vllm_anchor.serving.gguf_convert FILE OUT``
"""
from __future__ import annotations

import json
import os
import sys


def convert(gguf_path: str, out_dir: str) -> str:
    """Write ``out_dir`` (config.json, model.safetensors, tokenizer files) from ``gguf_path``.

    Returns a one-line summary.  The RoPE settings are also written under the older flat keys
    (``rope_theta``) so readers built on transformers 4.x see the same model.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src, name = os.path.dirname(os.path.abspath(gguf_path)), os.path.basename(gguf_path)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=name, dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=name, dequantize=True))
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)

    cfg_path = os.path.join(out_dir, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in rope:
        cfg.setdefault("rope_theta", rope["rope_theta"])
    cfg.setdefault("torch_dtype", "bfloat16")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=1)

    tok_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(tok_path) as f:
        tcfg = json.load(f)
    if tcfg.get("tokenizer_class") == "TokenizersBackend":
        tcfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):
        tcfg.pop(key, None)
    with open(tok_path, "w") as f:
        json.dump(tcfg, f, indent=1)
    n = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__}: {n} parameters -> {out_dir}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m vllm_anchor.serving.gguf_convert FILE.gguf OUT_DIR",
              file=sys.stderr)
        return 2
    print(convert(argv[0], argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
