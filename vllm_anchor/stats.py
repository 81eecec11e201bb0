"""Per-layer sparsity statistics, cheap enough to leave on (updated once per layer per prefill).

Workers keep them in this module-level object; the API server reads them with
``collective_rpc`` (see ``vllm_anchor.metrics``) and exports them on ``/metrics``.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class LayerStats:
    calls: int = 0
    fallbacks: int = 0
    density_sum: float = 0.0
    last_density: float = 0.0


@dataclass
class AnchorStats:
    layers: dict[str, LayerStats] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, layer: str, density: float, fallback: bool) -> None:
        with self._lock:
            s = self.layers.setdefault(layer, LayerStats())
            s.calls += 1
            s.fallbacks += int(fallback)
            s.density_sum += density
            s.last_density = density

    def snapshot(self) -> dict[str, dict]:
        with self._lock:
            return {k: {"calls": v.calls, "fallbacks": v.fallbacks, "density_sum": v.density_sum,
                        "last_density": v.last_density} for k, v in self.layers.items()}

    def reset(self) -> None:
        with self._lock:
            self.layers.clear()


STATS = AnchorStats()
