"""Backend settings: defaults < ``VLLM_ANCHOR_*`` environment < ``--additional-config``.

``vllm serve M --attention-backend anchor --additional-config '{"anchor": {"theta": 10}}'`` or
``VLLM_ANCHOR_THETA=10``. Every key is checked at start-up: an unknown key or a bad value raises
``ValueError`` naming it, which stops the server before it takes traffic.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields

from vllm_anchor.kernels import AnchorConfig

from .engine_profile import ENV_NAMES as PROFILE_ENV

ENV_PREFIX = "VLLM_ANCHOR_"
# VLLM_ANCHOR_* variables that are not backend settings (launcher cache, statistics folder, the
# step profiler's, which engine_profile.from_env checks).
OTHER_ENV = {"VLLM_ANCHOR_CACHE", "VLLM_ANCHOR_STATS_DIR"} | PROFILE_ENV


@dataclass(frozen=True)
class AnchorSettings:
    """Everything the backend needs besides the kernel hyper-parameters.

    min_seq_len:
        A prefill request runs the anchor kernels once its context (cached + this chunk)
        reaches this many tokens; shorter ones run stock FlashAttention. On SmolLM2 the whole
        path breaks even with FA3 near 20k tokens (0.84x at 16k, 1.46x at 32k at theta 12:
        bench/results/kernels_smollm2_h200.json.gz). The default sits above 16k, where the path
        loses to FA3, and below 32k, where it wins; it counts the whole context, so the later
        chunks of a long prompt (and a chunk after a prefix-cache hit) run anchor even when the
        chunk itself is short.
    density_guard:
        Largest stripe density (selected / candidate keys, averaged over the chunk) for which
        the sparse step runs; above it the chunk runs dense FlashAttention instead, so
        near-uniform attention is never much slower than stock. ``1.0`` disables the guard.
        Per layer, sparse breaks even with FA3 near density 0.4 at 16k and 0.6 at 32k on
        SmolLM2, 0.5-0.6 on the Llama-8B shape at 32k-128k; 0.5 took SmolLM2's 131000-token TTFT
        from 0.83x to 0.58x of stock (bench/results/serving/ttft_*_h200.json). It does not
        change what a sparse layer attends to (theta does), only which layers run sparse.
        Each layer keeps its verdict per half-octave of context (``routing.context_bucket``):
        SmolLM2's layers are far denser at 32k than at 128k, and one verdict for both ran 128k
        chunks dense that measure sparse (0.61x vs 0.47x of stock at 131000 tokens,
        bench/results/lease23_h100/guard_key/).
    layers:
        ``"all"`` or a comma list of layer indices and ranges (``"0-3,7"``) that use anchor.
    enabled:
        Master switch; ``false`` makes the backend behave exactly like FLASH_ATTN.
    """

    kernel: AnchorConfig = field(default_factory=AnchorConfig)
    min_seq_len: int = 24576
    density_guard: float = 0.5
    layers: str = "all"
    enabled: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.min_seq_len, int) or self.min_seq_len < 1:
            raise ValueError(f"anchor setting min_seq_len must be an integer >= 1, got {self.min_seq_len!r}")
        if not isinstance(self.density_guard, (int, float)) or not 0.0 <= self.density_guard <= 1.0:
            raise ValueError(f"anchor setting density_guard must be in [0, 1], got {self.density_guard!r}")
        parse_layers(self.layers)

    def layer_enabled(self, index: int | None) -> bool:
        allowed = parse_layers(self.layers)
        return self.enabled and (allowed is None or (index is not None and index in allowed))


def parse_layers(spec: str) -> frozenset[int] | None:
    """``"all"`` -> None (every layer); ``"0-3,7"`` -> {0, 1, 2, 3, 7}."""
    if not isinstance(spec, str):
        raise ValueError(f"anchor setting layers must be a string like 'all' or '0-3,7', got {spec!r}")
    if spec.strip().lower() == "all":
        return None
    out: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            a, b = int(lo), int(hi or lo)
            if a < 0 or b < a:
                raise ValueError
            out.update(range(a, b + 1))
    except ValueError:
        raise ValueError(f"anchor setting layers: cannot parse {spec!r}; use 'all' or e.g. '0-3,7'") from None
    return frozenset(out)


_KERNEL_KEYS = {f.name: f.type for f in fields(AnchorConfig)}
_BACKEND_KEYS = {"min_seq_len": "int", "density_guard": "float", "layers": "str", "enabled": "bool"}
KNOWN_KEYS = tuple(_KERNEL_KEYS) + tuple(_BACKEND_KEYS)


def _coerce(key: str, value, source: str):
    kind = {**{k: str(t) for k, t in _KERNEL_KEYS.items()}, **_BACKEND_KEYS}[key]
    try:
        if "bool" in kind:
            if isinstance(value, bool):
                return value
            if str(value).strip().lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if "float" in kind:
            if isinstance(value, bool):
                raise ValueError
            v = float(value)
            if math.isnan(v):
                raise ValueError
            return v
        if "int" in kind:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"anchor setting {key!r} from {source}: bad value {value!r} (expected {kind})") from None


def load_settings(additional_config: dict | None = None, environ: dict | None = None) -> AnchorSettings:
    """Merge defaults, ``VLLM_ANCHOR_*`` variables and ``additional_config["anchor"]``."""
    environ = os.environ if environ is None else environ
    values: dict = {}
    sources: dict[str, str] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in OTHER_ENV:
            continue
        key = name[len(ENV_PREFIX):].lower()
        if key not in KNOWN_KEYS:
            raise ValueError(f"unknown environment variable {name}; known: "
                             + ", ".join([ENV_PREFIX + k.upper() for k in KNOWN_KEYS] + sorted(OTHER_ENV)))
        values[key] = _coerce(key, raw, name)
        sources[key] = name
    section = (additional_config or {}).get("anchor", {})
    if not isinstance(section, dict):
        raise ValueError(f'--additional-config "anchor" must be an object, got {section!r}')
    for key, raw in section.items():
        if key not in KNOWN_KEYS:
            raise ValueError(f"unknown anchor setting {key!r} in --additional-config; known: {', '.join(KNOWN_KEYS)}")
        values[key] = _coerce(key, raw, "--additional-config")
        sources[key] = "--additional-config"
    try:
        kernel = AnchorConfig(**{k: v for k, v in values.items() if k in _KERNEL_KEYS})
        return AnchorSettings(kernel=kernel, **{k: v for k, v in values.items() if k in _BACKEND_KEYS})
    except ValueError as e:
        # a value that is fine alone but not with the others (group_size vs pool_block): say
        # where each setting involved came from
        named = [f"{k} from {src}" for k, src in sources.items() if k in str(e)]
        raise ValueError(f"{e}" + (f" ({'; '.join(named)})" if named else "")) from None
