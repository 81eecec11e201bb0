"""``vllm-anchor`` command: ``serve`` (vLLM's OpenAI server with the anchor backend) and
``bench`` (streaming TTFT/ITL load test, optionally A/B against a second server) and ``calibrate``
(theta sweep: attention-mass recall, stripe density and error per layer on a real model)."""
from __future__ import annotations

import sys

USAGE = """\
usage: vllm-anchor {serve,bench,calibrate} ...

  serve [MODEL] [vLLM options]   start `vllm serve` with --attention-backend anchor and
                                 long-context defaults (no MODEL: the embedded demo model)
  bench [options]                load-test a running server: TTFT/TPOT/ITL per prompt length
  calibrate [options]            sweep theta on a real model (transformers, CPU or GPU): recall,
                                 stripe density and error per layer; recommends a theta
Run `vllm-anchor serve --help`, `vllm-anchor bench --help` or `vllm-anchor calibrate --help`.
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        # asked for: stdout and success; no command at all is a usage error (stderr, 2)
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "serve":
        from vllm_anchor.serving import launcher
        return launcher.main(rest)
    if cmd == "bench":
        from vllm_anchor.serving import loadtest
        return loadtest.main(rest)
    if cmd == "calibrate":
        from vllm_anchor import calibrate
        return calibrate.main(rest)
    print(f"vllm-anchor: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
