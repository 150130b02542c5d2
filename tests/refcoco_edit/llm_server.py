"""A scripted OpenAI-compatible chat server on loopback, for exercising the real `openai` client.

Each POST to /v1/chat/completions takes the next behaviour from `script` (or `default` when the
script is used up) and records the request body. A behaviour is a function of the request body
returning (status, headers, body bytes); `delay` behaviours sleep first, so a client with a short
timeout gives up on them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = tuple[int, dict[str, str], bytes]
Behaviour = Callable[[dict], Reply]


def completion(content: str | None, model: str = "test-model", choices: bool = True) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 1700000000, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]
        if choices else [],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }
    return json.dumps(body).encode()


def content(text: str) -> Behaviour:
    """200 with this message content."""
    return lambda req: (200, {}, completion(text, req.get("model", "test-model")))


def answer(obj: Any) -> Behaviour:
    """200 whose message content is `obj` as JSON."""
    return content(json.dumps(obj))


def dynamic(make: Callable[[dict, dict], Any]) -> Behaviour:
    """200 whose content is make(request body, the user message's JSON) as JSON."""
    def reply(req: dict) -> Reply:
        user = json.loads(req["messages"][-1]["content"])
        return 200, {}, completion(json.dumps(make(req, user)), req.get("model", "test-model"))
    return reply


def status(code: int, headers: dict[str, str] | None = None, message: str = "scripted error") -> Behaviour:
    body = json.dumps({"error": {"message": message, "type": "test", "code": code}}).encode()
    return lambda req: (code, dict(headers or {}), body)


def empty_choices() -> Behaviour:
    return lambda req: (200, {}, completion(None, choices=False))


def delay(seconds: float, then: Behaviour) -> Behaviour:
    def reply(req: dict) -> Reply:
        time.sleep(seconds)
        return then(req)
    return reply


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("content-length", 0))
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        srv = self.server
        with srv.lock:
            srv.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
            behaviour = srv.script.pop(0) if srv.script else srv.default
        if self.path.rstrip("/") != "/v1/chat/completions":
            code, headers, data = status(404, message="no such route")(body)
        else:
            code, headers, data = behaviour(body)
        try:
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass


class ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.script: list[Behaviour] = []
        self.default: Behaviour = status(500, message="script used up")
        self.requests: list[dict] = []
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def start(self) -> ScriptedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:  # quiet on client disconnects
        pass
