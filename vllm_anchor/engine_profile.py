"""Profile chosen engine steps from inside the process that runs the model.

Served, the anchor path's 32k step looked slower and far noisier than with the engine core in the
caller's process (bench/results/lease24_h100/trace32k_mp2/, trace32k_diag/: the floor's engine
step 68-102 ms out of process against ~53 in process, runs spread 83-177 ms), while stock's did
not. vLLM's own server profiler recorded no engine step (lease21_h100/trace/) and a profiler in the
client process cannot see the engine core's. This hook runs where the attention metadata is built,
so it sees whichever process runs the model, ``vllm serve`` included. (What it found,
lease25_h100/engine_profile/: no garbage collection and no busy thread in the engine process; the
host-bound floor simply follows the CPU's speed, in process or out.)::

    VLLM_ANCHOR_PROFILE_DIR=/tmp/prof VLLM_ANCHOR_PROFILE_STEPS=4:1 vllm serve ... --attention-backend anchor

It counts the steps whose batch holds at least ``VLLM_ANCHOR_PROFILE_MIN_TOKENS`` tokens (default
2048: prefills, not decodes; vLLM's start-up dummy runs build metadata too, and one of 1024 tokens
counted as a step with a threshold of 1024); from the ``first``-th such step it records until
``count`` of them have started and the next step of any size begins (or the process exits), then
writes

* ``engine-<pid>-step<first>.pt.trace.json.gz``: a torch profiler trace (CPU + CUDA) of the window,
  for ``bench/trace_gaps.py`` (``VLLM_ANCHOR_PROFILE_TORCH=0`` leaves the profiler off);
* ``engine-<pid>-step<first>.json``: what the trace does not show: every Python garbage
  collection in the window (generation, duration), the CPU time each thread of the process used in
  it (a busy thread contends for the GIL with the one launching kernels), the builds' timestamps,
  the torch thread count and the CPU affinity.

One window per process; the folder must exist. The files are written when the window closes,
inside the next step's metadata build, which they delay (by a few hundred ms with the torch
trace): that step's request is not a timing. Off (one attribute test per step) without
``VLLM_ANCHOR_PROFILE_DIR``.
"""
from __future__ import annotations

import atexit
import gc
import gzip
import json
import logging
import os
import shutil
import sys
import threading
import time

logger = logging.getLogger("vllm_anchor")

DIR_ENV = "VLLM_ANCHOR_PROFILE_DIR"
STEPS_ENV = "VLLM_ANCHOR_PROFILE_STEPS"
MIN_TOKENS_ENV = "VLLM_ANCHOR_PROFILE_MIN_TOKENS"
TORCH_ENV = "VLLM_ANCHOR_PROFILE_TORCH"
ENV_NAMES = frozenset({DIR_ENV, STEPS_ENV, MIN_TOKENS_ENV, TORCH_ENV})


def parse_steps(spec: str) -> tuple[int, int]:
    """``"first:count"`` (or ``"first"``, count 1) -> ``(first, count)``, both >= 1."""
    first, _, count = spec.strip().partition(":")
    try:
        f, c = int(first), int(count or 1)
    except ValueError:
        f = c = 0
    if f < 1 or c < 1:
        raise ValueError(f"{STEPS_ENV} must be 'first:count' with both >= 1 (e.g. '4:1'), got {spec!r}")
    return f, c


def thread_cpu_ms() -> dict[int, tuple[str, float]]:
    """``{native thread id: (name, user + system CPU ms)}`` of this process's threads (Linux
    ``/proc``; empty elsewhere). Python threads are named by ``threading``, others by the OS."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    tick_ms = 1e3 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 10.0
    out = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # the thread ended in between
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) * tick_ms  # utime, stime (fields 14, 15 of stat)
        out[int(tid)] = (names.get(int(tid), comm), cpu)
    return out


def cpu_delta(before: dict, after: dict) -> list[dict]:
    """Per-thread CPU ms between two :func:`thread_cpu_ms` readings, busiest first."""
    rows = [{"tid": tid, "name": name, "cpu_ms": cpu - before.get(tid, (name, 0.0))[1]}
            for tid, (name, cpu) in after.items()]
    return sorted(rows, key=lambda r: -r["cpu_ms"])


class StepProfiler:
    """The state machine behind :func:`on_build`; tests drive it with a fake clock and no torch."""

    def __init__(self, folder: str, first: int, count: int, min_tokens: int = 2048,
                 torch_trace: bool = True, clock=time.perf_counter):
        self.folder, self.first, self.count = folder, first, count
        self.min_tokens, self.torch_trace, self.clock = min_tokens, torch_trace, clock
        self.long_steps = 0  # long builds seen so far
        self.in_window = 0  # long builds inside the window
        self.done = False
        self._owner = None
        self._prof = None
        self._started = False
        self._t0 = 0.0
        self._builds: list[tuple[float, int]] = []
        self._gc: list[dict] = []
        self._gc_start: dict = {}
        self._threads_before: dict = {}
        self.written: list[str] = []

    @property
    def recording(self) -> bool:
        return self._started and not self.done

    def on_build(self, owner, num_tokens: int) -> None:
        """Once per step, before its metadata is built. Only the first builder that calls in
        counts (a model with several KV-cache groups builds once per group per step)."""
        if self.done:
            return
        if self._owner is None:
            self._owner = id(owner)
        elif id(owner) != self._owner:
            return
        long = num_tokens >= self.min_tokens
        if self.recording:
            if self.in_window >= self.count:  # the window's last step is over: the next one begins
                self.stop()
                return
            self.in_window += long
            self._builds.append(((self.clock() - self._t0) * 1e3, num_tokens))
            return
        if not long:
            return
        self.long_steps += 1
        if self.long_steps == self.first:
            self.start()
            self.in_window = 1
            self._builds.append((0.0, num_tokens))

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = {"at": self.clock(), "generation": info.get("generation")}
        elif self._gc_start:
            at = self._gc_start["at"]
            self._gc.append({"generation": self._gc_start["generation"], "at_ms": (at - self._t0) * 1e3,
                             "ms": (self.clock() - at) * 1e3, "collected": info.get("collected")})
            self._gc_start = {}

    def start(self) -> None:
        self._threads_before = thread_cpu_ms()
        gc.callbacks.append(self._on_gc)
        if self.torch_trace:
            import torch
            from torch.profiler import ProfilerActivity, profile
            cuda = [ProfilerActivity.CUDA] if torch.cuda.is_available() else []
            self._prof = profile(activities=[ProfilerActivity.CPU, *cuda])
            self._prof.start()
        self._t0 = self.clock()
        self._started = True
        atexit.register(self.stop)
        logger.info("vllm-anchor: profiling from long step %d (pid %d) into %s", self.first, os.getpid(), self.folder)

    def stop(self) -> None:
        if not self.recording:
            return
        self.done = True
        window_ms = (self.clock() - self._t0) * 1e3
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        threads = cpu_delta(self._threads_before, thread_cpu_ms())
        base = os.path.join(self.folder, f"engine-{os.getpid()}-step{self.first}")
        if self._prof is not None:
            import torch
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._prof.stop()
            self._prof.export_chrome_trace(base + ".pt.trace.json")
            with open(base + ".pt.trace.json", "rb") as f, gzip.open(base + ".pt.trace.json.gz", "wb") as g:
                shutil.copyfileobj(f, g)
            os.remove(base + ".pt.trace.json")
            self.written.append(base + ".pt.trace.json.gz")
        torch_threads = None
        if "torch" in sys.modules:
            torch_threads = sys.modules["torch"].get_num_threads()
        report = {
            "pid": os.getpid(), "first_long_step": self.first, "long_steps": self.count,
            "min_tokens": self.min_tokens, "window_ms": window_ms, "torch_trace": self._prof is not None,
            "builds_ms_tokens": self._builds,
            "gc": self._gc, "gc_ms_total": sum(g["ms"] for g in self._gc),
            "threads_cpu_ms": threads,
            "torch_threads": torch_threads, "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
            "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu_count": os.cpu_count(), "switch_interval_s": sys.getswitchinterval(),
            "gc_thresholds": gc.get_threshold(), "gc_frozen": gc.get_freeze_count(),
        }
        with open(base + ".json", "w") as f:
            json.dump(report, f, indent=1)
        self.written.append(base + ".json")
        logger.info("vllm-anchor: profile of long step %d written to %s", self.first, base)


def from_env(environ=None) -> StepProfiler | None:
    """The profiler ``VLLM_ANCHOR_PROFILE_*`` asks for, or None. A bad value raises ValueError
    naming the variable (the plugin calls this at start-up)."""
    environ = os.environ if environ is None else environ
    folder = environ.get(DIR_ENV)
    if not folder:
        return None
    first, count = parse_steps(environ.get(STEPS_ENV, "4:1"))
    raw = environ.get(MIN_TOKENS_ENV, "2048")
    try:
        min_tokens = int(raw)
    except ValueError:
        min_tokens = 0
    if min_tokens < 1:
        raise ValueError(f"{MIN_TOKENS_ENV} must be an integer >= 1, got {raw!r}")
    raw_torch = environ.get(TORCH_ENV, "1").strip().lower()
    if raw_torch not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError(f"{TORCH_ENV} must be 1/0 (true/false, yes/no, on/off), got {raw_torch!r}")
    torch_trace = raw_torch in ("1", "true", "yes", "on")
    if not os.path.isdir(folder):
        raise ValueError(f"{DIR_ENV}={folder!r} is not a folder")
    return StepProfiler(folder, first, count, min_tokens, torch_trace)


_PROFILER: StepProfiler | None = None
_LOADED = False


def on_build(owner, num_tokens: int) -> None:
    """The builder's hook: one step begins. Free when profiling is off."""
    global _PROFILER, _LOADED
    if not _LOADED:
        _LOADED = True
        try:
            _PROFILER = from_env()
        except ValueError as e:  # the plugin checked at start-up; never fail a step over a profile
            logger.warning("vllm-anchor: step profiler off: %s", e)
    if _PROFILER is not None:
        _PROFILER.on_build(owner, num_tokens)
