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
