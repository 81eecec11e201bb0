"""``vllm.general_plugins`` entry point: registers the backend in every vLLM process.

After this, ``--attention-backend CUSTOM`` and ``--attention-backend anchor`` (any case) select
:class:`vllm_anchor.backend.AnchorBackend`. Calling it again is harmless.
"""
from __future__ import annotations

BACKEND_PATH = "vllm_anchor.backend.AnchorBackend"


def register() -> None:
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    from .metrics import ensure_stats_dir_and_collector
    from .settings import load_settings

    load_settings()  # a bad VLLM_ANCHOR_* variable stops start-up here, with its name
    ensure_stats_dir_and_collector()  # before vLLM starts its engine processes, which inherit it
    register_backend(AttentionBackendEnum.CUSTOM, BACKEND_PATH)
    # `--attention-backend anchor` is upper-cased and looked up in the enum's member map;
    # an alias entry makes it resolve to CUSTOM (lookup and pickling both keep CUSTOM).
    AttentionBackendEnum._member_map_.setdefault("ANCHOR", AttentionBackendEnum.CUSTOM)
