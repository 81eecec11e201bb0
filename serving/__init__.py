"""Serving tools for vllm-anchor: a `vllm serve` launcher with long-context defaults and an
embedded demo model, and a streaming load tester for TTFT against prompt length.

Installed as ``vllm_anchor.serving`` (this folder is mapped into the package namespace)."""
