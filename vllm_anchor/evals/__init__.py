"""Long-context task suite for any OpenAI-compatible server (issue 6).

``tasks``: offline generators (needle in a haystack single / multi-needle at chosen depths,
RULER-style multikey / multivalue / multiquery, variable tracking, common-words extraction,
hard-needle confusable needles) with prompts of exact token lengths;
``scoring``: RULER string matching and 95% intervals; ``harness``: run a suite against one or
two servers and write JSON, a side-by-side table and a PNG (``bench/longctx_eval.py``).
"""
