"""Quick GPU smoke timing of the anchor path alone (no vLLM needed): Llama-8B attention shape."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import paged_cache, profile, synthetic_qkv  # noqa: E402

from vllm_anchor.kernels import AnchorConfig  # noqa: E402

for n in [int(x) for x in sys.argv[1:]] or [32768, 131072]:
    q, k, v = synthetic_qkv(n, 32, 8, 128, 0.10, 3.6, seed=n)
    kv, bt = paged_cache(k, v)
    for share in (True, False):
        t, w, out, plan, ws = profile(q, kv, bt, n, AnchorConfig(share_gqa=share), 128 ** -0.5)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        print(n, share, {k: round(x, 3) for k, x in t.items()},
              {k: (round(x / 1e12, 2) if "flop" in k else round(x, 4)) for k, x in w.items()},
              "anchorTF", round(w["anchor_flop"] / t["anchor_ms"] / 1e9), "sparseTF",
              round(w["sparse_flop"] / t["sparse_ms"] / 1e9), flush=True)
