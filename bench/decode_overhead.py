"""Host time the anchor backend adds to a decode step, beyond FLASH_ATTN's own metadata build.

A decode-only step replays the same full CUDA graph of stock FA3 kernels under both backends
(``AnchorImpl.forward`` is never called in a replay), so the only difference is on the host:
``AnchorMetadataBuilder.build`` first asks whether any request of the batch runs anchor
(``_anchor_run``) and wraps FA's metadata in ``AnchorMetadata``. This times exactly
that extra work on hand-built decode batches, on the CPU, no GPU needed:

  python bench/decode_overhead.py --out bench/results/decode_overhead_cpu.json

Compare the result with a decode step's length (about 2 ms for SmolLM2-135M on the H100,
bench/results/lease22_h100/guard_itl/) to bound the backend's share of decode ITL.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch


def decode_batch(num_reqs: int, context: int, page: int = 16):
    """``CommonAttentionMetadata`` of ``num_reqs`` decodes (one query token each) at ``context``."""
    from vllm.v1.attention.backend import CommonAttentionMetadata
    qsl = torch.arange(num_reqs + 1, dtype=torch.int32)
    seq = torch.full((num_reqs,), context, dtype=torch.int32)
    pages = -(-context // page)
    return CommonAttentionMetadata(
        query_start_loc=qsl.clone(), query_start_loc_cpu=qsl, seq_lens=seq.clone(), num_reqs=num_reqs,
        num_actual_tokens=num_reqs, max_query_len=1, max_seq_len=context,
        block_table_tensor=torch.arange(num_reqs * pages, dtype=torch.int32).view(num_reqs, pages),
        slot_mapping=torch.arange(num_reqs), seq_lens_cpu_upper_bound=seq, positions=seq.clone() - 1,
        is_prefilling=torch.zeros(num_reqs, dtype=torch.bool))


def anchor_builder():
    """The builder's decision state as ``__init__`` sets it (FA's own init needs a GPU)."""
    from vllm_anchor.backend import AnchorMetadataBuilder
    from vllm_anchor.settings import load_settings
    b = AnchorMetadataBuilder.__new__(AnchorMetadataBuilder)
    b.settings = load_settings({})
    b._plans = True
    b.reorder_batch_threshold = 1
    return b


def extra_work_us(builder, cm, fa_metadata, reps: int) -> float:
    """Median over 7 rounds of the mean time of the anchor-only part of one ``build``."""
    from vllm_anchor.backend import AnchorMetadata
    rounds = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(reps):
            k, e = builder._anchor_run(cm)
            if k == e:
                AnchorMetadata(fa_metadata, None, None)
        rounds.append((time.perf_counter() - t) / reps * 1e6)
    return statistics.median(rounds)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64, 256])
    ap.add_argument("--context", type=int, default=32000)
    ap.add_argument("--reps", type=int, default=20000)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    builder, fa_metadata = anchor_builder(), object()  # the wrap only stores FA's metadata
    rows = []
    for n in a.batch_sizes:
        cm = decode_batch(n, a.context)
        assert builder._anchor_run(cm) == (n, n), "a decode batch must not run anchor"
        rows.append({"num_reqs": n, "context": a.context, "extra_us_per_step": extra_work_us(builder, cm, fa_metadata,
                                                                                             a.reps)})
        print(json.dumps(rows[-1]), flush=True)
    res = {"command": "python " + " ".join(["bench/decode_overhead.py"] + (argv if argv is not None else sys.argv[1:])),
           "host": platform.processor() or platform.machine(), "python": platform.python_version(),
           "torch": torch.__version__, "rows": rows}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
