"""Launch options from the environment (``ANCHOR_KERNELS_LAUNCH``), for A/B runs of a served model.

``bench/tune.py`` and ``bench/step_profile.py`` time the kernels in their own process, where a launch
option can be patched in Python (``bench/tuned.py``). A served model's kernels run in vLLM's worker
processes, which only the environment reaches, so comparing two launches end to end (TTFT) needs
this. Example::

    ANCHOR_KERNELS_LAUNCH="scan.BLOCK_N=128 scan.num_stages=1 scan.segment_tokens=1024"

Entries are ``KERNEL.OPTION=VALUE`` separated by spaces or commas; KERNEL is one of anchor, sparse,
scan, tail; OPTION one of BLOCK_N, num_warps, num_stages, plus ``scan.segment_tokens`` (candidate
keys per stripe-scan program). They apply to every head size, on the GPU only: the CPU interpreter
keeps its small blocks. Read once, at import; a bad entry raises ``ValueError`` naming the variable.
An entry that passes but does not compile (say, blocks too large for shared memory) stops start-up
too: the backend's warm-up compiles every kernel and, with this variable set, raises on failure.
Ray workers receive the variable: the plugin adds ``ANCHOR_KERNELS_`` to the prefixes vLLM copies
to them (``VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY``).
"""
from __future__ import annotations

import os
import re

ENV = "ANCHOR_KERNELS_LAUNCH"
KERNELS = ("anchor", "sparse", "scan", "tail")
_WARPS = (1, 2, 4, 8, 16)


def _check(kernel: str, option: str, value: int, entry: str) -> None:
    """Raise unless ``value`` is one Triton (and our kernels' tiling) accepts for ``option``."""
    bad = None
    if option == "BLOCK_N" and (value < 16 or value > 256 or value & (value - 1)):
        bad = "a power of two from 16 to 256"
    elif option == "num_warps" and value not in _WARPS:
        bad = f"one of {', '.join(map(str, _WARPS))}"
    elif option == "num_stages" and not 1 <= value <= 8:
        bad = "between 1 and 8"
    elif option == "segment_tokens" and (value <= 0 or value % 16):
        bad = "a positive multiple of 16"
    if bad:
        raise ValueError(f"{ENV}: {entry!r}: {kernel}.{option} must be {bad}")


def parse(text: str) -> tuple[dict[str, dict[str, int]], int | None]:
    """``(per-kernel launch options, scan segment tokens or None)`` from the variable's text."""
    options: dict[str, dict[str, int]] = {}
    segment = None
    for entry in (e for e in re.split(r"[\s,]+", text.strip()) if e):
        key, eq, raw = entry.partition("=")
        kernel, dot, option = key.partition(".")
        if not (eq and dot) or kernel not in KERNELS:
            raise ValueError(f"{ENV}: {entry!r} is not KERNEL.OPTION=VALUE with KERNEL one of "
                             f"{', '.join(KERNELS)}")
        allowed = ("BLOCK_N", "num_warps", "num_stages") + (("segment_tokens",) if kernel == "scan" else ())
        if option not in allowed:
            raise ValueError(f"{ENV}: {entry!r}: {kernel} takes {', '.join(allowed)}, not {option!r}")
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{ENV}: {entry!r}: {raw!r} is not an integer") from None
        _check(kernel, option, value, entry)
        if option == "segment_tokens":
            segment = value
        else:
            options.setdefault(kernel, {})[option] = value
    return options, segment


LAUNCH_OVERRIDES, SEGMENT_TOKENS_OVERRIDE = parse(os.environ.get(ENV, ""))


def lay_over(opts: dict[str, dict], patch: dict[str, dict]) -> dict[str, dict]:
    """Launch options with ``patch``'s per-kernel entries laid over ``opts``' (kernels ``patch``
    names that ``opts`` lacks are ignored). The environment's overrides and bench/tuned.py's
    sweep winners are applied this one way."""
    return {k: {**v, **patch.get(k, {})} for k, v in opts.items()}


def describe() -> str:
    """One line for logs: what the variable changed, or '' when it is unset."""
    parts = [f"{k}.{o}={v}" for k, opts in LAUNCH_OVERRIDES.items() for o, v in opts.items()]
    if SEGMENT_TOKENS_OVERRIDE is not None:
        parts.append(f"scan.segment_tokens={SEGMENT_TOKENS_OVERRIDE}")
    return " ".join(parts)
