"""Bad input against a running vLLM server, and our tools against bad servers (issue 4).

Sends each malformed request to ``--base-url`` and records the HTTP status and the server's
message, then runs ``vllm-anchor bench`` and the long-context suite against an unreachable
address and with a prompt longer than the server's ``max_model_len``, recording exit code and the
last line of stderr. Every case states what a user should get; ``ok`` says whether they got it.

  python bench/http_checks.py --base-url http://127.0.0.1:8001 --tokenizer $SMOLLM2 --out checks.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.error
import urllib.request


def post(url: str, body: bytes, timeout: float = 120) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(400).decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read(600).decode(errors="replace")
    except OSError as e:
        return -1, f"{type(e).__name__}: {e}"


def server_cases(base: str, model: str, max_len: int) -> list[dict]:
    """(name, endpoint, body, statuses a client should see)."""
    ok_req = {"model": model, "prompt": "Hello", "max_tokens": 4}
    chat = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    cases = [
        ("prompt_longer_than_max_model_len", "/v1/completions",
         {**ok_req, "prompt": [100] * (max_len + 64)}, {400}),
        ("prompt_plus_max_tokens_over_limit", "/v1/completions",
         {**ok_req, "prompt": [100] * (max_len - 8), "max_tokens": 64}, {400}),
        ("malformed_json", "/v1/completions", b'{"model": "x", "prompt": ', {400}),
        ("unknown_model", "/v1/completions", {**ok_req, "model": "no-such-model"}, {400, 404}),
        ("negative_temperature", "/v1/completions", {**ok_req, "temperature": -1.0}, {400}),
        ("top_p_above_one", "/v1/completions", {**ok_req, "top_p": 1.5}, {400}),
        ("negative_max_tokens", "/v1/completions", {**ok_req, "max_tokens": -3}, {400}),
        ("chat_messages_not_a_list", "/v1/chat/completions", {**chat, "messages": "hi"}, {400}),
        ("chat_unknown_model", "/v1/chat/completions", {**chat, "model": "no-such-model"}, {400, 404}),
        ("valid_request_still_served", "/v1/completions", ok_req, {200}),
    ]
    rows = []
    for name, path, body, want in cases:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        status, text = post(base + path, raw)
        try:
            msg = json.loads(text).get("error", {}).get("message", text) if status != 200 else "ok"
        except (ValueError, AttributeError):
            msg = text
        rows.append({"case": name, "endpoint": path, "status": status, "expected": sorted(want),
                     "ok": status in want, "message": str(msg)[:300]})
    return rows


def tool_cases(base: str, tokenizer: str, max_len: int) -> list[dict]:
    """Our command-line tools must fail with a clear message, not a traceback."""
    py = sys.executable
    cases = [
        ("bench_unreachable_server",
         [py, "-m", "vllm_anchor.cli", "bench", "--base-url", "http://127.0.0.1:9", "--tokenizer", tokenizer,
          "--input-lens", "1K", "--num-prompts", "1", "--no-plot", "--no-progress", "--result-dir", "/tmp"]),
        ("bench_prompt_longer_than_server_limit",
         [py, "-m", "vllm_anchor.cli", "bench", "--base-url", base, "--tokenizer", tokenizer,
          "--input-lens", str(max_len + 1000), "--num-prompts", "1", "--num-warmups", "0",
          "--no-plot", "--no-progress", "--result-dir", "/tmp"]),
        ("evals_unreachable_server",
         [py, "-m", "vllm_anchor.evals.harness", "--base-url", "http://127.0.0.1:9", "--tokenizer", tokenizer,
          "--tasks", "niah_single", "--lengths", "2000", "--samples", "1", "--out", "/tmp/x.json"]),
    ]
    rows = []
    for name, cmd in cases:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            err = (p.stderr.strip() or p.stdout.strip()).splitlines()
            rows.append({"case": name, "exit_code": p.returncode, "traceback": "Traceback" in p.stderr,
                         "last_line": err[-1][:300] if err else "",
                         "ok": p.returncode != 0 and "Traceback" not in p.stderr})
        except subprocess.TimeoutExpired:
            rows.append({"case": name, "exit_code": None, "ok": False, "last_line": "timed out"})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--tokenizer", required=True, help="the served model's folder")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    with urllib.request.urlopen(a.base_url + "/v1/models", timeout=30) as r:
        card = json.load(r)["data"][0]
    model, max_len = card["id"], int(card["max_model_len"])
    result = {"model": model, "max_model_len": max_len,
              "server": server_cases(a.base_url, model, max_len),
              "tools": tool_cases(a.base_url, a.tokenizer, max_len)}
    for r in result["server"] + result["tools"]:
        code = r.get("status", r.get("exit_code"))
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['case']:40s} {code!s:5s} {r.get('message', r.get('last_line', ''))[:110]}")
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0 if all(r["ok"] for r in result["server"] + result["tools"]) else 1


if __name__ == "__main__":
    sys.exit(main())
