"""CPU tests of the long-context suite: exact-length generators, needle depths, RULER scoring,
confidence intervals, and the harness end to end against local fake OpenAI servers on 127.0.0.1
whose right and wrong answers are fixed in advance (so the expected scores are known)."""
from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

try:  # module level: FastAPI resolves the string annotations (PEP 563) in module globals
    from fastapi import Request
except ImportError:  # the harness tests skip
    Request = None

from vllm_anchor.evals import harness, scoring
from vllm_anchor.evals import tasks as T
from vllm_anchor.serving import prompts
from tiny_tokenizer import build_tiny_tokenizer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokdir(tmp_path_factory):
    """The shared tiny BPE tokenizer."""
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(tokdir):
    return prompts.load_tokenizer(tokdir)


@pytest.fixture(scope="module")
def hs(tok):
    return T.Haystack(tok, corpus="pydoc")


# --------------------------------------------------------------------------- generators
def test_sentence_splitter():
    text = "First one. Second one! Third? 4 is a number.\n\nNew para: More text"
    assert T.split_sentences(text) == ["First one.", "Second one!", "Third?", "4 is a number.",
                                       "New para:", "More text"]


@pytest.mark.parametrize("task", sorted(T.TASKS))
@pytest.mark.parametrize("length", [1024, 3000, 4096])
def test_exact_lengths_and_answers_in_prompt(hs, tok, task, length):
    if task == "hard_needle" and not T.hard_needle_available():
        pytest.skip("hard-needle not installed")
    s = T.TASKS[task](hs, length, random.Random(f"{task}/{length}"), depth=0.5)
    assert len(s.ids) == length == s.length
    assert s.ids[0] == tok.convert_tokens_to_ids("<s>")  # BOS carried in the IDs
    text = tok.decode(s.ids)
    assert s.answers and all(a in text for a in s.answers)
    if task.startswith("niah"):
        n = {"niah_multineedle": 4, "niah_multivalue": 4, "niah_multikey": 4,
             "niah_multiquery": 4}.get(task, 1)
        assert text.count("One of the special magic numbers for") == n
    if task == "niah_multiquery":
        assert len(s.answers) == 4
    if task == "common_words":  # each common word appears 30x at >= 4096 tokens, 6x below
        words = text.split("numbered list of words")[1]
        for w in s.answers:
            assert words.count(f". {w} ") + words.count(f". {w}\n") == (
                30 if length >= 4096 else 6)
    if task == "variable_tracking":
        assert f"VAR {s.answers[0]} = {s.meta['query']}." in text
        for a, b in zip(s.answers, s.answers[1:]):
            assert f"VAR {b} = VAR {a}." in text


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
def test_needle_at_requested_depth(hs, tok, depth):
    length = 4096
    s = T.niah_single(hs, length, random.Random(7), depth=depth)
    (off,) = s.meta["needle_offsets"]
    needle = hs.enc(" " + T.NEEDLE.format(type_v="numbers", key=s.meta["query"],
                                          value=s.answers[0]))
    assert s.ids[off:off + len(needle)] == needle
    head, hay_len = s.meta["haystack_span"]
    # the prefix before the haystack is exactly BOS + the instruction
    instr = T.NIAH_TEMPLATE.replace("Some", "A").replace("are", "is").format(type_v="number")
    assert s.ids[:head] == hs.lead + hs.enc(instr)
    text = tok.decode(s.ids)
    assert text.count(T.NEEDLE.format(type_v="numbers", key=s.meta["query"],
                                      value=s.answers[0])) == 1
    assert text.endswith("mentioned in the provided text is")
    assert len(s.ids) == head + hay_len + len(needle) + len(hs.enc(
        text[text.rindex("\nWhat is the special magic number"):]))
    got = (off - head) / hay_len
    # the needle goes to the sentence boundary nearest the depth: within one sentence (<= 80
    # words) of it
    assert abs(got - depth) <= 160 / hay_len, (got, depth)
    if depth == 0.0:
        assert off == head
    if depth == 1.0:
        assert off == head + hay_len


def test_singular_rewrite_leaves_the_key_as_it_is_in_the_haystack(hs, tok, monkeypatch):
    """RULER rewrites the single-needle template ("are" -> "is", "numbers" -> "number") before
    the key goes in; a key word holding "are" must reach the question unchanged."""
    monkeypatch.setattr(T, "rand_key", lambda hs_, rng: "kneaded-prepare")
    s = T.niah_single(hs, 2048, random.Random(3), depth=0.5)
    text = tok.decode(s.ids)
    assert s.meta["query"] == "kneaded-prepare"
    assert "One of the special magic numbers for kneaded-prepare is" in text  # the needle
    assert text.count("kneaded-prepare") == 3  # needle, question, answer prefix
    assert "What is the special magic number for kneaded-prepare mentioned" in text


def test_common_words_keeps_exact_length_when_newline_is_two_tokens(hs, monkeypatch):
    """SentencePiece tokenizers encode "\n" as two tokens; the list's padding must still land
    on the exact length."""
    enc = hs.enc

    def two_token_newline(text):
        ids = enc(text)
        return ids + ids if text == "\n" else ids
    monkeypatch.setattr(hs, "enc", two_token_newline)
    for length in (1500, 2000, 2500, 3000, 3500):  # some need padding, some do not
        s = T.TASKS["common_words"](hs, length, random.Random(5), depth=None)
        assert len(s.ids) == length


def test_suite_is_deterministic_and_seeded(hs):
    a = T.build_suite(hs, ["niah_single", "variable_tracking"], [1024], [0.0, 1.0], 2, seed=3)
    b = T.build_suite(hs, ["niah_single", "variable_tracking"], [1024], [0.0, 1.0], 2, seed=3)
    c = T.build_suite(hs, ["niah_single", "variable_tracking"], [1024], [0.0, 1.0], 2, seed=4)
    assert len(a) == 2 * 2 + 2
    assert [s.ids for s in a] == [s.ids for s in b]
    assert [s.ids for s in a] != [s.ids for s in c]
    with pytest.raises(ValueError, match="unknown task"):
        T.build_suite(hs, ["nope"], [1024], [0.5], 1)
    with pytest.raises(ValueError, match="too short"):
        T.niah_single(hs, 40, random.Random(0), depth=0.5)


# --------------------------------------------------------------------------- scoring
def test_string_match():
    assert scoring.string_match_all(" The numbers are 123 and 456.", ["123", "456"]) == 1.0
    assert scoring.string_match_all("123 only", ["123", "456", "789", "000"]) == 0.25
    assert scoring.string_match_all("ABC", ["abc"]) == 1.0  # case-insensitive
    assert scoring.string_match_part("nothing 456", ["123", "456"]) == 1.0
    assert scoring.string_match_part("nothing", ["123", "456"]) == 0.0
    assert scoring.postprocess("\x01 12\x0234 \n") == "12\n34"
    with pytest.raises(ValueError):
        scoring.score("x", ["x"], "bogus")


def test_wilson_known_values():
    lo, hi = scoring.wilson(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    lo, hi = scoring.wilson(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    lo, hi = scoring.wilson(10, 10)
    assert round(lo, 4) == 0.7225 and hi == 1.0
    lo, hi = scoring.wilson(50, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)


def test_summarize_and_bootstrap():
    s = scoring.summarize([1, 0, 1, 1, 0, 1, 1, 1, 1, 1])
    assert s["ci_method"] == "wilson" and s["mean"] == 0.8
    assert [round(x, 4) for x in s["ci95"]] == [0.4902, 0.9433]
    vals = [0.25, 0.5, 0.75, 1.0] * 10
    s = scoring.summarize(vals)
    assert s["ci_method"] == "bootstrap" and s["mean"] == pytest.approx(0.625)
    lo, hi = s["ci95"]
    # standard error of the mean = sd/sqrt(n) = 0.2795/6.32 = 0.0442: ~ +-0.087 at 95%
    assert 0.52 < lo < 0.58 and 0.67 < hi < 0.73
    assert scoring.bootstrap([0.5] * 7) == (0.5, 0.5)
    d = scoring.paired_bootstrap_diff([1, 1, 1, 0], [0, 1, 1, 0])
    assert d["mean"] == 0.25 and d["ci95"][0] >= 0.0 and d["ci95"][1] <= 1.0


# --------------------------------------------------------------------------- harness
class FakeOpenAI:
    """/v1/models and non-streaming /v1/completions. Answers from a table keyed by the exact
    prompt IDs: ``answers[tuple(ids)]`` is the completion text; an unknown prompt gets a wrong
    answer; a prompt in ``fail`` gets HTTP 500."""

    def __init__(self, answers: dict, fail: set = frozenset()):
        import uvicorn
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse
        self.answers, self.fail, self.requests = answers, set(fail), []
        app = FastAPI()

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": "fake", "object": "model"}]}

        @app.post("/v1/completions")
        async def completions(request: Request):
            body = await request.json()
            self.requests.append(body)
            key = tuple(body["prompt"])
            if key in self.fail:
                return JSONResponse({"error": {"message": "boom", "code": 500}}, 500)
            text = self.answers.get(key, " I do not know.")
            return {"choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": len(key)}}

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started:
            assert time.time() < deadline
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(5)
        self.sock.close()


def test_harness_end_to_end(tokdir, tok, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    tasks = ["niah_single", "niah_multivalue", "variable_tracking"]
    lengths, depths, n, seed = [1024, 2048], [0.0, 0.5, 1.0], 2, 5
    suite = T.build_suite(T.Haystack(tok, corpus="pydoc"), tasks, lengths, depths, n, seed)
    assert len(suite) == 2 * 3 * 2 + 2 * 2 + 2 * 2  # 20
    # server A: niah_single right at depth 0 and 1, wrong at 0.5; multivalue: 2 of 4 values
    # (0.5 each); variable tracking right; one variable-tracking prompt fails with HTTP 500
    ans_a, fail_a = {}, set()
    for s in suite:
        key = tuple(s.ids)
        if s.task == "niah_single" and s.depth != 0.5:
            ans_a[key] = " " + s.answers[0] + "."
        elif s.task == "niah_multivalue":
            ans_a[key] = " " + ", ".join(s.answers[:2])
        elif s.task == "variable_tracking":
            ans_a[key] = " " + " ".join(s.answers)
    vt = [s for s in suite if s.task == "variable_tracking"]
    fail_a.add(tuple(vt[0].ids))
    ans_b = {tuple(s.ids): " " + " ".join(s.answers).upper() for s in suite}  # all right
    a, b = FakeOpenAI(ans_a, fail_a), FakeOpenAI(ans_b)
    try:
        out = tmp_path / "r" / "eval.json"
        rc = harness.main(["--base-url", a.url, "--compare-url", b.url, "--labels", "anchor,stock",
                           "--tokenizer", tokdir, "--tasks", *tasks, "--lengths", "1024", "2K",
                           "--depths", "0", "0.5", "1", "--samples", str(n), "--seed", str(seed),
                           "--corpus", "pydoc", "--concurrency", "3", "--out", str(out)])
    finally:
        a.stop()
        b.stop()
    assert rc == 0
    # what the servers received: exact-length token-ID prompts, greedy
    assert len(a.requests) == len(b.requests) == 20
    for body in a.requests:
        assert body["temperature"] == 0.0 and body["model"] == "fake"
        assert len(body["prompt"]) in (1024, 2048)
    res = json.loads(out.read_text())
    ra, rb = res["runs"]
    assert (ra["label"], rb["label"]) == ("anchor", "stock")
    t = ra["summary"]["tasks"]
    assert t["niah_single"]["mean"] == pytest.approx(8 / 12)
    assert t["niah_single"]["ci_method"] == "wilson"
    assert t["niah_single"]["ci95"] == pytest.approx(list(scoring.wilson(8, 12)))
    assert t["niah_multivalue"]["mean"] == 0.5 and t["niah_multivalue"]["ci_method"] == "bootstrap"
    assert t["variable_tracking"]["mean"] == 0.75 and t["variable_tracking"]["errors"] == 1
    depth = ra["summary"]["niah_depth"]
    assert depth["1024@0.5"]["mean"] == 0.0 and depth["2048@1"]["mean"] == 1.0
    assert ra["summary"]["overall"]["mean"] == pytest.approx((8 + 2 + 3) / 20)
    assert rb["summary"]["overall"]["mean"] == 1.0
    assert res["diff"]["niah_single"]["mean"] == pytest.approx(8 / 12 - 1)
    assert res["diff"]["overall"]["mean"] == pytest.approx((8 + 2 + 3) / 20 - 1)
    md = out.with_suffix(".md").read_text()
    assert "anchor (95% CI)" in md and "stock (95% CI)" in md and "niah_single depth" in md
    assert "| niah_single | 12 | 0.667 [" in md
    assert out.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC


def test_harness_unreachable_server(tokdir, tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    rc = harness.main(["--base-url", f"http://127.0.0.1:{port}", "--tokenizer", tokdir,
                       "--tasks", "niah_single", "--lengths", "1024", "--depths", "0.5",
                       "--samples", "1", "--corpus", "pydoc", "--out", str(tmp_path / "x.json")])
    assert rc == 1


def test_bench_script_help():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "longctx_eval.py"), "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--compare-url" in r.stdout


def test_first_line_metric_for_confusable_needles():
    assert scoring.score(" March 17.\nQ: other?\nA: April 12", ["March 17"], "first_line") == 1.0
    assert scoring.score(" April 12.\nA: March 17", ["March 17"], "first_line") == 0.0
    assert scoring.score("\n\n March 17", ["March 17"], "first_line") == 1.0
    assert scoring.score("", ["March 17"], "first_line") == 0.0
