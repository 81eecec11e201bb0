"""vllm-anchor: AnchorAttention sparse long-context prefill as a vLLM attention backend.

``vllm_anchor.kernels`` holds the engine-agnostic Triton kernels; the modules beside it are the
vLLM glue (plugin entry point, backend, configuration).
"""
__version__ = "0.1.0"
