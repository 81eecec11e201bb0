"""Server memory while a load test runs, for soak tests ("no memory growth"): the resident memory
(RSS) of whole process trees and the GPUs' used memory, sampled every few seconds.

RSS sums each watched process and all its descendants, recursively, because vLLM's API server,
engine core and workers are separate processes; a process found under several watched PIDs counts
once.  GPU memory is ``nvidia-smi``'s ``memory.used`` summed over the GPUs (vLLM preallocates its
KV cache, so growth there is something else growing).  Both are in MiB.

Sampling never fails the load test: a vanished process, a denied one or a missing or failing
``nvidia-smi`` leaves ``None`` (or a smaller sum) in the samples and a note in ``errors``.
Growth is judged after the warm-up (:meth:`MemoryWatcher.mark_steady`), since loading the first
long prompts legitimately grows allocator pools: the mean of the last 20% of the samples minus
the mean of the first 20%, which a single noisy sample at either end cannot dominate.
"""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

MIB = float(2**20)
GPU_QUERY = ["--query-gpu=memory.used", "--format=csv,noheader,nounits"]


def tree_rss_mb(pids: list[int]) -> tuple[float | None, int, list[str]]:
    """(RSS in MiB summed over the trees of ``pids`` or None if none could be read, number of
    processes summed, notes on what could not be read)."""
    notes: list[str] = []
    try:
        import psutil
    except ImportError:
        return None, 0, ["psutil is not installed: no RSS samples (pip install psutil)"]
    rss: dict[int, int] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            if root.status() == psutil.STATUS_ZOMBIE:  # exited, not yet reaped: RSS reads 0
                raise psutil.NoSuchProcess(pid)
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            notes.append(f"pid {pid}: no such process")
            continue
        except psutil.AccessDenied:
            notes.append(f"pid {pid}: access denied")
            continue
        for proc in procs:
            if proc.pid in rss:
                continue
            try:
                rss[proc.pid] = proc.memory_info().rss
            except psutil.NoSuchProcess:  # exited between listing and reading (zombies too)
                pass
            except psutil.AccessDenied:
                notes.append(f"pid {proc.pid} (under {pid}): access denied")
    if not rss:
        return None, 0, notes
    return sum(rss.values()) / MIB, len(rss), notes


def gpu_used_mb() -> tuple[float | None, str | None]:
    """(memory.used summed over the GPUs in MiB, or None; a note when that failed)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, "nvidia-smi is not on PATH: no GPU memory samples"
    try:
        out = subprocess.run([exe, *GPU_QUERY], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"nvidia-smi failed: {type(e).__name__}: {e}"
    if out.returncode != 0:
        return None, f"nvidia-smi exited with {out.returncode}: {out.stderr.strip()[:200]}"
    values = []
    for line in out.stdout.splitlines():
        try:
            values.append(float(line.strip()))
        except ValueError:
            pass  # "[N/A]" (MIG, some vGPUs) or a warning line
    if not values:
        return None, f"nvidia-smi gave no memory.used numbers: {out.stdout.strip()[:200]!r}"
    return sum(values), None


def _growth(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    k = max(1, round(len(values) / 5))
    return sum(values[-k:]) / k - sum(values[:k]) / k


class MemoryWatcher:
    """``async with MemoryWatcher(pids, interval):`` samples at entry, every ``interval`` s, at
    :meth:`mark_steady` and at exit.  ``samples`` holds ``{t_s, rss_mb, gpu_mb, procs}``
    (t_s from entry); :meth:`summary` gives first/last/max and growth after the warm-up."""

    def __init__(self, pids: list[int], interval: float = 5.0, gpu: bool = True):
        self.pids, self.interval, self.gpu = list(pids), float(interval), gpu
        self.samples: list[dict] = []
        self.errors: list[str] = []
        self._seen_notes: set[str] = set()
        self.steady_from = 0.0
        self._t0 = 0.0
        self._task: asyncio.Task | None = None

    def _read(self) -> tuple[float | None, float | None, int, list[str]]:
        rss, procs, notes = tree_rss_mb(self.pids)
        gpu = None
        if self.gpu:
            gpu, note = gpu_used_mb()
            if note:
                notes.append(note)
        return rss, gpu, procs, notes

    async def sample(self) -> dict:
        """Take one sample now (read in a worker thread: nvidia-smi takes tens of ms, which on
        the event loop would delay the timestamps of the streams being measured)."""
        t = time.perf_counter() - self._t0
        try:
            rss, gpu, procs, notes = await asyncio.to_thread(self._read)
        except Exception as e:  # noqa: BLE001 - a sampler bug must not end a soak test
            rss, gpu, procs, notes = None, None, 0, [f"sampler failed: {type(e).__name__}: {e}"]
        for note in notes:
            if note not in self._seen_notes:  # once each, with the time it first happened
                self._seen_notes.add(note)
                self.errors.append(f"t={t:.1f} s: {note}")
        s = {"t_s": round(t, 3), "rss_mb": None if rss is None else round(rss, 1),
             "gpu_mb": gpu, "procs": procs}
        self.samples.append(s)
        self.samples.sort(key=lambda x: x["t_s"])  # a periodic and a marked sample may cross
        return s

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.sample()

    async def __aenter__(self) -> "MemoryWatcher":
        self._t0 = time.perf_counter()
        await self.sample()
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.sample()

    async def mark_steady(self) -> None:
        """The warm-up is over: growth is measured from here (with a sample taken now)."""
        self.steady_from = time.perf_counter() - self._t0
        await self.sample()

    def summary(self) -> dict:
        steady = [s for s in self.samples if s["t_s"] >= round(self.steady_from, 3)]
        rss = [s["rss_mb"] for s in steady if s["rss_mb"] is not None]
        gpu = [s["gpu_mb"] for s in steady if s["gpu_mb"] is not None]
        return {
            "pids": self.pids, "interval_s": self.interval, "samples": len(self.samples),
            "warmup_end_s": round(self.steady_from, 3), "steady_samples": len(steady),
            "rss_first_mb": rss[0] if rss else None, "rss_last_mb": rss[-1] if rss else None,
            "rss_max_mb": max(rss) if rss else None, "rss_growth_mb": _growth(rss),
            "gpu_first_mb": gpu[0] if gpu else None, "gpu_last_mb": gpu[-1] if gpu else None,
            "gpu_max_mb": max(gpu) if gpu else None, "gpu_growth_mb": _growth(gpu),
            "errors": list(self.errors),
        }

    def result(self) -> dict:
        """The JSON keys: ``memory_samples`` (the time series) and ``memory_growth``."""
        return {"memory_samples": list(self.samples), "memory_growth": self.summary()}
