"""vLLM glue on the CPU: registration and alias, settings and their rejections, routing."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from vllm_anchor.kernels import AnchorConfig, plan_anchor_prefill, stripe_density
from vllm_anchor.routing import DensityGuard, anchor_run, context_bucket, slice_requests
from vllm_anchor.settings import KNOWN_KEYS, AnchorSettings, load_settings, parse_layers


# --- registration ---------------------------------------------------------------------------------

def test_plugin_registers_custom_and_alias_idempotently():
    from vllm.config.attention import AttentionConfig
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    from vllm_anchor.plugin import register
    register()
    register()  # a second load is harmless
    assert AttentionBackendEnum["ANCHOR"] is AttentionBackendEnum.CUSTOM
    assert AttentionBackendEnum.CUSTOM.get_class().__name__ == "AnchorBackend"
    for spelling in ("anchor", "Anchor", "ANCHOR", "CUSTOM"):
        assert AttentionConfig(backend=spelling).backend is AttentionBackendEnum.CUSTOM
    assert list(AttentionBackendEnum).count(AttentionBackendEnum.CUSTOM) == 1


def test_entry_point_is_installed():
    from importlib.metadata import entry_points
    eps = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert eps.get("anchor") == "vllm_anchor.plugin:register"


def test_backend_name_and_capabilities():
    from vllm.v1.attention.backend import AttentionCGSupport

    from vllm_anchor.backend import AnchorBackend, AnchorImpl, AnchorMetadataBuilder
    assert AnchorBackend.get_name() == "CUSTOM"
    assert AnchorBackend.get_impl_cls() is AnchorImpl
    assert AnchorBackend.get_builder_cls() is AnchorMetadataBuilder
    assert not AnchorBackend.is_sparse() and not AnchorBackend.is_mla()
    assert not AnchorBackend.supports_non_causal() and not AnchorBackend.supports_batch_invariance()
    assert AnchorMetadataBuilder.get_cudagraph_support(None, None) is AttentionCGSupport.UNIFORM_BATCH
    # same KV layout as FLASH_ATTN: the cache written by stock reshape_and_cache is ours
    from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend
    assert AnchorBackend.get_kv_cache_shape(7, 16, 2, 64) == FlashAttentionBackend.get_kv_cache_shape(7, 16, 2, 64)


# --- settings -------------------------------------------------------------------------------------

def test_settings_defaults_env_and_additional_config_precedence():
    s = load_settings({}, environ={})
    assert s == AnchorSettings() and s.kernel == AnchorConfig()
    s = load_settings({}, environ={"VLLM_ANCHOR_THETA": "10", "VLLM_ANCHOR_SHARE_GQA": "false",
                                   "VLLM_ANCHOR_MIN_SEQ_LEN": "8192", "OTHER": "x"})
    assert s.kernel.theta == 10.0 and s.kernel.share_gqa is False and s.min_seq_len == 8192
    s = load_settings({"anchor": {"theta": 14, "group_size": 4096, "layers": "0-3,7"}},
                      environ={"VLLM_ANCHOR_THETA": "10"})
    assert s.kernel.theta == 14.0 and s.kernel.group_size == 4096
    assert s.layer_enabled(2) and s.layer_enabled(7) and not s.layer_enabled(5)
    assert math.isinf(load_settings({"anchor": {"theta": "inf"}}, environ={}).kernel.theta)


def test_every_known_key_has_an_env_variable():
    for key in KNOWN_KEYS:
        value = {"theta": "9", "share_gqa": "1", "layers": "all", "enabled": "on",
                 "density_guard": "0.5"}.get(key, "256")
        load_settings({}, environ={f"VLLM_ANCHOR_{key.upper()}": value})


@pytest.mark.parametrize("extra,env,needle", [
    ({"anchor": {"thetaa": 3}}, {}, "'thetaa'"),
    ({}, {"VLLM_ANCHOR_THETTA": "3"}, "VLLM_ANCHOR_THETTA"),
    ({"anchor": {"theta": "high"}}, {}, "'theta'"),
    ({"anchor": {"theta": float("nan")}}, {}, "'theta'"),
    ({"anchor": {"sink_tokens": -1}}, {}, "sink_tokens"),
    ({"anchor": {"sink_tokens": 1.5}}, {}, "'sink_tokens'"),
    ({"anchor": {"group_size": 1000}}, {}, "group_size"),
    ({"anchor": {"pool_block": 100}}, {}, "pool_block"),
    ({"anchor": {"share_gqa": "maybe"}}, {}, "'share_gqa'"),
    ({"anchor": {"min_seq_len": 0}}, {}, "min_seq_len"),
    ({"anchor": {"density_guard": 1.5}}, {}, "density_guard"),
    ({"anchor": {"layers": "3-1"}}, {}, "layers"),
    ({"anchor": {"enabled": "perhaps"}}, {}, "'enabled'"),
    ({"anchor": 5}, {}, '"anchor" must be an object'),
    ({}, {"VLLM_ANCHOR_GROUP_SIZE": "two"}, "VLLM_ANCHOR_GROUP_SIZE"),
    # values the kernel config rejects together name where each came from
    ({}, {"VLLM_ANCHOR_GROUP_SIZE": "1000"}, "group_size from VLLM_ANCHOR_GROUP_SIZE"),
    ({"anchor": {"group_size": 384}}, {"VLLM_ANCHOR_POOL_BLOCK": "256"},
     "pool_block from VLLM_ANCHOR_POOL_BLOCK; group_size from --additional-config"),
    ({}, {"VLLM_ANCHOR_MIN_SEQ_LEN": "0"}, "min_seq_len from VLLM_ANCHOR_MIN_SEQ_LEN"),
    # a misspelt profiler variable is listed beside the right names
    ({}, {"VLLM_ANCHOR_PROFILE_STEP": "1"}, "VLLM_ANCHOR_PROFILE_STEPS"),
])
def test_settings_reject_bad_input_naming_it(extra, env, needle):
    with pytest.raises(ValueError) as e:
        load_settings(extra, environ=env)
    assert needle in str(e.value)


def test_plugin_register_rejects_bad_environment(monkeypatch):
    from vllm_anchor.plugin import register
    monkeypatch.setenv("VLLM_ANCHOR_THETA", "lots")
    with pytest.raises(ValueError, match="VLLM_ANCHOR_THETA"):
        register()


def test_parse_layers():
    assert parse_layers("all") is None
    assert parse_layers("1, 4-6") == {1, 4, 5, 6}
    with pytest.raises(ValueError):
        parse_layers("a-b")


# --- routing ----------------------------------------------------------------------------------------

def _qsl(q_lens):
    return torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0)), dtype=torch.int32)


@pytest.mark.parametrize("q_lens,seq_lens,num_decodes,prefilling,expected", [
    ([1, 1, 300, 8192], [50, 90000, 400, 40000], 2, None, (3, 4)),    # decodes + short + long
    ([1, 8192, 8192], [20000, 30000, 40000], 1, None, (1, 3)),        # both prefills long
    ([1, 1], [50000, 60000], 2, None, (2, 2)),                        # decode only: nothing
    ([8192, 100], [40000, 500], 0, None, (0, 1)),                     # long, then a short new prompt
    ([1, 8192, 300, 4096, 100], [9, 40000, 300, 50000, 100], 1, None, (1, 2)),  # two runs: the longer
    ([1, 4096, 300, 8192, 8192, 7], [9, 40000, 300, 50000, 60000, 7], 1, None, (3, 5)),
    ([8192], [16384], 0, None, (0, 1)),                               # exactly at min_seq_len
    ([8192], [16383], 0, None, (1, 1)),
    # speculative decoding: a decode of a long conversation with 1 + 2 drafts is no prefill
    ([3, 3, 8192], [40002, 50002, 40000], 0, [False, False, True], (2, 3)),
    ([3, 3], [40002, 50002], 0, [False, False], (2, 2)),
])
def test_anchor_run(q_lens, seq_lens, num_decodes, prefilling, expected):
    flags = None if prefilling is None else torch.tensor(prefilling)
    run = anchor_run(_qsl(q_lens), torch.tensor(seq_lens), num_decodes, min_seq_len=16384, is_prefilling=flags)
    assert run == expected


def _cm(q_lens, seq_lens, prefilling, width=8):
    from vllm.v1.attention.backend import CommonAttentionMetadata
    qsl = _qsl(q_lens)
    n, r = int(qsl[-1]), len(q_lens)
    seq = torch.tensor(seq_lens, dtype=torch.int32)
    return CommonAttentionMetadata(
        query_start_loc=qsl.clone(), query_start_loc_cpu=qsl, seq_lens=seq.clone(),
        num_reqs=r, num_actual_tokens=n, max_query_len=max(q_lens), max_seq_len=max(seq_lens),
        block_table_tensor=torch.arange(r * width).view(r, width), slot_mapping=torch.arange(n),
        seq_lens_cpu_upper_bound=seq, positions=torch.arange(n), is_prefilling=torch.tensor(prefilling))


def test_slice_requests_rebases_any_run_of_requests():
    cm = _cm([1, 1, 300, 4096, 50], [50, 70, 400, 20000, 50], [False, False, True, True, True])
    head = slice_requests(cm, 0, 3)
    assert head.num_reqs == 3 and head.num_actual_tokens == 302
    assert head.max_query_len == 300 and head.max_seq_len == 400
    assert head.slot_mapping.shape[0] == 302 and head.positions.shape[0] == 302
    assert head.block_table_tensor.shape[0] == 3 and head.seq_lens.tolist() == [50, 70, 400]
    assert head.is_prefilling.tolist() == [False, False, True]
    tail = slice_requests(cm, 3, 5)  # tokens 302..4448 of the batch become 0..4146
    assert tail.num_reqs == 2 and tail.num_actual_tokens == 4146
    assert tail.query_start_loc_cpu.tolist() == tail.query_start_loc.tolist() == [0, 4096, 4146]
    assert tail.slot_mapping.tolist() == list(range(302, 4448)) and tail.positions[0] == 302
    assert tail.block_table_tensor.tolist() == cm.block_table_tensor[3:].tolist()
    assert tail.seq_lens.tolist() == [20000, 50] and tail.seq_lens_cpu_upper_bound.tolist() == [20000, 50]
    assert tail.max_seq_len == 20000 and tail.is_prefilling.tolist() == [True, True]
    assert tail.compute_num_computed_tokens().tolist() == [20000 - 4096, 0]
    cm.compute_num_computed_tokens()  # cached for the whole batch: a slice must take its own part
    cm._token_to_req_indices_cache = torch.zeros(cm.num_actual_tokens, dtype=torch.int32)  # as a build leaves it
    tail = slice_requests(cm, 3, 5)
    assert tail.compute_num_computed_tokens().tolist() == [20000 - 4096, 0]
    assert tail._token_to_req_indices_cache is None  # the whole batch's: rebuilt for the slice
    with pytest.raises(ValueError):
        slice_requests(cm, 3, 6)


def test_stripe_density_and_guard_decision():
    cfg = AnchorConfig(sink_tokens=8, local_tokens=8, group_size=64, pool_block=16)
    plan = plan_anchor_prefill([0, 100], [200], cfg, 4, 2, 16, "cpu")
    cand = plan.items_cpu[:, 1] - cfg.sink_tokens
    full = cand[:, None].repeat(1, 2).to(torch.int32)
    assert stripe_density(plan, full) == pytest.approx(1.0)
    assert stripe_density(plan, torch.zeros_like(full)) == 0.0
    half = full // 2
    d = stripe_density(plan, half)
    assert 0.4 < d < 0.55
    settings = AnchorSettings(density_guard=0.3)
    assert (d > settings.density_guard) and not (stripe_density(plan, full // 10) > settings.density_guard)


def test_density_guard_skips_dense_layers_and_reprobes():
    g = DensityGuard(threshold=0.3, probe_every=4)
    assert not g.skip_measurement()           # nothing known yet: measure
    assert not g.dense_after_measuring(0.1)   # sparse enough: run sparse
    assert not g.skip_measurement()
    assert g.dense_after_measuring(0.9)       # too dense: this call dense; estimate 0.5
    decisions = [g.skip_measurement() for _ in range(8)]
    # skipped (dense without anchor work) except on every 4th call, where it re-measures
    assert decisions == [True, False, True, True, True, False, True, True]
    assert not g.dense_after_measuring(0.05)  # the probe finds it sparse again ...
    assert g.estimate_for() == pytest.approx(0.275)
    assert not g.skip_measurement()           # ... so the next call measures, no skip


def test_density_guard_keeps_one_verdict_per_context_bucket():
    g = DensityGuard(threshold=0.5, probe_every=4)
    short, long = context_bucket(32768), context_bucket(131000)
    assert (short, long) == (30, 34)
    assert not g.skip_measurement(short) and g.dense_after_measuring(0.7, short)  # dense at 32k
    # the 128k calls have not been measured: they measure (and run sparse) on their own
    assert not g.skip_measurement(long) and not g.dense_after_measuring(0.3, long)
    assert [g.skip_measurement(long) for _ in range(3)] == [False] * 3
    assert [g.skip_measurement(short) for _ in range(4)] == [True, True, False, True]  # probe: 4th call
    assert g.estimate_for(short) == pytest.approx(0.7) and g.estimate_for(long) == pytest.approx(0.3)
    assert g.estimate_for() is None  # the unkeyed estimate is a key of its own


def test_context_buckets_are_half_octaves():
    assert [context_bucket(n) for n in (24576, 32768, 46341, 65536, 98304, 131000, 131072, 1 << 20)] == \
        [29, 30, 31, 32, 33, 34, 34, 40]
    assert context_bucket(0) == 0


def test_guard_threshold_one_never_falls_back():
    g = DensityGuard(threshold=1.0)
    assert not g.dense_after_measuring(1.0) and not g.skip_measurement()


def test_metrics_collector_sums_engines_and_labels_tensor_parallel_ranks(tmp_path, monkeypatch):
    """Two engines' workers of one rank (data parallel: other requests) add up; a second
    tensor-parallel rank ran the same calls on other heads and is a series of its own."""
    from prometheus_client import CollectorRegistry, generate_latest

    from vllm_anchor import stats as stats_mod
    from vllm_anchor.metrics import AnchorCollector, read_stats
    from vllm_anchor.stats import STATS_DIR_ENV, AnchorStats
    monkeypatch.setenv(STATS_DIR_ENV, str(tmp_path))
    name, pid = "model.layers.0.self_attn.attn", __import__("os").getpid()
    a, b, c = (AnchorStats(auto_flush=False) for _ in range(3))
    a.record(name, 0.2, fallback=False)
    a.record(name, None, fallback=True)
    a.flush()
    monkeypatch.setattr("os.getpid", lambda: 999999)  # another engine's worker, rank 0 too
    b.record(name, 0.4, fallback=True)
    b.flush()
    monkeypatch.setattr("os.getpid", lambda: 999998)  # tensor-parallel rank 1 of the first engine
    monkeypatch.setattr(stats_mod, "tensor_parallel_rank", lambda: 1)
    c.record(name, 0.6, fallback=False)
    c.record(name, None, fallback=False)
    c.flush()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"worker-{pid}-tp0.json", "worker-999998-tp1.json", "worker-999999-tp0.json"]
    reg = CollectorRegistry()
    reg.register(AnchorCollector(str(tmp_path)))
    text = generate_latest(reg).decode()
    r0, r1 = f'layer="{name}",tp_rank="0"', f'layer="{name}",tp_rank="1"'
    assert f"vllm_anchor_prefill_layer_calls_total{{{r0}}} 3.0" in text
    assert f"vllm_anchor_density_fallbacks_total{{{r0}}} 2.0" in text
    assert f"vllm_anchor_stripe_density{{{r0}}} 0.3" in text  # mean of the two measured
    assert f"vllm_anchor_prefill_layer_calls_total{{{r1}}} 2.0" in text
    assert f"vllm_anchor_stripe_density{{{r1}}} 0.6" in text
    assert read_stats(str(tmp_path))[name]["calls"] == 5  # the plain per-layer sum (bench summaries)


def test_a_worker_that_exits_within_the_flush_interval_keeps_its_counts(tmp_path):
    """The timer flushes a second after the first update; a process that ends sooner (an offline
    LLM run, a shutdown) still writes its counts on the way out."""
    import json
    import subprocess
    import sys
    code = ("from vllm_anchor.stats import STATS\n"
            "for _ in range(5): STATS.record('model.layers.0.self_attn.attn', 0.5, fallback=False)\n")
    env = {**__import__("os").environ, "VLLM_ANCHOR_STATS_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    files = list(tmp_path.glob("worker-*-tp0.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["model.layers.0.self_attn.attn"]["calls"] == 5


def test_the_stats_folder_the_plugin_made_goes_with_its_process():
    """Every vllm command loads the plugin; a folder it made (no VLLM_ANCHOR_STATS_DIR given) is
    removed when that process exits, a folder the user named is not."""
    import os
    import subprocess
    import sys
    code = "from vllm_anchor.metrics import ensure_stats_dir_and_collector as e; print(e())"
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ANCHOR_STATS_DIR"}
    made = subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120,
                          capture_output=True, text=True).stdout.strip().splitlines()[-1]
    assert "vllm_anchor_stats_" in made and not os.path.exists(made)


def test_stats_survive_a_timer_that_cannot_start(monkeypatch):
    import threading

    from vllm_anchor.stats import AnchorStats

    def no_thread(self):
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(threading.Timer, "start", no_thread)
    s = AnchorStats()
    s.record("model.layers.0.self_attn.attn", 0.5, fallback=False)  # must not raise into forward
    assert s._timer is None and s.snapshot()["model.layers.0.self_attn.attn"]["calls"] == 1


def test_plugin_sets_up_stats_dir_once(monkeypatch):
    import os

    from vllm_anchor.metrics import ensure_stats_dir_and_collector
    from vllm_anchor.stats import STATS_DIR_ENV
    monkeypatch.setenv(STATS_DIR_ENV, "")  # so that teardown restores the variable's absence
    monkeypatch.delenv(STATS_DIR_ENV)
    first = ensure_stats_dir_and_collector()
    assert os.path.isdir(first) and os.environ[STATS_DIR_ENV] == first
    assert ensure_stats_dir_and_collector() == first  # children inherit, nothing new


def test_metrics_appear_on_vllms_own_metrics_route(tmp_path, monkeypatch):
    """The collector registered by the plugin shows up on the /metrics app vLLM mounts."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from prometheus_client import REGISTRY
    from vllm.entrypoints.serve.instrumentator.metrics import attach_router

    from vllm_anchor import metrics
    from vllm_anchor.stats import STATS_DIR_ENV, AnchorStats
    monkeypatch.setenv(STATS_DIR_ENV, "")  # so that teardown restores the variable's absence
    monkeypatch.delenv(STATS_DIR_ENV)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(metrics, "_registered_dir", None)
    earlier = [c for c in list(REGISTRY._collector_to_names) if isinstance(c, metrics.AnchorCollector)]
    for c in earlier:  # from other tests' register() calls in this process
        REGISTRY.unregister(c)
    folder = metrics.ensure_stats_dir_and_collector()  # what plugin.register() does in process 0
    collector = next(c for c in list(REGISTRY._collector_to_names)
                     if isinstance(c, metrics.AnchorCollector) and c.folder == folder)
    try:
        worker = AnchorStats(auto_flush=False)
        worker.record("model.layers.5.self_attn.attn", 0.12, fallback=False)
        worker.flush()  # a worker process writes into the inherited folder
        app = FastAPI()
        attach_router(app)
        body = TestClient(app).get("/metrics").text
        assert 'vllm_anchor_prefill_layer_calls_total{layer="model.layers.5.self_attn.attn",tp_rank="0"} 1.0' in body
        assert 'vllm_anchor_stripe_density{layer="model.layers.5.self_attn.attn",tp_rank="0"} 0.12' in body
    finally:
        REGISTRY.unregister(collector)
        for c in earlier:
            REGISTRY.register(c)


def test_collector_registered_when_user_sets_stats_dir(tmp_path, monkeypatch):
    """A user-chosen $VLLM_ANCHOR_STATS_DIR must not cost the /metrics collector."""
    from prometheus_client import REGISTRY, generate_latest

    from vllm_anchor import metrics
    from vllm_anchor.stats import STATS_DIR_ENV, AnchorStats
    monkeypatch.setenv(STATS_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(metrics, "_registered_dir", None)
    for c in [c for c in list(REGISTRY._collector_to_names) if isinstance(c, metrics.AnchorCollector)]:
        REGISTRY.unregister(c)
    assert metrics.ensure_stats_dir_and_collector() == str(tmp_path)
    stats = AnchorStats(auto_flush=False)
    stats.record("model.layers.3.self_attn.attn", density=0.2, fallback=False)
    stats.flush()
    text = generate_latest(REGISTRY).decode()
    assert 'vllm_anchor_prefill_layer_calls_total{layer="model.layers.3.self_attn.attn",tp_rank="0"} 1.0' in text


def test_backend_logs_through_vllms_handler(monkeypatch):
    """INFO lines of vllm_anchor (e.g. the kernel warm-up) reach vLLM's handler."""
    import logging

    import vllm.logger  # noqa: F401  (configures the "vllm" logger)

    from vllm_anchor import plugin
    ours = logging.getLogger("vllm_anchor")
    monkeypatch.setattr(ours, "handlers", [])
    monkeypatch.setattr(ours, "propagate", True)
    plugin.register()
    theirs = logging.getLogger("vllm")
    assert theirs.handlers and ours.handlers == theirs.handlers
    assert ours.getEffectiveLevel() <= logging.INFO and not ours.propagate
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    monkeypatch.setattr(ours, "handlers", [handler])
    logging.getLogger("vllm_anchor").info("vllm-anchor: kernels compiled")
    assert [r.getMessage() for r in records] == ["vllm-anchor: kernels compiled"]


def test_stats_flush_on_their_own_after_the_last_update(tmp_path, monkeypatch):
    """The last request's counts reach the file without a later request to trigger a flush."""
    import json
    import time

    from vllm_anchor import stats as stats_mod
    monkeypatch.setenv(stats_mod.STATS_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(stats_mod, "FLUSH_INTERVAL_S", 0.2)
    s = stats_mod.AnchorStats()
    s.record("model.layers.1.self_attn.attn", 0.5, fallback=False)  # schedules one flush, an interval on
    time.sleep(0.05)
    for _ in range(3):  # within the interval: the same flush takes them all
        s.record("model.layers.1.self_attn.attn", None, fallback=True)
    path = tmp_path / f"worker-{__import__('os').getpid()}-tp0.json"
    # nothing written inside the calls that made the updates (the first anchored layer of a
    # prefill must not pay for the write)
    assert not path.exists()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if path.exists() and json.loads(path.read_text())["model.layers.1.self_attn.attn"]["calls"] == 4:
            break
        time.sleep(0.05)
    data = json.loads(path.read_text())["model.layers.1.self_attn.attn"]
    assert data["calls"] == 4 and data["fallbacks"] == 3 and data["measured"] == 1


# --- the backend's anchor path, deferred density read-back -------------------------------------

def test_deferred_density_lands_a_call_later():
    from vllm_anchor.routing import DeferredDensity
    d = DeferredDensity()
    assert d.take() is None                       # nothing queued
    d.start(torch.tensor(30.0, dtype=torch.float64), 120.0)
    assert d.take() == pytest.approx(0.25)
    assert d.take() is None                       # taken once
    d.start(torch.tensor(5.0, dtype=torch.float64), 10.0)
    d.start(torch.tensor(9.0, dtype=torch.float64), 10.0)  # a newer one replaces an untaken one
    assert d.take() == pytest.approx(0.9)
    d.start(torch.tensor(0.0, dtype=torch.float64), 0.0)  # no candidates
    assert d.take() == 0.0


def _guarded_impl(monkeypatch, seed):
    """An ``AnchorImpl`` on a small hand-built case whose guard (threshold 0.01) sends any
    measured layer dense, stock attention stubbed to fill the output with 7 and record the
    metadata it got, and statistics flushed by hand (the caller resets them)."""
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from paged_case import make_case
    from vllm.v1.attention.backends.flash_attn import FlashAttentionImpl

    from vllm_anchor.backend import AnchorImpl
    from vllm_anchor.stats import STATS

    cfg = AnchorConfig(theta=2.0, sink_tokens=8, local_tokens=8, group_size=64, pool_block=16, tail_tokens=8)
    case = make_case([(40, 120)], 4, 2, 16, dtype=torch.float32, seed=seed, strong_frac=0.2, strong_gain=1.6)
    impl = AnchorImpl(4, 16, case.scale, 2, None, None, "auto")
    impl.settings = AnchorSettings(kernel=cfg, density_guard=0.01)
    impl._guard = DensityGuard(threshold=0.01)
    stock_calls = []

    def stock(self, layer, query, key, value, kv_cache, md, output, *args):
        stock_calls.append(md)
        output.fill_(7.0)
        return output
    monkeypatch.setattr(FlashAttentionImpl, "forward", stock)
    STATS.auto_flush = False
    STATS.reset()
    plan = plan_anchor_prefill(case.query_start_loc, case.seq_lens, cfg, 4, 2, 16, "cpu")
    return case, cfg, impl, plan, stock_calls


def test_backend_forward_runs_sparse_then_follows_the_late_density(monkeypatch):
    """AnchorImpl.forward on a hand-built anchor batch (CPU, Triton interpreter): a measured call
    finishes sparse and equals the reference; its density reaches the guard at the next call,
    which, above the threshold, runs stock attention (stubbed here) and records a fallback."""
    from vllm_anchor.backend import AnchorMetadata, AnchorPrefillMetadata
    from vllm_anchor.kernels import reference as R
    from vllm_anchor.stats import STATS

    case, cfg, impl, plan, stock_calls = _guarded_impl(monkeypatch, seed=3)
    layer = type("Layer", (), {"layer_name": "model.layers.3.self_attn.attn"})()
    md = AnchorMetadata(fa="whole-batch FA metadata", fa_head=None,
                        anchor=AnchorPrefillMetadata(plan, case.block_table, 0, case.q.shape[0], 160))
    bucket = context_bucket(160)
    try:
        out = torch.full_like(case.q, float("nan"))
        impl.forward(layer, case.q, None, None, case.kv_cache, md, out)
        assert stock_calls == []
        k, v = case.seq_kv(0)
        ref, _ = R.anchor_attention(case.q.float(), k, v, case.q_start(0), case.scale, cfg)
        assert R.relative_error(out, ref) < 1e-4
        stats = STATS.snapshot()[layer.layer_name]
        assert (stats["calls"], stats["fallbacks"], stats["measured"]) == (1, 0, 0)  # density not read yet
        assert impl._guard.estimate_for(bucket) is None

        out2 = torch.full_like(case.q, float("nan"))
        impl.forward(layer, case.q, None, None, case.kv_cache, md, out2)
        stats = STATS.snapshot()[layer.layer_name]
        assert stock_calls == ["whole-batch FA metadata"] and (out2 == 7.0).all()
        assert (stats["calls"], stats["fallbacks"], stats["measured"]) == (2, 1, 1)
        assert stats["last_density"] == pytest.approx(stripe_density(plan, _counts(case, plan, cfg)))
        assert impl._guard.estimate_for(bucket) > 0.01
    finally:
        STATS.reset()
        STATS.auto_flush = True


def test_backend_credits_a_late_density_to_the_context_that_measured_it(monkeypatch):
    """A layer measured dense on one context runs stock attention there, while a call of another
    context bucket (same layer, next call) still measures and runs sparse; the in-flight density
    read lands under the key of the call that made it, not the key of the call that reads it."""
    from vllm_anchor.backend import AnchorMetadata, AnchorPrefillMetadata
    from vllm_anchor.stats import STATS

    case, cfg, impl, plan, stock_calls = _guarded_impl(monkeypatch, seed=5)
    layer = type("Layer", (), {"layer_name": "model.layers.5.self_attn.attn"})()

    def batch(context):  # the same chunk, labelled with the context the guard keys on
        return AnchorMetadata(fa=f"FA at {context}", fa_head=None,
                              anchor=AnchorPrefillMetadata(plan, case.block_table, 0, case.q.shape[0], context))

    def call(context):
        out = torch.full_like(case.q, float("nan"))
        impl.forward(layer, case.q, None, None, case.kv_cache, batch(context), out)
        return out
    short, long = context_bucket(32768), context_bucket(131000)
    try:
        assert not (call(32768) == 7.0).all()  # measured: finishes sparse
        assert not (call(131000) == 7.0).all()  # its own bucket, unmeasured: sparse again
        assert impl._guard.estimate_for(short) > 0.01 and impl._guard.estimate_for(long) is None
        assert stock_calls == []
        assert (call(32768) == 7.0).all() and stock_calls == ["FA at 32768"]  # 32k is known dense now
        assert impl._guard.estimate_for(long) > 0.01  # the 128k reading landed under its own key
        assert (call(131000) == 7.0).all() and stock_calls == ["FA at 32768", "FA at 131000"]
    finally:
        STATS.reset()
        STATS.auto_flush = True


def test_backend_layers_of_a_step_share_one_workspace(monkeypatch):
    """Two layers of one step (one metadata object, different queries): each output equals its
    own reference though the second layer reuses the buffers the first one filled."""
    import sys
    from dataclasses import replace
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from paged_case import make_case

    from vllm_anchor.backend import AnchorImpl, AnchorMetadata, AnchorPrefillMetadata
    from vllm_anchor.kernels import reference as R
    from vllm_anchor.stats import STATS

    cfg = AnchorConfig(theta=2.0, sink_tokens=8, local_tokens=8, group_size=64, pool_block=16, tail_tokens=8)
    first = make_case([(40, 120)], 4, 2, 16, dtype=torch.float32, seed=3, strong_frac=0.2, strong_gain=1.6)
    other = make_case([(40, 120)], 4, 2, 16, dtype=torch.float32, seed=4, strong_frac=0.2, strong_gain=1.6)
    # the next layer: its own Q and K/V, in the same pages (one block table per step)
    second = replace(first, q=other.q, kv_cache=torch.randn_like(first.kv_cache))
    cases = [first, second]
    plan = plan_anchor_prefill(cases[0].query_start_loc, cases[0].seq_lens, cfg, 4, 2, 16, "cpu")
    md = AnchorMetadata(fa="whole-batch FA metadata", fa_head=None,
                        anchor=AnchorPrefillMetadata(plan, cases[0].block_table, 0, cases[0].q.shape[0]))
    STATS.auto_flush = False
    try:
        for i, case in enumerate(cases):  # same lengths and block table, other Q/K/V: another layer
            impl = AnchorImpl(4, 16, case.scale, 2, None, None, "auto")
            impl.settings = AnchorSettings(kernel=cfg, density_guard=1.0)
            impl._guard = DensityGuard(threshold=1.0)
            layer = type("Layer", (), {"layer_name": f"model.layers.{i}.self_attn.attn"})()
            out = torch.full_like(case.q, float("nan"))
            impl.forward(layer, case.q, None, None, case.kv_cache, md, out)
            k, v = case.seq_kv(0)
            ref, _ = R.anchor_attention(case.q.float(), k, v, case.q_start(0), case.scale, cfg)
            assert R.relative_error(out, ref) < 1e-4
            assert len(md.anchor.workspaces) == 1
    finally:
        STATS.reset()
        STATS.auto_flush = True


def test_backend_forward_hands_the_requests_around_the_anchored_ones_to_flash_attention(monkeypatch):
    """A batch [short | long (anchor) | short]: FlashAttention (stubbed) gets the head with the
    batch's own offsets and the tail from its first token, as a slice of query and output; the
    anchored rows in between equal the reference."""
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from paged_case import make_case
    from vllm.v1.attention.backends.flash_attn import FlashAttentionImpl

    from vllm_anchor.backend import AnchorImpl, AnchorMetadata, AnchorPrefillMetadata
    from vllm_anchor.kernels import reference as R
    from vllm_anchor.stats import STATS

    cfg = AnchorConfig(theta=2.0, sink_tokens=8, local_tokens=8, group_size=64, pool_block=16, tail_tokens=8)
    case = make_case([(40, 120)], 4, 2, 16, dtype=torch.float32, seed=11, strong_frac=0.2, strong_gain=1.6)
    head_n, tail_n = 5, 7
    gen = torch.Generator().manual_seed(12)
    q = torch.cat([torch.randn(head_n, 4, 16, generator=gen), case.q, torch.randn(tail_n, 4, 16, generator=gen)])
    seen = []

    def stock(self, layer, query, key, value, kv_cache, md, output, *args):
        seen.append((md, query.shape[0], query.data_ptr() - q.data_ptr(), output.data_ptr() - out.data_ptr()))
        output[: {"head FA": head_n, "tail FA": tail_n}[md]] = 7.0
        return output
    monkeypatch.setattr(FlashAttentionImpl, "forward", stock)
    plan = plan_anchor_prefill(case.query_start_loc, case.seq_lens, cfg, 4, 2, 16, "cpu")
    anchor = AnchorPrefillMetadata(plan, case.block_table, head_n, head_n + 120, 160)
    md = AnchorMetadata(fa="whole-batch FA", fa_head="head FA", anchor=anchor, fa_tail="tail FA")
    impl = AnchorImpl(4, 16, case.scale, 2, None, None, "auto")
    impl.settings = AnchorSettings(kernel=cfg, density_guard=1.0)
    impl._guard = DensityGuard(threshold=1.0)
    layer = type("Layer", (), {"layer_name": "model.layers.2.self_attn.attn"})()
    STATS.auto_flush = False
    try:
        out = torch.full_like(q, float("nan"))
        impl.forward(layer, q, None, None, case.kv_cache, md, out)
    finally:
        STATS.reset()
        STATS.auto_flush = True
    row = q[0].numel() * q.element_size()  # bytes per token
    tail_at = (head_n + 120) * row
    assert seen == [("head FA", q.shape[0], 0, 0), ("tail FA", tail_n, tail_at, tail_at)]
    assert (out[:head_n] == 7.0).all() and (out[head_n + 120:] == 7.0).all()
    k, v = case.seq_kv(0)
    ref, _ = R.anchor_attention(case.q.float(), k, v, case.q_start(0), case.scale, cfg)
    assert R.relative_error(out[head_n:head_n + 120], ref) < 1e-4


def test_backend_plans_again_for_a_layer_of_another_head_shape(monkeypatch):
    """A draft model's layers can share the target's KV-cache group (same KV heads and head size,
    other query heads) and so the target's builder and plan: the layer gets a plan of its own
    shape for the step, made once, and its output equals the reference."""
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from paged_case import make_case

    from vllm_anchor.backend import AnchorImpl, AnchorMetadata, AnchorPrefillMetadata
    from vllm_anchor.kernels import reference as R
    from vllm_anchor.stats import STATS

    cfg = AnchorConfig(theta=2.0, sink_tokens=8, local_tokens=8, group_size=64, pool_block=16, tail_tokens=8)
    case = make_case([(40, 120)], 2, 2, 16, dtype=torch.float32, seed=13, strong_frac=0.2, strong_gain=1.6)
    target_plan = plan_anchor_prefill(case.query_start_loc, case.seq_lens, cfg, 4, 2, 16, "cpu")  # 4 q heads
    anchor = AnchorPrefillMetadata(target_plan, case.block_table, 0, 120, 160, query_start_loc=case.query_start_loc,
                                   seq_lens=torch.as_tensor(case.seq_lens), head_size=16)
    md = AnchorMetadata(fa="whole-batch FA", fa_head=None, anchor=anchor)
    impl = AnchorImpl(2, 16, case.scale, 2, None, None, "auto")  # the draft's layer: 2 q heads
    impl.settings = AnchorSettings(kernel=cfg, density_guard=1.0)
    impl._guard = DensityGuard(threshold=1.0)
    layer = type("Layer", (), {"layer_name": "model.layers.0.self_attn.attn"})()
    STATS.auto_flush = False
    try:
        for _ in range(2):
            out = torch.full_like(case.q, float("nan"))
            impl.forward(layer, case.q, None, None, case.kv_cache, md, out)
            k, v = case.seq_kv(0)
            ref, _ = R.anchor_attention(case.q.float(), k, v, case.q_start(0), case.scale, cfg)
            assert R.relative_error(out, ref) < 1e-4
    finally:
        STATS.reset()
        STATS.auto_flush = True
    assert list(anchor.plans) == [(2, 2, 16)] and anchor.plans[(2, 2, 16)].num_heads == 2
    assert anchor.plan_for(4, 2, 16) is target_plan


def test_backend_runs_stock_attention_when_the_anchor_path_fails(monkeypatch, caplog):
    """An error inside the anchor path (here: a layer shape nobody planned, and nothing to plan it
    from) must not fail the request: the layer runs stock attention on the whole batch and logs it."""
    import logging

    case, cfg, impl, plan, stock_calls = _guarded_impl(monkeypatch, seed=7)
    from vllm_anchor.backend import AnchorImpl, AnchorMetadata, AnchorPrefillMetadata
    from vllm_anchor.stats import STATS
    impl = AnchorImpl(2, 16, case.scale, 2, None, None, "auto")  # 2 q heads; the plan has 4
    impl.settings = AnchorSettings(kernel=cfg, density_guard=1.0)
    layer = type("Layer", (), {"layer_name": "model.layers.4.self_attn.attn"})()
    md = AnchorMetadata(fa="whole-batch FA", fa_head=None,
                        anchor=AnchorPrefillMetadata(plan, case.block_table, 0, case.q.shape[0], 160))
    q = case.q[:, :2].contiguous()
    try:
        with caplog.at_level(logging.WARNING, logger="vllm_anchor"):
            for _ in range(2):
                out = torch.full_like(q, float("nan"))
                impl.forward(layer, q, None, None, case.kv_cache, md, out)
                assert (out == 7.0).all()
    finally:
        STATS.reset()
        STATS.auto_flush = True
    assert stock_calls == ["whole-batch FA", "whole-batch FA"] and impl._failures == 2
    assert len([r for r in caplog.records if "anchor path failed" in r.getMessage()]) == 1  # once, not per call


def test_a_triton_error_in_the_anchor_path_runs_stock_attention(monkeypatch, caplog):
    """Triton's compile and shared-memory errors (OutOfResources) are not RuntimeErrors: one
    raised inside the anchor path (a launch that does not fit, first met mid-request) must run
    stock attention like any other failure, not take the engine down."""
    import logging

    from triton.runtime.errors import OutOfResources

    case, cfg, impl, plan, stock_calls = _guarded_impl(monkeypatch, seed=7)
    from vllm_anchor.backend import AnchorImpl, AnchorMetadata, AnchorPrefillMetadata
    from vllm_anchor.stats import STATS

    def no_room(self, *args, **kwargs):
        raise OutOfResources(300000, 232448, "shared memory")

    monkeypatch.setattr(AnchorImpl, "_forward_anchor", no_room)
    impl.settings = AnchorSettings(kernel=cfg, density_guard=1.0)
    layer = type("Layer", (), {"layer_name": "model.layers.5.self_attn.attn"})()
    md = AnchorMetadata(fa="whole-batch FA", fa_head=None,
                        anchor=AnchorPrefillMetadata(plan, case.block_table, 0, case.q.shape[0], 160))
    try:
        with caplog.at_level(logging.WARNING, logger="vllm_anchor"):
            out = torch.full_like(case.q, float("nan"))
            impl.forward(layer, case.q, None, None, case.kv_cache, md, out)
            assert (out == 7.0).all()
    finally:
        STATS.reset()
        STATS.auto_flush = True
    assert stock_calls == ["whole-batch FA"] and impl._failures == 1
    assert any("OutOfResources" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("overrides", ["", "sparse.BLOCK_N=256 sparse.num_stages=8"])
def test_warm_up_failure_stops_start_up_only_under_launch_overrides(monkeypatch, caplog, overrides):
    """The warm-up compiles every kernel before the first request. Without ANCHOR_KERNELS_LAUNCH a
    failure there is logged and the first request compiles (as before); with it, the operator's
    launch options are the likely cause, so start-up stops naming them rather than failing (or
    silently running stock) on every long request."""
    import logging

    from triton.runtime.errors import OutOfResources
    from vllm.v1.attention.backends.flash_attn import FlashAttentionImpl

    from vllm_anchor import backend
    from vllm_anchor.kernels import launch_env

    opts, seg = launch_env.parse(overrides)
    monkeypatch.setattr(launch_env, "LAUNCH_OVERRIDES", opts)
    monkeypatch.setattr(launch_env, "SEGMENT_TOKENS_OVERRIDE", seg)
    monkeypatch.setattr(FlashAttentionImpl, "process_weights_after_loading", lambda self, dtype: None)
    monkeypatch.setattr(backend.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backend.torch.cuda, "current_device", lambda: 0)

    def no_room(*args, **kwargs):
        raise OutOfResources(300000, 232448, "shared memory")

    monkeypatch.setattr(backend, "warm_up", no_room)
    impl = backend.AnchorImpl(4, 128, 128 ** -0.5, 2, None, None, "auto")
    with caplog.at_level(logging.WARNING, logger="vllm_anchor"):
        if overrides:
            with pytest.raises(ValueError, match=r"do not compile with ANCHOR_KERNELS_LAUNCH='sparse.BLOCK_N=256 "
                                                 r"sparse.num_stages=8' for 4/2 heads, head size 128"):
                impl.process_weights_after_loading(torch.bfloat16)
        else:
            impl.process_weights_after_loading(torch.bfloat16)
            assert any("kernel warm-up failed" in r.getMessage() for r in caplog.records)


def test_memory_profile_holds_the_anchor_workspace_until_the_first_real_step(monkeypatch):
    """In vLLM's memory-profiling forward attention gets no metadata, so the anchor path does not
    run; the backend holds the largest step's workspace there instead (once per process, not per
    layer) and lets it go at the first forward with metadata, where the real workspace takes over."""
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from paged_case import make_case
    from vllm.v1.attention.backends.flash_attn import FlashAttentionImpl

    from vllm_anchor.backend import AnchorImpl, AnchorMetadata, AnchorPrefillMetadata
    from vllm_anchor.kernels.api import step_workspace_nbytes
    from vllm_anchor.stats import STATS

    cfg = AnchorConfig(theta=2.0, sink_tokens=8, local_tokens=8, group_size=64, pool_block=16, tail_tokens=8)
    case = make_case([(40, 120)], 4, 2, 16, dtype=torch.float32, seed=3)
    monkeypatch.setattr(FlashAttentionImpl, "forward", lambda self, layer, q, k, v, kv, md, out, *a: out)
    monkeypatch.setattr(AnchorImpl, "_profile_reservation", None)
    monkeypatch.setattr(AnchorImpl, "_profile_reserved", False)

    def impl_for(max_model_len, min_seq_len=1):
        impl = AnchorImpl(4, 16, case.scale, 2, None, None, "auto")
        impl.settings = AnchorSettings(kernel=cfg, density_guard=1.0, min_seq_len=min_seq_len)
        impl._max_tokens, impl._max_model_len = 256, max_model_len
        return impl
    layers = [type("Layer", (), {"layer_name": f"model.layers.{i}.self_attn.attn"})() for i in range(3)]
    out = torch.empty_like(case.q)

    # prompts can never reach min_seq_len: nothing to hold
    impl_for(1024, min_seq_len=4096).forward(layers[0], case.q, None, None, case.kv_cache, None, out)
    assert AnchorImpl._profile_reservation is None
    monkeypatch.setattr(AnchorImpl, "_profile_reserved", False)

    impls = [impl_for(1024) for _ in layers]
    for impl, layer in zip(impls, layers):  # the profiling forward: every layer, no metadata
        impl.forward(layer, case.q, None, None, case.kv_cache, None, out)
        held = AnchorImpl._profile_reservation
        assert held is not None and held.numel() == step_workspace_nbytes(cfg, 4, 2, 16, 256, 1024)
    assert held.numel() > step_workspace_nbytes(cfg, 4, 2, 16, 256, 512)
    first = AnchorImpl._profile_reservation
    impls[1].forward(layers[1], case.q, None, None, case.kv_cache, None, out)  # a later dummy run
    assert AnchorImpl._profile_reservation is first  # one reservation per process

    plan = plan_anchor_prefill(case.query_start_loc, case.seq_lens, cfg, 4, 2, 16, "cpu")
    md = AnchorMetadata(fa="whole-batch FA metadata", fa_head=None,
                        anchor=AnchorPrefillMetadata(plan, case.block_table, 0, case.q.shape[0]))
    STATS.auto_flush = False
    try:
        impls[0].forward(layers[0], case.q, None, None, case.kv_cache, md, torch.empty_like(case.q))
    finally:
        STATS.reset()
        STATS.auto_flush = True
    assert AnchorImpl._profile_reservation is None and len(md.anchor.workspaces) == 1


def _counts(case, plan, cfg):
    from vllm_anchor.kernels.api import _Call, new_workspace, run_anchor_step, run_stripe_step
    call = _Call(case.q, case.kv_cache, case.block_table, plan, case.scale)
    ws = new_workspace(call)
    run_anchor_step(call, ws)
    run_stripe_step(call, ws)
    return ws.counts


def test_builder_labels_the_anchor_batch_with_its_longest_context(monkeypatch):
    """``AnchorMetadataBuilder.build`` on a mixed batch (a decode, a short prefill, two long
    prefill chunks): the anchor part starts at the first long request and carries the longest
    anchored context, which keys the density guard. FA's own build (GPU-only) is stubbed."""
    from vllm.v1.attention.backend import CommonAttentionMetadata
    from vllm.v1.attention.backends.flash_attn import FlashAttentionMetadataBuilder

    from vllm_anchor.backend import AnchorMetadataBuilder
    from vllm_anchor.settings import load_settings

    from types import SimpleNamespace
    monkeypatch.setattr(FlashAttentionMetadataBuilder, "build", lambda self, prefix, cm, fast=False:
                        SimpleNamespace(requests=cm.num_reqs, scheduler_metadata=None))
    b = AnchorMetadataBuilder.__new__(AnchorMetadataBuilder)
    b.settings = load_settings({"anchor": {"min_seq_len": 24576}})
    b._plans, b.reorder_batch_threshold = True, 1
    b.num_heads_q, b.num_heads_kv, b.head_size, b.device = 9, 3, 64, torch.device("cpu")
    q_lens, seq = [1, 300, 4096, 2048], [5000, 300, 40000, 30000]
    qsl = torch.tensor([0] + list(itertools.accumulate(q_lens)), dtype=torch.int32)
    seq_t = torch.tensor(seq, dtype=torch.int32)
    n = int(qsl[-1])
    cm = CommonAttentionMetadata(
        query_start_loc=qsl.clone(), query_start_loc_cpu=qsl, seq_lens=seq_t.clone(), num_reqs=4,
        num_actual_tokens=n, max_query_len=4096, max_seq_len=40000,
        block_table_tensor=torch.zeros(4, 2500, dtype=torch.int32), slot_mapping=torch.arange(n),
        seq_lens_cpu_upper_bound=seq_t, positions=torch.arange(n),
        is_prefilling=torch.tensor([False, True, True, True]))
    md = b.build(0, cm)
    assert md.fa.requests == 4 and md.fa_head.requests == 2  # the whole batch; the two short ones
    a = md.anchor
    assert (a.token_start, a.token_end) == (301, n)
    assert a.context_tokens == 40000 and context_bucket(a.context_tokens) == 31


def _stub_builder(monkeypatch, threshold=1):
    from types import SimpleNamespace

    from vllm.v1.attention.backends.flash_attn import FlashAttentionMetadataBuilder

    from vllm_anchor.backend import AnchorMetadataBuilder
    from vllm_anchor.settings import load_settings
    monkeypatch.setattr(FlashAttentionMetadataBuilder, "build", lambda self, prefix, cm, fast=False:
                        SimpleNamespace(requests=cm.num_reqs, tokens=cm.num_actual_tokens,
                                        qsl=cm.query_start_loc_cpu.tolist(), scheduler_metadata=None,
                                        causal=cm.causal, mm_ranges=cm.mm_req_doc_ranges))
    b = AnchorMetadataBuilder.__new__(AnchorMetadataBuilder)
    b.settings = load_settings({"anchor": {"min_seq_len": 24576}})
    b._plans, b.reorder_batch_threshold = True, threshold
    b.num_heads_q, b.num_heads_kv, b.head_size, b.device = 9, 3, 64, torch.device("cpu")
    return b


def test_builder_anchors_long_chunks_before_a_short_new_prompt(monkeypatch, caplog):
    """vLLM orders a batch decodes, continuations, then first chunks, so a short new prompt
    follows a long prompt's chunk: the long chunk still runs anchor, FlashAttention takes the
    requests before it (fa_head) and the short prompt after it (fa_tail, tokens from 0). The
    first such step is logged once (the GPU job greps for it)."""
    import logging
    b = _stub_builder(monkeypatch)
    cm = _cm([1, 300, 4096, 2048, 500], [5000, 300, 40000, 30000, 500], [False, True, True, True, True], width=2500)
    with caplog.at_level(logging.INFO, logger="vllm_anchor"):
        md = b.build(0, cm)
        b.build(0, cm)
    assert len([r for r in caplog.records if "first step with requests after the anchored ones" in r.getMessage()]) == 1
    a = md.anchor
    assert (a.token_start, a.token_end) == (301, 301 + 4096 + 2048)
    assert md.fa.requests == 5 and md.fa_head.requests == 2
    assert (md.fa_tail.requests, md.fa_tail.tokens, md.fa_tail.qsl) == (1, 500, [0, 500])
    assert a.plan.num_tokens == 4096 + 2048 and a.seq_lens.tolist() == [40000, 30000]
    assert a.query_start_loc.tolist() == [0, 4096, 6144] and a.context_tokens == 40000


def test_builder_sends_speculative_decode_rows_to_flash_attention(monkeypatch):
    """With speculative decoding a long conversation's decode has 1 + k query tokens and an
    optimistic context length: it must not run the anchor kernels (is_prefilling says it is no
    prefill), whatever the reorder threshold was."""
    for threshold in (1, 3):
        b = _stub_builder(monkeypatch, threshold)
        spec_only = _cm([3, 3], [40002, 50002], [False, False], width=4000)
        md = b.build(0, spec_only)
        assert md.anchor is None and md.fa.requests == 2
        mixed = _cm([3, 3, 8192], [40002, 50002, 40000], [False, False, True], width=4000)
        md = b.build(0, mixed)
        assert (md.anchor.token_start, md.anchor.token_end) == (6, 6 + 8192) and md.fa_head.requests == 2
        assert md.fa_tail is None


def test_builder_takes_spec_decode_rows_as_decodes():
    """The reorder threshold grows with the draft length, so vLLM puts speculative decodes with
    the decodes (and FA3's uniform-batch CUDA graphs take them)."""
    from types import SimpleNamespace

    from vllm_anchor.backend import AnchorMetadataBuilder
    b = AnchorMetadataBuilder.__new__(AnchorMetadataBuilder)
    spec = SimpleNamespace(num_speculative_tokens=3, parallel_drafting=False)
    b.vllm_config = SimpleNamespace(speculative_config=spec,
                                    parallel_config=SimpleNamespace(decode_context_parallel_size=1))
    b._init_reorder_batch_threshold(1, supports_spec_as_decode=True)
    assert b.reorder_batch_threshold == 4
    import inspect
    assert "supports_spec_as_decode=True" in inspect.getsource(AnchorMetadataBuilder.__init__)


def test_layers_vllm_rewrites_batches_for_are_never_planned():
    """Chunked-local (Llama 4), cross and encoder-only attention get batches that vLLM rewrote
    (virtual per-chunk requests with their own block table): planning them as causal prefills
    over the whole context would read wrong pages, so their builder plans nothing."""
    from vllm.v1.kv_cache_interface import ChunkedLocalAttentionSpec, FullAttentionSpec, SlidingWindowSpec

    from vllm_anchor.backend import unplanned_spec
    common = dict(block_size=16, num_kv_heads=8, head_size=128, dtype=torch.bfloat16)
    assert unplanned_spec(FullAttentionSpec(**common)) == ""
    assert "ChunkedLocalAttentionSpec" in unplanned_spec(ChunkedLocalAttentionSpec(**common, attention_chunk_size=8192))
    assert "sliding window" in unplanned_spec(SlidingWindowSpec(**common, sliding_window=4096))
    assert "sliding window" in unplanned_spec(FullAttentionSpec(**common, sliding_window=4096))
    # with the hybrid allocator off a chunked-local layer's spec is a FullAttentionSpec: the
    # subclass vLLM wraps our builder in gives it away
    from vllm.model_executor.layers.attention.chunked_local_attention import create_chunked_local_attention_backend

    from vllm_anchor.backend import AnchorBackend, AnchorMetadataBuilder
    wrapped = create_chunked_local_attention_backend(AnchorBackend, 8192).get_builder_cls()
    assert issubclass(wrapped, AnchorMetadataBuilder)
    merged = FullAttentionSpec(**common, attention_chunk_size=8192)
    assert "ChunkedLocalAttentionBuilder" in unplanned_spec(merged, wrapped)
    assert unplanned_spec(merged, AnchorMetadataBuilder) == ""  # the model's global layers still plan


def test_builder_runs_non_causal_batches_on_flash_attention(monkeypatch, caplog):
    """The anchor kernels are strictly causal. A batch vLLM builds with ``causal=False`` (whole
    batch bidirectional) or with a tensor of per-request causal flags (FA4's dynamic_causal)
    must not plan anything: FlashAttention gets the whole batch with ``causal`` exactly as vLLM
    built it, and the builder says why once."""
    import logging
    from dataclasses import replace
    b = _stub_builder(monkeypatch)
    cm = _cm([1, 300, 4096, 2048], [5000, 300, 40000, 30000], [False, True, True, True], width=2500)
    assert b.build(0, cm).anchor is not None  # the same batch, causal: anchored
    flags = torch.tensor([1, 1, 1, 0], dtype=torch.int32)
    with caplog.at_level(logging.INFO, logger="vllm_anchor"):
        for causal in (False, flags, torch.ones(4, dtype=torch.int32), False):
            md = b.build(0, replace(cm, causal=causal))
            assert md.anchor is None and md.fa_head is None and md.fa_tail is None
            assert md.fa.requests == 4 and md.fa.causal is causal
    assert len([r for r in caplog.records if "non-causal" in r.getMessage()]) == 1
    assert b.build(0, cm).anchor is not None  # a causal batch after them anchors again


def test_anchor_run_skips_requests_flagged_bidirectional():
    """A request whose chunk vLLM attends bidirectionally never qualifies; the run is the longest
    contiguous one of the requests left."""
    qsl, seq = _qsl([1, 8192, 4096, 8192]), torch.tensor([50, 40000, 30000, 50000])
    assert anchor_run(qsl, seq, 1, min_seq_len=16384) == (1, 4)
    # equal runs on either side of the flagged request: the first
    assert anchor_run(qsl, seq, 1, min_seq_len=16384, bidirectional=[False, False, True, False]) == (1, 2)
    assert anchor_run(qsl, seq, 1, min_seq_len=16384, bidirectional=[False, True, False, False]) == (2, 4)
    assert anchor_run(qsl, seq, 1, min_seq_len=16384, bidirectional=[True] * 4) == (4, 4)


def test_bidirectional_in_chunk_reads_prefix_lm_ranges_against_the_query_chunk():
    """vLLM's PrefixLM ranges are inclusive absolute token positions (FA4's mask_mod compares
    them with ``q_idx + seq_len - query_len`` and skips ``start >= end``): only a range that
    reaches the current chunk changes its queries' attention."""
    from vllm_anchor.routing import bidirectional_in_chunk
    qsl, seq = _qsl([1, 4096, 4096, 4096, 4096]), torch.tensor([50, 40000, 40000, 40000, 40000])
    ranges = {0: [(0, 40)],                      # a decode's image, long in its context
              1: [(100, 355), (36000, 36000)],   # before the chunk [35904, 40000); a 1-token one: none
              2: [(35800, 35905)],               # reaches past the chunk's first token
              3: [(100, 355), (39000, 39255)]}   # one of two inside the chunk; request 4: no entry
    assert bidirectional_in_chunk(qsl, seq, ranges) == [False, False, True, True, False]
    # ending at the chunk's first token (that query sees no key past itself), or wholly after the
    # chunk (a later chunk's image), the chunk is plain causal
    assert bidirectional_in_chunk(qsl, seq, {2: [(35800, 35904)], 3: [(40000, 40255)]}) == [False] * 5
    assert bidirectional_in_chunk(qsl, seq, {3: [(39999, 40255)]}) == [False, False, False, True, False]
    assert bidirectional_in_chunk(qsl, seq, {}) == [False] * 5
    assert bidirectional_in_chunk(qsl, seq, {1: []}) == [False] * 5


def test_builder_keeps_prefix_lm_image_chunks_off_the_anchor_kernels(monkeypatch, caplog):
    """A PrefixLM model (Gemma 3/4, PaliGemma, ...) attends the tokens of an image both ways
    (``mm_req_doc_ranges``, which FA4 turns into ``mm_prefix_range_tensor``). A long prefill
    chunk holding such a range runs FlashAttention, in fa_head/fa_tail with its ranges rebased;
    a chunk whose images all lie in its cached context is plain causal and still anchors."""
    import logging
    from dataclasses import replace

    from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend

    from vllm_anchor.backend import AnchorBackend
    # inherited from FLASH_ATTN (true where FA4 resolves): vLLM selects us for such models
    assert AnchorBackend.supports_mm_prefix.__func__ is FlashAttentionBackend.supports_mm_prefix.__func__
    b = _stub_builder(monkeypatch)
    # a decode, then two long chunks: request 1 [35904, 40000), request 2 [27952, 30000)
    cm = _cm([1, 4096, 2048], [5000, 40000, 30000], [False, True, True], width=2500)
    with caplog.at_level(logging.INFO, logger="vllm_anchor"):
        in_chunk = {0: [], 1: [(36000, 36255)], 2: [(10, 265)]}
        md = b.build(0, replace(cm, mm_req_doc_ranges=in_chunk))
        assert (md.anchor.token_start, md.anchor.token_end) == (1 + 4096, 1 + 4096 + 2048)
        assert md.anchor.seq_lens.tolist() == [30000] and md.fa_tail is None
        assert md.fa_head.requests == 2 and md.fa_head.mm_ranges == {0: [], 1: [(36000, 36255)]}
        assert md.fa.requests == 3 and md.fa.mm_ranges == in_chunk  # the whole batch, as vLLM built it
        straddles = {1: [(100, 355)], 2: [(27900, 28155)]}
        md = b.build(0, replace(cm, mm_req_doc_ranges=straddles))
        assert (md.anchor.token_start, md.anchor.token_end) == (1, 1 + 4096)
        assert md.fa_tail.requests == 1 and md.fa_tail.mm_ranges == {0: [(27900, 28155)]}
        both = {1: [(39990, 40100)], 2: [(29000, 29100)]}
        md = b.build(0, replace(cm, mm_req_doc_ranges=both))
        assert md.anchor is None and md.fa.mm_ranges == both
    assert len([r for r in caplog.records if "PrefixLM" in r.getMessage()]) == 1
    md = b.build(0, replace(cm, mm_req_doc_ranges={1: [(100, 355)], 2: [(10, 265)]}))  # images in the context
    assert (md.anchor.token_start, md.anchor.token_end) == (1, 1 + 4096 + 2048) and md.fa_tail is None
