"""``vllm.general_plugins`` entry point: registers the backend in every vLLM process.

After this, ``--attention-backend CUSTOM`` and ``--attention-backend anchor`` (any case) select
:class:`vllm_anchor.backend.AnchorBackend`. Calling it again is harmless.
"""
from __future__ import annotations

import importlib
import logging
import os

BACKEND_PATH = "vllm_anchor.backend.AnchorBackend"


def _log_through_vllm() -> None:
    """Send the ``vllm_anchor`` logger's records to vLLM's own handler and level.

    vLLM configures only the ``vllm`` logger (its handler, format and VLLM_LOGGING_LEVEL); a
    logger outside that tree falls back to Python's last-resort handler, which drops INFO, so
    the backend's start-up lines (kernel warm-up, layers left on stock attention) were lost.
    """
    ours, theirs = logging.getLogger("vllm_anchor"), logging.getLogger("vllm")
    if ours.handlers or not theirs.handlers:
        return  # configured already (by us, or by the application)
    for h in theirs.handlers:
        ours.addHandler(h)
    ours.setLevel(theirs.level)
    ours.propagate = False


RAY_PREFIXES_ENV = "VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY"


def _ray_copies_kernel_switches() -> None:
    """Have vLLM copy ``ANCHOR_KERNELS_*`` (launch options and A/B switches, read by the kernels
    in each worker) to Ray workers: vLLM copies only its own prefixes (``VLLM_``, ``HF_``, ...)
    and the ones this additive, comma-separated variable names; the ``VLLM_ANCHOR_*`` settings
    already travel."""
    have = [t.strip() for t in os.environ.get(RAY_PREFIXES_ENV, "").split(",") if t.strip()]
    if "ANCHOR_KERNELS_" not in have:
        os.environ[RAY_PREFIXES_ENV] = ",".join(have + ["ANCHOR_KERNELS_"])


def register() -> None:
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    from .metrics import ensure_stats_dir_and_collector
    from .settings import load_settings
    from .engine_profile import from_env as step_profiler_from_env

    _log_through_vllm()
    load_settings()  # a bad VLLM_ANCHOR_* variable stops start-up here, with its name
    step_profiler_from_env()  # and so does a bad VLLM_ANCHOR_PROFILE_* one
    if os.environ.get("ANCHOR_KERNELS_LAUNCH"):  # and a bad ANCHOR_KERNELS_LAUNCH (parsed at import;
        importlib.import_module("vllm_anchor.kernels.launch_env")  # the kernels load only when it is set)
    _ray_copies_kernel_switches()
    ensure_stats_dir_and_collector()  # before vLLM starts its engine processes, which inherit it
    register_backend(AttentionBackendEnum.CUSTOM, BACKEND_PATH)
    # `--attention-backend anchor` is upper-cased and looked up in the enum's member map;
    # an alias entry makes it resolve to CUSTOM (lookup and pickling both keep CUSTOM).
    AttentionBackendEnum._member_map_.setdefault("ANCHOR", AttentionBackendEnum.CUSTOM)
