"""Engine-agnostic AnchorAttention kernels (Triton) and their PyTorch reference.

Installed as ``vllm_anchor.kernels``; nothing here imports vLLM.
"""
from .api import AnchorWorkspace, anchor_prefill, new_workspace, warm_up  # noqa: F401
from .config import AnchorConfig  # noqa: F401
from .plan import AnchorPlan, plan_anchor_prefill, stripe_density  # noqa: F401
