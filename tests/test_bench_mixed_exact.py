"""bench/mixed_exact.py: the comparison and the concurrent send, without a server."""
import threading
import time

from bench_module import load_bench

mixed_exact = load_bench("mixed_exact")


def test_compare_accepts_identical_and_near_ties_only():
    same = (["a", "b", "c"], [-0.1, -0.2, -0.3])
    assert mixed_exact.compare(same, same, 1e-2)["ok"]
    flip = (["a", "b", "x"], [-0.1, -0.205, -0.9])
    r = mixed_exact.compare(same, flip, 1e-2)
    assert r["ok"] and not r["identical"] and r["first_difference_at"] == 2
    drift = (["a", "b", "x"], [-0.1, -0.5, -0.9])  # agreed tokens, logprobs far apart: not a near-tie
    assert not mixed_exact.compare(same, drift, 1e-2)["ok"]
    garbage = (["z", "y", "x"], [-5.0, -5.0, -5.0])  # differs at the first token: wrong, not a tie
    assert not mixed_exact.compare(same, garbage, 1e-2)["ok"]
    short = (["a", "b"], [-0.1, -0.2])
    assert mixed_exact.compare(same, short, 1e-2)["first_difference_at"] == 2


def test_send_together_sends_in_list_order_concurrently_and_keeps_order():
    started, lock = [], threading.Lock()

    def fake(base, ids, max_tokens):
        with lock:
            started.append(ids[0])
        time.sleep(0.05)
        return [str(ids[0])] * max_tokens, [0.0] * max_tokens
    t = time.perf_counter()
    out = mixed_exact.send_together("http://x", [[3], [1], [2]], 2, stagger_s=0.005, complete_fn=fake)
    assert time.perf_counter() - t < 0.14  # together, not one after another (3 x 0.05 s)
    assert started == [3, 1, 2] and [o[0][0] for o in out] == ["3", "1", "2"]


def test_prefix_cache_answers_are_reported_and_warned_about(monkeypatch, capsys):
    """A server that answers a compared prompt partly from its prefix cache computes it differently
    (stock against itself flipped tokens that way, lease28_h100/exact_floor/): both tools record
    the cached tokens per request and print a warning naming the server."""
    import json as _json
    exact_http = load_bench("exact_http")
    assert exact_http.cache_warning("http://b", 0, 100) is None
    assert exact_http.cache_warning("http://b", None, 100) is None
    assert "http://b answered 96 of 100 prompt tokens" in exact_http.cache_warning("http://b", 96, 100)

    class Resp:
        def __init__(self, body):
            self.body = _json.dumps(body).encode()

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self, *a):
            return self.body

    def urlopen(req, timeout=None):
        url = req if isinstance(req, str) else req.full_url
        if url.endswith("/v1/models"):
            return Resp({"data": [{"id": "m"}]})
        cached = 16 if url.startswith("http://b") else 0
        return Resp({"choices": [{"logprobs": {"tokens": ["t"], "token_logprobs": [-0.5]}}],
                     "usage": {"prompt_tokens": 40, "prompt_tokens_details": {"cached_tokens": cached}}})
    monkeypatch.setattr(exact_http.urllib.request, "urlopen", urlopen)
    assert exact_http.complete_with_usage("http://b", [1] * 40, 1) == (["t"], [-0.5], 16)
    assert exact_http.complete_with_usage("http://a", [1] * 40, 1) == (["t"], [-0.5], 0)

    fake = lambda base, ids, n: (["t"] * n, [-0.5] * n, 16 if base == "http://b" else 0)  # noqa: E731
    out = mixed_exact.send_together("http://b", [[1], [2]], 2, complete_fn=fake)
    assert [o[2] for o in out] == [16, 16]
    row = mixed_exact.compare(out[0], out[1], 1e-2)
    assert row["identical"] and row["ok"]


def test_main_records_cached_tokens_and_warns_per_round(monkeypatch, tmp_path, capsys):
    import json as _json

    from tiny_tokenizer import build_tiny_tokenizer
    tok = build_tiny_tokenizer(tmp_path / "tok")

    def fake_send(base, prompts, max_tokens, **kw):
        return [(["t"] * max_tokens, [-0.5] * max_tokens, 32 if base == "http://b" else 0) for _ in prompts]
    monkeypatch.setattr(mixed_exact, "send_together", fake_send)
    out = tmp_path / "mixed.json"
    rc = mixed_exact.main(["--a", "http://a", "--b", "http://b", "--tokenizer", tok, "--blocker", "0",
                           "--long", "200", "--short", "50", "--rounds", "2", "--max-tokens", "3", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.count("warning: http://b (round") == 2 and "http://a (round" not in printed
    assert "answered 64 of 250 prompt tokens from its prefix cache" in printed
    rows = _json.loads(out.read_text())["rounds"][1]["requests"]
    assert [(r["cached_prompt_tokens_a"], r["cached_prompt_tokens_b"]) for r in rows] == [(0, 32), (0, 32)]


def test_warmup_rounds_go_to_both_servers_first_with_prompts_of_their_own(monkeypatch, tmp_path):
    """A freshly started server's first round need not land in one engine step (lease29_h100/routing/):
    the warm-up rounds are sent to both servers before the compared ones, are not compared or
    recorded, and share no prompt with them (so no compared prompt is answered from the cache)."""
    import json as _json

    from tiny_tokenizer import build_tiny_tokenizer
    tok = build_tiny_tokenizer(tmp_path / "tok")
    sent = []

    def fake_send(base, prompts, max_tokens, **kw):
        sent.append((base, [tuple(p) for p in prompts]))
        return [(["t"] * max_tokens, [-0.5] * max_tokens, 0) for _ in prompts]
    monkeypatch.setattr(mixed_exact, "send_together", fake_send)
    out = tmp_path / "mixed.json"
    args = ["--a", "http://a", "--b", "http://b", "--tokenizer", tok, "--blocker", "0", "--long", "200",
            "--short", "50", "--rounds", "2", "--max-tokens", "3", "--out", str(out)]
    assert mixed_exact.main(args + ["--warmup-rounds", "2"]) == 0
    assert [base for base, _ in sent] == ["http://a", "http://b"] * 4
    warm, compared = sent[:4], sent[4:]
    assert warm[0][1] == warm[1][1] and warm[0][1] != warm[2][1]  # same prompts to both, new ones each round
    warm_prompts = {p for _, ps in warm for p in ps}
    assert not warm_prompts & {p for _, ps in compared for p in ps}
    assert [len(p) for p in warm[0][1]] == [200, 50]  # the compared rounds' shape
    result = _json.loads(out.read_text())
    assert result["warmup_rounds"] == 2 and [r["round"] for r in result["rounds"]] == [0, 1]

    sent.clear()  # without warm-up the compared prompts are the same ones (keys unchanged)
    assert mixed_exact.main(args + ["--warmup-rounds", "0"]) == 0
    assert sent == compared


def test_round_counts_are_checked_before_any_request(monkeypatch, capsys):
    import pytest
    monkeypatch.setattr(mixed_exact, "send_together", lambda *a, **k: pytest.fail("sent a request"))
    for bad in (["--rounds", "0"], ["--warmup-rounds", "-1"]):
        with pytest.raises(SystemExit) as e:
            mixed_exact.main(["--a", "http://a", "--b", "http://b", "--tokenizer", "/nonexistent", "--out", "x.json",
                              *bad])
        assert e.value.code == 2
        assert "--rounds must be at least 1 and --warmup-rounds at least 0" in capsys.readouterr().err
