"""Prometheus metrics of the anchor backend on vLLM's ``/metrics``.

vLLM serves the default ``prometheus_client`` registry of the API-server process. The workers
that run attention are other processes, so they flush their :data:`~vllm_anchor.stats.STATS` to
``$VLLM_ANCHOR_STATS_DIR`` and this collector sums the files at scrape time:

* ``vllm_anchor_prefill_layer_calls_total{layer,tp_rank}``: long-prefill calls that took the
  anchor path;
* ``vllm_anchor_density_fallbacks_total{layer,tp_rank}``: of those, calls the density guard ran
  dense;
* ``vllm_anchor_stripe_density{layer,tp_rank}``: mean measured stripe density (selected /
  candidates).

Under tensor parallelism every rank runs every layer call on its own heads (and its own density
guard decides for them), so each rank is a series of its own: summing over ``tp_rank`` counts a
call once per rank. Workers on other nodes (multi-node Ray) cannot write into the API server's
folder: their ranks are missing here.

With ``--api-server-count > 1`` (which ``--data-parallel-size > 1`` implies unless the count is
given) or ``PROMETHEUS_MULTIPROC_DIR`` set, vLLM serves a multiprocess registry that this
collector is not part of; the statistics are then only in the JSON files.
"""
from __future__ import annotations

import atexit
import glob
import json
import os
import re
import shutil
import tempfile

from .stats import STATS_DIR_ENV

_registered_dir: str | None = None


_WORKER_FILE = re.compile(r"worker-\d+(?:-tp(\d+))?\.json$")


def read_stats(folder: str, by_rank: bool = False) -> dict:
    """Per-layer totals over every worker file in ``folder``; with ``by_rank``, per
    ``(layer, tensor-parallel rank)`` (files of data-parallel engines of one rank add up: they
    served other requests; tensor-parallel ranks ran the same calls on other heads)."""
    total: dict = {}
    for path in glob.glob(os.path.join(folder, "worker-*.json")):
        m = _WORKER_FILE.search(path)
        if m is None:
            continue  # a temporary file
        rank = m.group(1) or "0"
        try:
            with open(path) as f:
                layers = json.load(f)
        except (OSError, ValueError):
            continue  # a file being replaced right now: next scrape
        for name, s in layers.items():
            key = (name, rank) if by_rank else name
            t = total.setdefault(key, {"calls": 0, "fallbacks": 0, "measured": 0, "density_sum": 0.0})
            for k in t:
                t[k] += s.get(k, 0)
    return total


class AnchorCollector:
    def __init__(self, folder: str):
        self.folder = folder

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        labels = ["layer", "tp_rank"]
        calls = CounterMetricFamily("vllm_anchor_prefill_layer_calls",
                                    "Long-prefill attention calls that took the anchor path", labels=labels)
        falls = CounterMetricFamily("vllm_anchor_density_fallbacks",
                                    "Anchor-path calls run as dense FlashAttention by the density guard",
                                    labels=labels)
        dens = GaugeMetricFamily("vllm_anchor_stripe_density",
                                 "Mean measured stripe density (selected / candidate keys)", labels=labels)
        for key, s in sorted(read_stats(self.folder, by_rank=True).items()):
            calls.add_metric(list(key), s["calls"])
            falls.add_metric(list(key), s["fallbacks"])
            if s["measured"]:
                dens.add_metric(list(key), s["density_sum"] / s["measured"])
        yield calls
        yield falls
        yield dens


def ensure_stats_dir_and_collector() -> str:
    """Pick the stats folder and register the collector in this process (once).

    The first process (no ``$VLLM_ANCHOR_STATS_DIR`` yet) creates a fresh folder and exports
    it, so the engine and worker processes it starts write there. A folder set by the user is
    used as given (files of an earlier run in it are summed too). Every process registers the
    collector: only the API server's registry is served on ``/metrics``, and registering it in
    the others costs nothing, whereas registering it only where the folder was created would
    lose the metrics whenever the user sets the folder.
    """
    global _registered_dir
    folder = os.environ.get(STATS_DIR_ENV)
    if not folder:
        folder = tempfile.mkdtemp(prefix="vllm_anchor_stats_")
        os.environ[STATS_DIR_ENV] = folder
        # ours: removed when this process (the API server or the LLM process, which the engine
        # and workers do not outlive) exits; every vllm command loads the plugin and made one
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    else:
        os.makedirs(folder, exist_ok=True)  # workers only write into an existing folder
    if _registered_dir is None:
        from prometheus_client import REGISTRY
        try:
            REGISTRY.register(AnchorCollector(folder))
        except ValueError:  # names already registered (a second copy of this module): keep theirs
            return folder
        _registered_dir = folder
    return folder
