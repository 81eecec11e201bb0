"""Random varlen prefill batches over a paged KV cache laid out like vLLM's FlashAttention cache."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_anchor.kernels.reference import gather_paged_kv, relative_error


@dataclass
class PagedCase:
    q: torch.Tensor  # [T, H, D]
    kv_cache: torch.Tensor  # logical [num_blocks, Hkv, page, 2D], physical NHD
    block_table: torch.Tensor  # [B, max_blocks] int32
    query_start_loc: list[int]
    seq_lens: list[int]
    scale: float

    @property
    def dims(self) -> tuple[int, int, int]:
        """(query heads, KV heads, head_dim)."""
        return self.q.shape[1], self.kv_cache.shape[1], self.q.shape[2]

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)

    def seq_q(self, s: int) -> torch.Tensor:
        return self.q[self.query_start_loc[s]:self.query_start_loc[s + 1]]

    def q_start(self, s: int) -> int:
        return self.seq_lens[s] - (self.query_start_loc[s + 1] - self.query_start_loc[s])

    def seq_kv(self, s: int, dtype=torch.float32):
        return gather_paged_kv(self.kv_cache, self.block_table[s], self.seq_lens[s], dtype)


def make_case(chunks: list[tuple[int, int]], num_heads: int, num_kv_heads: int, head_dim: int,
              page: int = 16, dtype=torch.float32, device="cpu", seed: int = 0,
              strong_frac: float = 0.0, strong_gain: float = 1.0) -> PagedCase:
    """``chunks`` = [(context_len, chunk_len)] per sequence. Pages are shuffled (non-contiguous).

    ``strong_frac`` of the key positions get a shared direction ``u`` (scaled by
    ``strong_gain``) that every query also carries, so they form vertical stripes that the
    stripe search should find, as in real attention maps; the rest is plain noise.
    """
    gen = torch.Generator().manual_seed(seed)
    seq_lens = [p + c for p, c in chunks]
    pages_per_seq = [-(-s // page) for s in seq_lens]
    num_blocks = sum(pages_per_seq) + 3  # a few pages nobody owns
    perm = torch.randperm(num_blocks, generator=gen)
    max_pages = max(pages_per_seq)
    block_table = torch.zeros(len(chunks), max_pages + 1, dtype=torch.int32)
    used = 0
    for s, n in enumerate(pages_per_seq):
        block_table[s, :n] = perm[used:used + n].to(torch.int32)
        used += n
    phys = torch.randn(num_blocks, page, num_kv_heads, 2 * head_dim, generator=gen)
    direction = torch.randn(head_dim, generator=gen)
    direction *= strong_gain * head_dim ** 0.25 / direction.norm()
    strong = torch.rand(num_blocks, page, generator=gen) < strong_frac
    phys[..., :head_dim] += strong[..., None, None] * direction
    kv_cache = phys.to(dtype).to(device).permute(0, 2, 1, 3)  # logical view, NHD strides
    qsl = [0]
    for _, c in chunks:
        qsl.append(qsl[-1] + c)
    q = torch.randn(qsl[-1], num_heads, head_dim, generator=gen)
    if strong_frac:
        q += direction
    q = q.to(dtype).to(device)
    return PagedCase(q=q, kv_cache=kv_cache, block_table=block_table.to(device),
                     query_start_loc=qsl, seq_lens=seq_lens, scale=head_dim ** -0.5)


def assert_close_per_sequence(case: PagedCase, out: torch.Tensor, ref_fn, tol: float) -> None:
    """Compare each sequence's rows of ``out`` with ``ref_fn(q, k, v, q_start)`` (float32)."""
    for s in range(case.num_seqs):
        k, v = case.seq_kv(s)
        q = case.seq_q(s).float()
        ref = ref_fn(q, k, v, case.q_start(s))
        got = out[case.query_start_loc[s]:case.query_start_loc[s + 1]]
        err = relative_error(got, ref)
        assert err < tol, f"sequence {s} (start {case.q_start(s)}, {q.shape[0]} queries): rel err {err:.2e}"


def plant_needle(case: PagedCase, seq: int, needle: int, others_lo: int, gain: float = 6.0) -> int:
    """A far-back key that only the chunk's last query wants, for the tail tests.

    For every KV head, the key at position ``needle`` of sequence ``seq`` points along the last
    query of its first query head (scoring ``gain * |q|`` there, far above the rest), and the
    queries ``[others_lo, last)`` (absolute; pass the start of the last group) get a strong negative
    component along it, so every pooled mean query of the group scores the needle far below its
    mean anchor. Returns the last query's row in ``case.q``.
    """
    num_heads, num_kv_heads, head_dim = case.dims
    rep = num_heads // num_kv_heads
    q_start, last = case.q_start(seq), case.query_start_loc[seq + 1] - 1
    page = case.kv_cache.shape[2]
    kv_page = case.block_table[seq, needle // page].long()
    for kvh in range(num_kv_heads):
        u = case.q[last, rep * kvh].float()
        u = u / u.norm()
        case.kv_cache[kv_page, kvh, needle % page, :head_dim] = (gain * head_dim ** 0.5 * u).to(case.kv_cache.dtype)
        for r in range(case.query_start_loc[seq] + others_lo - q_start, last):
            for h in range(rep * kvh, rep * (kvh + 1)):
                qr = case.q[r, h].float()
                case.q[r, h] = (qr - (qr @ u) * u - 3.0 * u).to(case.q.dtype)
    return last


def stripe_lists(ws, plan, item: int) -> list[list[int]]:
    """The compacted stripe list (key positions) of ``item`` for every selector head."""
    off = int(plan.items_cpu[item, 2])
    return [ws.lists[h, off:off + int(ws.counts[item, h])].tolist() for h in range(ws.counts.shape[1])]


def item_owners(case: PagedCase, cfg) -> list[tuple[int, int, bool, int, int]]:
    """``(sequence, group, tail, first row, end row)`` of every stripe-list owner, in the plan's
    item order: per sequence and group, the group's rows before the chunk's tail, then its
    tail rows (``reference.tail_start``). Rows index ``case.q``. An oracle for the plan."""
    from vllm_anchor.kernels import reference as R
    out = []
    G = cfg.group_size
    for s in range(case.num_seqs):
        p0, n = case.q_start(s), case.seq_lens[s] - case.q_start(s)
        if n <= 0:
            continue
        t0 = R.tail_start(p0, n, cfg)
        row = case.query_start_loc[s] - p0  # row of absolute position p0 is query_start_loc[s]
        for g in R.chunk_groups(p0, n, cfg):
            lo, hi = max(p0, g * G), min(p0 + n, (g + 1) * G)
            cut = min(hi, max(lo, t0))
            if cut > lo:
                out.append((s, g, False, row + lo, row + cut))
            if hi > cut:
                out.append((s, g, True, row + cut, row + hi))
    return out


def selections_by_owner(owners, lists: dict[int, torch.Tensor], seq: int):
    """Split per-item selections ``{item: bool [Hsel, S]}`` of sequence ``seq`` into the
    reference's pooled ``{g: sel}`` and tail ``{g: sel}`` dicts."""
    pooled, tail = {}, {}
    for i, (s, g, is_tail, _lo, _hi) in enumerate(owners):
        if s == seq:
            (tail if is_tail else pooled)[g] = lists[i]
    return pooled, tail
