"""``vllm-anchor`` command: ``serve`` (vLLM's OpenAI server with the anchor backend) and
``bench`` (streaming TTFT/ITL load test, optionally A/B against a second server)."""
from __future__ import annotations

import sys

USAGE = """\
usage: vllm-anchor {serve,bench} ...

  serve [MODEL] [vLLM options]   start `vllm serve` with --attention-backend anchor and
                                 long-context defaults (no MODEL: the embedded demo model)
  bench [options]                load-test a running server: TTFT/TPOT/ITL per prompt length
Run `vllm-anchor serve --help` or `vllm-anchor bench --help` for the options.
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "serve":
        from vllm_anchor.serving import launcher
        return launcher.main(rest)
    if cmd == "bench":
        from vllm_anchor.serving import loadtest
        return loadtest.main(rest)
    print(f"vllm-anchor: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
