"""Per-layer sparsity statistics, cheap enough to leave on.

Workers update a module-level :data:`STATS` once per layer per long prefill, and once more when
that call's stripe density reaches the host (a call later, for the density guard), and flush it,
at most once a second, to a small JSON file in ``$VLLM_ANCHOR_STATS_DIR``: a one-shot timer
thread writes the file a second after the first unflushed update, so the last request's counts
show up even when no other request follows. The process that loaded the plugin first (the API
server, or the ``LLM`` process) creates that folder (or the one the user named) before vLLM starts
its engine, so every engine and worker process inherits the variable; the API server's Prometheus
collector reads the files at each scrape of ``/metrics`` (see :mod:`vllm_anchor.metrics`).
"""
from __future__ import annotations

import atexit
import json
import os
import threading
from dataclasses import dataclass, field

STATS_DIR_ENV = "VLLM_ANCHOR_STATS_DIR"
FLUSH_INTERVAL_S = 1.0


@dataclass
class LayerStats:
    calls: int = 0  # long-prefill forward calls of this layer
    fallbacks: int = 0  # of which ran dense FlashAttention because of the density guard
    measured: int = 0  # calls whose stripe density was measured
    density_sum: float = 0.0
    last_density: float = 0.0


@dataclass
class AnchorStats:
    layers: dict[str, LayerStats] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    auto_flush: bool = True  # tests that flush by hand turn the timer off
    _timer: threading.Timer | None = field(default=None, repr=False)
    _exit_flush: bool = field(default=False, repr=False)  # atexit flush registered
    # the tensor-parallel rank, read once vLLM has set it up (a flush at shutdown, after its
    # groups are gone, must not write a rank-1 worker's totals under rank 0)
    _rank: int | None = field(default=None, repr=False)

    def record(self, layer: str, density: float | None, fallback: bool) -> None:
        """One long-prefill call; ``density`` is None when it was not measured (the guard
        skipped it) or arrives later (:meth:`record_density`)."""
        self._update(layer, calls=1, fallbacks=int(fallback), density=density)

    def record_density(self, layer: str, density: float) -> None:
        """The stripe density of an earlier call of ``layer``, once it reached the host."""
        self._update(layer, calls=0, fallbacks=0, density=density)

    def _update(self, layer: str, calls: int, fallbacks: int, density: float | None) -> None:
        with self._lock:
            s = self.layers.setdefault(layer, LayerStats())
            s.calls += calls
            s.fallbacks += fallbacks
            if density is not None:
                s.measured += 1
                s.density_sum += density
                s.last_density = density
            if self._timer is not None or not self.auto_flush:
                return  # a flush is already due
            # a full interval after the first unflushed update, never at once: the first update
            # of a request comes from its prefill's first anchored layer, and a write then would
            # take the GIL from the thread launching that prefill's kernels
            timer = self._timer = threading.Timer(FLUSH_INTERVAL_S, self._timed_flush)
            timer.daemon = True
            if not self._exit_flush:
                # a worker that exits within the interval keeps its counts: at a normal interpreter
                # exit (spawned workers, an in-process engine), not where multiprocessing's forked
                # children leave through os._exit
                self._exit_flush = True
                atexit.register(self._flush_quietly)
        try:
            timer.start()
        except RuntimeError:  # no thread to be had (interpreter shutting down): try at the next update
            with self._lock:
                self._timer = None

    def _timed_flush(self) -> None:
        with self._lock:
            self._timer = None
        self._flush_quietly()

    def _flush_quietly(self) -> None:
        try:
            self.flush()
        except OSError:
            pass  # folder gone (server shutting down): the next update tries again

    def snapshot(self) -> dict[str, dict]:
        with self._lock:
            return {k: dict(vars(v)) for k, v in self.layers.items()}

    def flush(self) -> None:
        """Write this process's snapshot for the API server's collector (no-op without a dir).
        The file name carries the tensor-parallel rank: every rank runs every layer call on its
        own heads, so the collector labels the ranks apart instead of adding them up."""
        folder = os.environ.get(STATS_DIR_ENV)
        if not folder or not os.path.isdir(folder):
            return
        if self._rank is None:
            self._rank = tensor_parallel_rank()  # None until vLLM's groups exist: asked again next time
        path = os.path.join(folder, f"worker-{os.getpid()}-tp{self._rank or 0}.json")
        tmp = f"{path}.{threading.get_ident()}.tmp"  # two flushes at once (a slow disk) never share one
        with open(tmp, "w") as f:
            json.dump(self.snapshot(), f)
        os.replace(tmp, path)

    def reset(self) -> None:
        with self._lock:
            self.layers.clear()


def tensor_parallel_rank() -> int | None:
    """This worker's tensor-parallel rank; None outside a vLLM worker or before (or after) its
    groups exist."""
    try:
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank
        return int(get_tensor_model_parallel_rank())
    except Exception:  # no vLLM, or its groups are not initialized in this process
        return None


STATS = AnchorStats()
