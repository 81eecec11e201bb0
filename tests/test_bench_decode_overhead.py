"""bench/decode_overhead.py times the real builder decision, on real decode-batch metadata."""

import pytest
import torch

from bench_module import load_bench

pytest.importorskip("vllm")

decode_overhead = load_bench("decode_overhead")


def test_decode_batches_never_run_anchor_and_a_long_prefill_does():
    b = decode_overhead.anchor_builder()
    cm = decode_overhead.decode_batch(8, context=200000)
    assert cm.num_actual_tokens == 8 and cm.max_query_len == 1
    assert b._anchor_run(cm) == (8, 8)  # all decodes: stock FA for the whole batch
    # the same builder state does pick a long prefill, so the timing above is of the real decision
    from vllm.v1.attention.backend import CommonAttentionMetadata
    qsl = torch.tensor([0, 1, 8193], dtype=torch.int32)
    seq = torch.tensor([50, 40000], dtype=torch.int32)
    long = CommonAttentionMetadata(
        query_start_loc=qsl.clone(), query_start_loc_cpu=qsl, seq_lens=seq.clone(), num_reqs=2,
        num_actual_tokens=8193, max_query_len=8192, max_seq_len=40000,
        block_table_tensor=torch.zeros(2, 2500, dtype=torch.int32), slot_mapping=torch.arange(8193),
        seq_lens_cpu_upper_bound=seq, positions=torch.arange(8193),
        is_prefilling=torch.tensor([False, True]))
    assert b._anchor_run(long) == (1, 2)


def test_main_writes_one_row_per_batch_size(tmp_path):
    out = tmp_path / "o.json"
    res = decode_overhead.main(["--batch-sizes", "1", "4", "--reps", "50", "--out", str(out)])
    assert [r["num_reqs"] for r in res["rows"]] == [1, 4]
    assert all(0 < r["extra_us_per_step"] < 1000 for r in res["rows"])
    assert out.exists() and "decode_overhead.py" in res["command"]
