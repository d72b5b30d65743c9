"""OpenAIPolicy against a real `transformers serve` of the tiny model and scripted loopback servers.

Everything goes over real sockets on 127.0.0.1; the openai library is not mocked. The scripted
server answers with canned JSON (an error status, a slow answer, a reply with structured tool calls)
to exercise retries, timeouts and the conversion of structured calls back to raw text.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pipeline.env.parsing import parse_tool_calls
from pipeline.env.tools import tool_schemas
from pipeline.policies.base import Action, Policy
from pipeline.policies.openai_client import (
    OpenAIPolicy,
    OpenAIPolicyError,
    response_to_text,
    to_openai_messages,
)

SERVE_STARTUP_TIMEOUT = 90.0

CONTEXT = [
    {"role": "system", "content": "You read a long input through tools."},
    {"role": "user", "content": "What is the magic number for blue-fox?"},
    {
        "role": "assistant",
        "content": '<think>\nSearch first.\n</think>\n\n<tool_call>\n{"name": "searchEngine", '
        '"arguments": {"keyword": "blue-fox"}}\n</tool_call>',
    },
    {"role": "tool", "content": "[chunk 3] ... the magic number for **blue-fox** is 4711 ..."},
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# A real `transformers serve` process


@pytest.fixture(scope="module")
def serve_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start `transformers serve <tiny model> --device cpu` on a free loopback port; stop it after."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    cli = Path(sys.executable).with_name("transformers")
    command = [str(cli), "serve", str(tiny_model_dir), "--device", "cpu", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
    try:
        _wait_healthy(process, f"http://127.0.0.1:{port}/health", log_path)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if pytest itself is killed (e.g. by a CI timeout) before teardown."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _wait_healthy(process: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + SERVE_STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {process.returncode}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"transformers serve not healthy after {SERVE_STARTUP_TIMEOUT:g}s:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.mark.slow
def test_round_trip_with_tools_against_transformers_serve(serve_url: str, tiny_model_dir: Path) -> None:
    async def run() -> tuple[Action, Action, Action]:
        policy = OpenAIPolicy(serve_url, str(tiny_model_dir), temperature=1.0, max_tokens=24, timeout=60)
        try:
            first = await policy.act(CONTEXT, tool_schemas(), seed=7)
            again = await policy.act(CONTEXT, tool_schemas(), seed=7)
            greedy = OpenAIPolicy(serve_url, str(tiny_model_dir), temperature=0.0, max_tokens=8, timeout=60)
            try:
                short = await greedy.act(CONTEXT, tool_schemas())
            finally:
                await greedy.aclose()
            return first, again, short
        finally:
            await policy.aclose()

    first, again, short = asyncio.run(run())
    assert isinstance(first, Action) and isinstance(short.text, str)
    assert first.text == again.text  # transformers serve seeds torch with the request's seed
    assert short.finish_reason == "length"  # 8 tokens of a random model: cut at max_tokens
    parse_tool_calls(first.text)  # whatever the random model wrote, the environment can parse it


@pytest.mark.slow
def test_server_rejection_is_a_clear_error_without_retries(serve_url: str) -> None:
    policy = OpenAIPolicy(serve_url, "not-the-served-model", max_retries=3, timeout=30)
    started = time.monotonic()
    with pytest.raises(OpenAIPolicyError, match=r"rejected the request.*HTTP 400.*pinned"):
        asyncio.run(policy.act(CONTEXT, tool_schemas()))
    assert time.monotonic() - started < 5.0  # no retries: the SDK does not retry a 400


# ------------------------------------------------------------------------------------------------
# A scripted loopback server


def _completion(message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "scripted",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class ScriptedServer:
    """Answers POST /v1/chat/completions from a script of (status, json body, delay seconds)."""

    def __init__(self, script: list[tuple[int, dict[str, Any], float]], port: int = 0) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                server.requests.append(json.loads(body))
                status, payload, delay = server.script.pop(0) if len(server.script) > 1 else server.script[0]
                time.sleep(delay)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


TOOL_REPLY = _completion(
    {
        "content": "",
        "reasoning_content": "The note has it.",
        "tool_calls": [
            {"id": "x1", "type": "function", "function": {"name": "finish", "arguments": '{"answer": "4711"}'}}
        ],
    },
    finish_reason="tool_calls",
)


def test_retries_a_503_then_returns_the_structured_call_as_raw_text() -> None:
    script = [(503, {"error": "loading"}, 0.0), (200, TOOL_REPLY, 0.0)]
    with ScriptedServer(script) as server:
        policy = OpenAIPolicy(server.url, "scripted", max_retries=2, top_k=20)
        action = asyncio.run(policy.act(CONTEXT, tool_schemas(), seed=3))
    assert len(server.requests) == 2  # the SDK's own retry
    assert action.finish_reason == "tool_calls"
    text = action.text
    assert text == (
        '<think>\nThe note has it.\n</think>\n\n<tool_call>\n{"name": "finish", "arguments": {"answer": "4711"}}'
        "\n</tool_call>"
    )
    parsed = parse_tool_calls(text)
    assert parsed.errors == [] and parsed.calls[0].arguments == {"answer": "4711"}
    sent = server.requests[-1]
    assert sent["top_k"] == 20 and sent["seed"] == 3 and sent["max_completion_tokens"] == 2048
    assert [t["function"]["name"] for t in sent["tools"]][-1] == "finish"
    assert sent["messages"][2]["tool_calls"][0]["id"] == sent["messages"][3]["tool_call_id"]


def test_retries_until_a_server_starts_listening() -> None:
    port = _free_port()  # nothing listens here yet: the first attempts get "connection refused"
    started: list[ScriptedServer] = []

    def start() -> None:
        started.append(ScriptedServer([(200, _completion({"content": "hello"}), 0.0)], port=port).__enter__())

    starter = threading.Timer(0.5, start)
    starter.start()
    try:
        policy = OpenAIPolicy(f"http://127.0.0.1:{port}/v1", "scripted", max_retries=8)
        assert asyncio.run(policy.act(CONTEXT, tool_schemas())).text == "hello"
    finally:
        starter.join()
        for server in started:
            server.__exit__()
    assert len(started[0].requests) == 1


def test_timeouts_raise_a_clear_error_after_the_retries() -> None:
    with ScriptedServer([(200, _completion({"content": "too late"}), 1.5)]) as server:
        policy = OpenAIPolicy(server.url, "scripted", timeout=0.3, max_retries=2)
        with pytest.raises(OpenAIPolicyError, match=r"failed after 3 attempt\(s\).*0.3s timeout"):
            asyncio.run(policy.act(CONTEXT, tool_schemas()))
        assert len(server.requests) == 3


def test_non_retryable_status_is_not_retried() -> None:
    with ScriptedServer([(401, {"error": {"message": "bad key"}}, 0.0)]) as server:
        policy = OpenAIPolicy(server.url, "scripted", max_retries=4)
        with pytest.raises(OpenAIPolicyError, match=r"HTTP 401.*bad key"):
            asyncio.run(policy.act(CONTEXT, tool_schemas()))
    assert len(server.requests) == 1


def test_a_reply_cut_at_max_tokens_comes_back_with_finish_reason_length() -> None:
    cut = _completion({"content": "<think>\nFirst I will search for the"}, finish_reason="length")
    with ScriptedServer([(200, cut, 0.0)]) as server:
        action = asyncio.run(OpenAIPolicy(server.url, "scripted", max_tokens=12).act(CONTEXT, tool_schemas()))
    assert action == Action("<think>\nFirst I will search for the", finish_reason="length")
    assert server.requests[0]["max_completion_tokens"] == 12


def test_bad_model_output_is_returned_as_text() -> None:
    broken = _completion(
        {
            "content": "I will search.",
            "tool_calls": [{"id": "a", "type": "function", "function": {"name": "searchEngine", "arguments": "{oops"}}],
        }
    )
    with ScriptedServer([(200, broken, 0.0)]) as server:
        text = asyncio.run(OpenAIPolicy(server.url, "scripted").act(CONTEXT, tool_schemas())).text
    assert text == 'I will search.\n<tool_call>\n{"name": "searchEngine", "arguments": {oops}\n</tool_call>'
    assert parse_tool_calls(text).errors  # the environment reports it; the policy does not raise


# ------------------------------------------------------------------------------------------------
# Message conversion


def test_to_openai_messages_pairs_calls_and_results() -> None:
    two_calls = (
        '<think>\nRead both.\n</think>\n\n<tool_call>\n{"name": "readChunk", "arguments": {"chunk_id": 1}}'
        '\n</tool_call>\n<tool_call>\n{"name": "readChunk", "arguments": {"chunk_id": 2}}\n</tool_call>'
    )
    messages = [
        *CONTEXT[:2],
        {"role": "assistant", "content": two_calls},
        {"role": "tool", "content": "chunk one"},
        {"role": "tool", "content": "chunk two"},
        {"role": "assistant", "content": "<tool_call>{not json}</tool_call>"},
        {"role": "tool", "content": "error: tool call 1: invalid JSON"},
    ]
    converted = to_openai_messages(messages)
    assistant = converted[2]
    assert assistant["content"] == "<think>\nRead both.\n</think>"
    assert [c["function"]["arguments"] for c in assistant["tool_calls"]] == ['{"chunk_id": 1}', '{"chunk_id": 2}']
    ids = [c["id"] for c in assistant["tool_calls"]]
    assert [m["tool_call_id"] for m in converted[3:5]] == ids and len(set(ids)) == 2
    assert converted[5] == {"role": "assistant", "content": "<tool_call>{not json}</tool_call>"}
    assert converted[6] == {
        "role": "user",
        "content": "<tool_response>\nerror: tool call 1: invalid JSON\n</tool_response>",
    }


def test_response_without_structured_calls_passes_content_through() -> None:
    from openai.types.chat import ChatCompletionMessage

    raw = '<tool_call>\n{"name": "checkBudget", "arguments": {}}\n</tool_call>'
    assert response_to_text(ChatCompletionMessage(role="assistant", content=raw)) == raw
    assert response_to_text(ChatCompletionMessage(role="assistant", content=None)) == ""


def test_policy_satisfies_the_protocol() -> None:
    assert isinstance(OpenAIPolicy("http://127.0.0.1:9/v1", "m"), Policy)
