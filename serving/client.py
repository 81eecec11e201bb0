"""Streaming OpenAI-API client for one request, timed like ``vllm bench serve``.

TTFT is the time from sending to the first streamed chunk with ``choices`` (empty text counts);
each later chunk with ``choices`` adds one inter-token latency (ITL); the end-to-end latency
(E2EL) ends at the last data message.  One exception to vLLM's rules: on chat endpoints vLLM
sends a role-only chunk just before the first token, and the gap after it is not an ITL.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp

ERROR_KINDS = ("http_4xx", "http_5xx", "timeout", "dropped_stream", "connection", "other")


@dataclass
class RequestResult:
    prompt_len: int                     # tokens we built (the target length)
    server_prompt_len: int | None = None  # usage.prompt_tokens, when the server sent it
    output_len: int = 0                 # usage.completion_tokens, else the token chunks
    cached_tokens: int | None = None    # usage.prompt_tokens_details.cached_tokens
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0
    start_time: float = 0.0
    success: bool = False
    error_kind: str | None = None
    error: str = ""
    generated_text: str = ""


class UnreachableServer(RuntimeError):
    pass


def error_message(body: bytes | str) -> str:
    """The server's message from an OpenAI/vLLM error body, else the raw body (shortened)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text.strip()[:500]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if data.get("message"):
            return str(data["message"])
        if data.get("detail"):
            return json.dumps(data["detail"])[:500]
    return text.strip()[:500]


def _fail(res: RequestResult, kind: str, msg: str) -> RequestResult:
    res.success, res.error_kind, res.error = False, kind, msg
    return res


async def stream_request(session: aiohttp.ClientSession, url: str, body: bytes,
                         prompt_len: int, headers: dict, timeout: float,
                         chat: bool = False) -> RequestResult:
    """POST ``body`` (JSON, ``"stream": true``) and time its SSE stream."""
    res = RequestResult(prompt_len=prompt_len)
    got_headers = False
    done = False
    first_seen = skip_itl = False
    text_parts: list[str] = []
    chunks = 0
    st = time.perf_counter()
    res.start_time = st
    last = st
    try:
        async with session.post(url, data=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            got_headers = True
            if resp.status >= 400:
                msg = error_message(await resp.read())
                kind = "http_4xx" if resp.status < 500 else "http_5xx"
                return _fail(res, kind, f"HTTP {resp.status}: {msg}")
            buf = b""
            async for data in resp.content.iter_any():
                ts = time.perf_counter()
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue  # blank separators, ": ping" comments, event: lines
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        continue
                    obj = json.loads(payload)
                    if not isinstance(obj, dict):
                        continue
                    if "error" in obj and not obj.get("choices"):
                        err = obj["error"]
                        code = err.get("code") if isinstance(err, dict) else None
                        kind = "http_4xx" if isinstance(code, int) and code < 500 else "http_5xx"
                        return _fail(res, kind, f"error event in stream: {error_message(payload)}")
                    choices = obj.get("choices")
                    if choices:
                        c = choices[0]
                        if chat:
                            delta = c.get("delta") or {}
                            piece = (delta.get("content") or delta.get("reasoning_content")
                                     or delta.get("reasoning") or "")
                            role_only = ("role" in delta and not piece
                                         and not delta.get("tool_calls"))
                        else:
                            piece, role_only = c.get("text") or "", False
                        if not first_seen:
                            res.ttft, first_seen = ts - st, True
                            skip_itl = role_only  # the gap after a role chunk is no ITL
                        elif skip_itl:
                            skip_itl = False
                        else:
                            res.itl.append(ts - last)
                        if not role_only:
                            chunks += 1
                        text_parts.append(piece)
                        last = ts
                    usage = obj.get("usage")
                    if usage:
                        res.output_len = usage.get("completion_tokens") or res.output_len
                        res.server_prompt_len = usage.get("prompt_tokens", res.server_prompt_len)
                        details = usage.get("prompt_tokens_details") or {}
                        res.cached_tokens = details.get("cached_tokens", res.cached_tokens)
                        last = ts
    except asyncio.TimeoutError:
        return _fail(res, "timeout", f"no complete response within {timeout:g} s "
                                     f"({chunks} chunks received)")
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as e:
        kind = "dropped_stream" if got_headers else "connection"
        return _fail(res, kind, f"{type(e).__name__}: {e} (after {chunks} chunks)")
    except aiohttp.ClientConnectionError as e:
        kind = "dropped_stream" if got_headers else "connection"
        return _fail(res, kind, f"{type(e).__name__}: {e}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return _fail(res, "other", f"malformed stream data: {e}")
    except aiohttp.ClientError as e:
        return _fail(res, "other", f"{type(e).__name__}: {e}")
    res.generated_text = "".join(text_parts)
    res.latency = last - st
    if not done:
        return _fail(res, "dropped_stream", f"stream ended without [DONE] after {chunks} chunks")
    if not first_seen:
        return _fail(res, "other", "the stream had no chunk with choices (no token)")
    if not res.output_len:
        res.output_len = chunks
    res.success = True
    return res


# vLLM's API server closes a keep-alive connection after 5 s idle (VLLM_HTTP_TIMEOUT_KEEP_ALIVE);
# aiohttp would reuse it for 15 s. A request sent on a pooled connection just as the server closes
# it fails with ServerDisconnectedError and never reaches the server: the first measured request
# after the bench's prompt building (several seconds after its /v1/models check) failed that way
# twice in three runs with --num-warmups 0 (bench/results/lease26_h100/prefix_warning/). The bench
# reuses a connection only while it has been idle for less than this, well inside the server's 5 s.
IDLE_REUSE_S = 2.0


def new_session() -> aiohttp.ClientSession:
    """The bench's HTTP session: no connection limit, idle connections dropped after
    :data:`IDLE_REUSE_S` (a new one costs a TCP handshake, not a failed request)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=IDLE_REUSE_S))


async def check_server(session: aiohttp.ClientSession, base_url: str, headers: dict,
                       timeout: float = 10.0) -> list[dict]:
    """GET /v1/models; raise UnreachableServer with a clear message when that fails."""
    url = base_url.rstrip("/") + "/v1/models"
    try:
        async with session.get(url, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            body = await resp.read()
            if resp.status in (401, 403):
                raise UnreachableServer(
                    f"{url} answered HTTP {resp.status} ({error_message(body)}): "
                    "the server needs an API key; pass --api-key (or set VLLM_API_KEY)")
            if resp.status != 200:
                raise UnreachableServer(f"{url} answered HTTP {resp.status}: {error_message(body)}")
            return list(json.loads(body).get("data") or [])
    except asyncio.TimeoutError:
        raise UnreachableServer(f"{url} did not answer within {timeout:g} s; is the server "
                                "still starting? (vLLM answers /health once ready)") from None
    except aiohttp.ClientConnectionError as e:
        raise UnreachableServer(
            f"cannot reach the server at {base_url} ({e}). Start one with `vllm-anchor serve` "
            "or check --base-url.") from None
    except (json.JSONDecodeError, AttributeError):
        raise UnreachableServer(f"{url} did not return an OpenAI model list; is {base_url} "
                                "an OpenAI-compatible server?") from None
