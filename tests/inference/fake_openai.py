"""A fast stand-in for vLLM's OpenAI server, for the gateway's tests and benchmark (bench/gateway.py).

An ASGI app answering /v1/chat/completions, /v1/completions and /v1/responses the way vLLM does, non-streaming and SSE
streaming, with `stream_options.include_usage` and vLLM's `continuous_usage_stats`; it checks vLLM's own API
key. A request steers it with an extra body field (vLLM ignores unknown fields):
`"fake": {"tokens": 5, "delay": 0.0, "status": 200, "stall_after": null}` for the number of completion
tokens, a pause before each chunk, an error status to answer with, and a chunk after which a stream stalls. It also answers the paths the gateway must not expose
(/tokenize, /metrics, ...), so a test can tell that the gateway did not forward them.

Run alone: `python tests/inference/fake_openai.py --port 9000 --key secret`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

PROMPT_TOKENS = 7


class FakeOpenAI:
    def __init__(self, keys: set[str] | None = None) -> None:
        self.keys = keys if keys is not None else set()
        self.requests: list[dict[str, Any]] = []  # bodies seen (tests read them)
        self.cancelled = 0
        self.served = 0
        self.paths: list[str] = []
        self.request_ids: list[str] = []  # X-Request-ID of each completion request (tests/test_observability.py)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        path = scope["path"]
        self.paths.append(path)
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if path in ("/health", "/tokenize", "/metrics", "/pooling", "/score", "/sleep", "/invocations"):
            await _send(send, 200, b'{"reached": true}')
            return
        if path not in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
            await _send(send, 404, b'{"error": {"message": "not found", "type": "NotFoundError", "code": 404}}')
            return
        auth = dict(scope["headers"]).get(b"authorization", b"").decode()
        if self.keys and auth.removeprefix("Bearer ") not in self.keys:
            await _send(send, 401, b'{"error": "Unauthorized"}')
            return
        request = json.loads(body)
        self.requests.append(request)
        self.request_ids.append(dict(scope["headers"]).get(b"x-request-id", b"").decode())
        fake = request.get("fake") or {}
        status = int(fake.get("status", 200))
        if status != 200:
            await _send(send, status, json.dumps({"error": {"message": f"fake failure {status}", "type": "BadRequest",
                                                            "param": None, "code": status}}).encode())
            return
        if path == "/v1/responses":
            await self._response(request, receive, send)
            return
        tokens = min(int(fake.get("tokens", 5)), int(request.get("max_tokens") or 16))
        delay = float(fake.get("delay", 0))
        chat = path == "/v1/chat/completions"
        created = int(time.time())
        self.served += 1
        completion_id = f"cmpl-fake-{self.served}"  # unique, as vLLM's are (a proxy may key its logs by it)
        if not request.get("stream"):
            if delay:
                await asyncio.sleep(delay)
            choice = ({"index": 0, "message": {"role": "assistant", "content": "tok " * tokens},
                       "finish_reason": "length"} if chat else
                      {"index": 0, "text": "tok " * tokens, "finish_reason": "length"})
            await _send(send, 200, json.dumps({
                "id": completion_id, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": request["model"], "choices": [choice],
                "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": tokens,
                          "total_tokens": PROMPT_TOKENS + tokens}}).encode())
            return
        options = request.get("stream_options") or {}
        include = options.get("include_usage") is True
        continuous = include and options.get("continuous_usage_stats") is True
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        gone = asyncio.ensure_future(receive())  # completes with http.disconnect when the client goes away
        try:
            for i in range(tokens):
                if delay:
                    await asyncio.sleep(delay)
                if i == fake.get("stall_after"):
                    await asyncio.sleep(5)  # vLLM stuck mid-stream
                if gone.done():
                    self.cancelled += 1
                    return
                choice = ({"index": 0, "delta": {"content": "tok "}, "finish_reason": None} if chat else
                          {"index": 0, "text": "tok ", "finish_reason": None})
                chunk: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk" if chat else
                                         "text_completion", "created": created, "model": request["model"],
                                         "choices": [choice]}
                if continuous:
                    chunk["usage"] = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": i + 1,
                                      "total_tokens": PROMPT_TOKENS + i + 1}
                await send({"type": "http.response.body", "body": f"data: {json.dumps(chunk)}\n\n".encode(),
                            "more_body": True})
            if include:
                final = {"id": completion_id, "object": "chat.completion.chunk" if chat else "text_completion",
                         "created": created, "model": request["model"], "choices": [],
                         "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": tokens,
                                   "total_tokens": PROMPT_TOKENS + tokens}}
                await send({"type": "http.response.body", "body": f"data: {json.dumps(final)}\n\n".encode(),
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        finally:
            gone.cancel()

    async def _response(self, request: dict[str, Any], receive: Any, send: Any) -> None:
        """The Responses API as vLLM serves it: a response object, or named events ending in response.completed
        (vLLM's default max_output_tokens is the context left; 16 stands in for it here)."""
        fake = request.get("fake") or {}
        tokens = min(int(fake.get("tokens", 5)), int(request.get("max_output_tokens") or 16))
        self.served += 1
        response_id, item_id = f"resp_fake{self.served}", f"msg_fake{self.served}"
        text = "tok " * tokens

        def response(status: str, output: list[dict[str, Any]], usage: bool) -> dict[str, Any]:
            return {"id": response_id, "object": "response", "created_at": int(time.time()), "model": request["model"],
                    "status": status, "output": output, "parallel_tool_calls": True, "tool_choice": "auto",
                    "tools": [], "max_output_tokens": request.get("max_output_tokens"),
                    "usage": {"input_tokens": PROMPT_TOKENS, "input_tokens_details": {"cached_tokens": 0},
                              "output_tokens": tokens, "output_tokens_details": {"reasoning_tokens": 0},
                              "total_tokens": PROMPT_TOKENS + tokens} if usage else None}

        def message(content: str, status: str) -> dict[str, Any]:
            return {"id": item_id, "type": "message", "role": "assistant", "status": status,
                    "content": [{"type": "output_text", "text": content, "annotations": []}]}

        if not request.get("stream"):
            await _send(send, 200, json.dumps(response("completed", [message(text, "completed")], True)).encode())
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": response("in_progress", [], False)},
            {"type": "response.output_item.added", "output_index": 0, "item": message("", "in_progress")},
            *({"type": "response.output_text.delta", "item_id": item_id, "output_index": 0, "content_index": 0,
               "delta": "tok ", "logprobs": []} for _ in range(tokens)),
            {"type": "response.output_item.done", "output_index": 0, "item": message(text, "completed")},
            {"type": "response.completed", "response": response("completed", [message(text, "completed")], True)},
        ]
        for number, event in enumerate(events):
            event["sequence_number"] = number
            await send({"type": "http.response.body", "more_body": True,
                        "body": f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()})
        await send({"type": "http.response.body", "body": b""})


async def _send(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", action="append", default=[])
    args = parser.parse_args()
    uvicorn.run(FakeOpenAI(set(args.key)), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
