"""AnchorAttention hyper-parameters, shared by the reference and the Triton kernels.

All lengths are in tokens and all positions are absolute positions inside one sequence, so
the same query token always belongs to the same group no matter how the prompt was chunked.

For a query at absolute position ``i`` in group ``g = i // group_size``:

* anchor region = sink keys ``[0, sink_tokens)`` plus the local window
  ``[max(sink_tokens, g*group_size - local_tokens), i]``;
* stripe candidates = the gap between them, ``[sink_tokens, g*group_size - local_tokens)``;
  a candidate is kept when a pooled block of the group's queries scores it within ``theta`` of
  its anchor. The chunk's last ``tail_tokens`` queries also keep, for themselves only, the
  candidates that they score within ``theta`` of their own anchors one by one.

The two sets are disjoint and together cover every key ``<= i`` (no double counting and no
dropped block, unlike the published code; see the project's algorithm spec,
docs/anchor-algorithm.md section 1d, in the team's shared folder).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


@dataclass(frozen=True)
class AnchorConfig:
    """Hyper-parameters of one AnchorAttention call.

    Parameters
    ----------
    theta:
        Stripe threshold in nats on the scaled score ``q.k/sqrt(D)``: a key column is kept when
        the pooled score is at least the pooled anchor minus ``theta``. ``inf`` keeps every
        candidate (dense attention), ``-inf`` keeps none (anchor region only).
    sink_tokens:
        ``I``, the number of leading tokens always attended (attention sinks).
    local_tokens:
        ``L``, how many keys before the start of a query's group are always attended, on top of
        the group's own causal part.
    group_size:
        ``G``, the number of consecutive queries that share one stripe list.
    pool_block:
        Queries are averaged in blocks of this many rows before scoring the candidates; a column
        is kept if any pooled block (and, with ``share_gqa``, any query head of the KV head)
        passes the threshold.
    share_gqa:
        One stripe list per KV head and group (union over its query heads), so every gathered
        K/V row serves all those query heads. ``False`` keeps one list per query head.
    tail_tokens:
        The last ``tail_tokens`` queries of each chunk are also scored one by one, each against
        its own anchor; they attend to their group's pooled columns plus the columns they keep
        (a list of their own, so the rest of the group does not pay for them). The end of a
        prompt is usually its question, and averaging it with the text before it in a pooling
        block can drop the one column it needs (a needle far back). ``0`` pools every query.
    """

    theta: float = 12.0
    sink_tokens: int = 128
    local_tokens: int = 128
    group_size: int = 2048
    pool_block: int = 128
    share_gqa: bool = True
    tail_tokens: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.theta, (int, float)) or math.isnan(self.theta):
            raise ValueError(f"theta must be a number of nats (inf allowed), got {self.theta!r}")
        for name in ("sink_tokens", "local_tokens", "tail_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if not isinstance(self.pool_block, int) or not _is_pow2(self.pool_block) or self.pool_block < 16:
            raise ValueError(f"pool_block must be a power of two >= 16, got {self.pool_block!r}")
        if (not isinstance(self.group_size, int) or self.group_size < self.pool_block
                or self.group_size % self.pool_block):
            raise ValueError(
                f"group_size must be a positive multiple of pool_block={self.pool_block}, "
                f"got {self.group_size!r}")
        if self.group_size // self.pool_block > 64:
            raise ValueError(
                f"group_size/pool_block = {self.group_size // self.pool_block} pooled blocks per "
                "group; at most 64 are supported (raise pool_block)")
        if not isinstance(self.share_gqa, bool):
            raise ValueError(f"share_gqa must be true or false, got {self.share_gqa!r}")

    @property
    def pools_per_group(self) -> int:
        return self.group_size // self.pool_block

    def candidate_end(self, group: int) -> int:
        """End (exclusive) of the stripe-candidate range of ``group``; start is ``sink_tokens``."""
        return max(self.sink_tokens, group * self.group_size - self.local_tokens)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
