"""An OpenAI-compatible chat server as a policy: vLLM `serve`, `transformers serve`, or any API (SPEC 4).

Our messages hold the assistant's raw text; the API wants content plus structured `tool_calls`, and
tool results that answer them by id. `to_openai_messages` converts one way, `response_to_text` the
other, so the environment only ever sees raw Qwen3/Hermes text.

Failures of the *server* (connection refused, timeout, 408/409/429, 5xx) are retried by the OpenAI SDK
itself (`max_retries`: exponential backoff with jitter, honouring Retry-After), the same mechanism the
judge uses; what is left after the retries is raised as `OpenAIPolicyError`. A bad *model output* is
never an error here: it is returned as text and the environment turns it into a format error the
model sees. The reply's `finish_reason` comes back with the text (`Action`): `length` marks a turn
cut at `max_tokens`, which the episode records as `truncated`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import Any

import openai

from pipeline.env.parsing import format_assistant_text, parse_tool_calls
from pipeline.policies.base import Action, Message

_TOOL_CALL_BLOCK = re.compile(r"\s*<tool_call>.*?</tool_call>", re.DOTALL)


class OpenAIPolicyError(RuntimeError):
    """The server could not produce a completion (after retries, or a non-retryable HTTP error)."""


class OpenAIPolicy:
    """Chat completions with tools against an OpenAI-compatible endpoint.

    `top_k` is not part of the OpenAI API; it goes in the request body for vLLM (leave it `None` for
    servers that reject unknown fields, such as `transformers serve`). `extra_body` is merged into
    every request (e.g. `{"chat_template_kwargs": {"enable_thinking": False}}`).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "EMPTY",
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        max_tokens: int = 2048,
        timeout: float = 300.0,
        max_retries: int = 5,
        extra_body: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"OpenAIPolicy: max_retries must be >= 0, got {max_retries}")
        self.name = name or f"openai:{model}"
        self.base_url = base_url
        self.model = model
        self.api_key = api_key
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.max_retries = max_retries
        self.extra_body = dict(extra_body or {})
        self._client: openai.AsyncOpenAI | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def _get_client(self) -> openai.AsyncOpenAI:
        # An httpx connection pool belongs to one event loop; a new `asyncio.run` gets a new client.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=self.api_key, timeout=self.timeout, max_retries=self.max_retries
            )
            self._client_loop = loop
        return self._client

    async def act(self, messages: list[Message], tools: list[dict[str, Any]], seed: int | None = None) -> Action:
        """Send the context and tools; the reply as raw assistant text, with the server's finish_reason."""
        request: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai_messages(messages),
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_completion_tokens": self.max_tokens,
        }
        if tools:
            request["tools"] = tools
        if seed is not None:
            request["seed"] = seed
        extra_body = dict(self.extra_body)
        if self.top_k is not None:
            extra_body["top_k"] = self.top_k
        if extra_body:
            request["extra_body"] = extra_body
        response = await self._create(request)
        if not response.choices:
            raise OpenAIPolicyError(f"{self.base_url}: no choices in the answer for model {self.model!r}")
        choice = response.choices[0]
        return Action(response_to_text(choice.message), finish_reason=choice.finish_reason)

    async def _create(self, request: dict[str, Any]) -> Any:
        """One completion; the SDK retries what is worth retrying, the rest becomes one clear error."""
        attempts = f"{self.max_retries + 1} attempt(s)"
        try:
            return await self._get_client().chat.completions.create(**request)
        except openai.APIStatusError as exc:
            problem = f"HTTP {exc.status_code}: {_clip(_error_body(exc))}"
            retried = exc.status_code in (408, 409, 429) or exc.status_code >= 500
            raise OpenAIPolicyError(
                f"{self.base_url}: request for model {self.model!r} failed after {attempts}; last error: {problem}"
                if retried
                else f"{self.base_url} rejected the request for model {self.model!r} ({problem})"
            ) from exc
        except openai.APITimeoutError as exc:  # before APIConnectionError, its base class
            raise OpenAIPolicyError(
                f"{self.base_url}: request for model {self.model!r} failed after {attempts}; "
                f"last error: no answer within the {self.timeout:g}s timeout"
            ) from exc
        except openai.APIConnectionError as exc:
            raise OpenAIPolicyError(
                f"{self.base_url}: request for model {self.model!r} failed after {attempts}; "
                f"last error: connection failed ({_clip(str(exc.__cause__ or exc))}); is the server up?"
            ) from exc

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(RuntimeError):  # its event loop is gone: nothing left to release
                await client.close()


def to_openai_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Our chat (assistant = raw text) -> OpenAI chat (content + structured tool_calls + tool_call_id).

    An assistant message whose calls all parse is sent as its text without the `<tool_call>` blocks
    (the `<think>` block stays in content, where Qwen3-style templates look for it) plus `tool_calls`
    with ids `call_<message index>_<call index>`; the tool messages after it answer those ids in order.
    An assistant message with a malformed call is sent verbatim, and a tool message with no call to
    answer (the environment's error reply) is sent as a user message in Hermes `<tool_response>`
    tags: strict APIs accept it and Qwen3's template renders it exactly as a tool message.
    """
    converted: list[dict[str, Any]] = []
    pending_ids: list[str] = []
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content") or ""
        if role == "assistant":
            parsed = parse_tool_calls(content)
            pending_ids = []
            if parsed.calls and not parsed.errors:
                pending_ids = [f"call_{index}_{k}" for k in range(len(parsed.calls))]
                text = _TOOL_CALL_BLOCK.sub("", content).strip()
                converted.append(
                    {
                        "role": "assistant",
                        "content": text or None,
                        "tool_calls": [
                            {
                                "id": call_id,
                                "type": "function",
                                "function": {
                                    "name": call.name,
                                    "arguments": json.dumps(call.arguments, ensure_ascii=False),
                                },
                            }
                            for call_id, call in zip(pending_ids, parsed.calls, strict=True)
                        ],
                    }
                )
            else:
                converted.append({"role": "assistant", "content": content})
        elif role == "tool":
            if pending_ids:
                converted.append({"role": "tool", "tool_call_id": pending_ids.pop(0), "content": content})
            else:
                converted.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            pending_ids = []
            converted.append({"role": role, "content": content})
    return converted


def response_to_text(message: Any) -> str:
    """An OpenAI chat message -> raw assistant text: `<think>` reasoning, content, `<tool_call>` blocks.

    Servers with a tool parser return structured calls; they are written back in Qwen3's format.
    Servers without one leave the calls inside content, which is passed through unchanged. Arguments
    that are not a JSON object are kept verbatim so the environment reports them to the model.
    """
    content = message.content or ""
    extra = getattr(message, "model_extra", None) or {}
    reasoning = extra.get("reasoning_content") or extra.get("reasoning")
    think = ""
    if isinstance(reasoning, str) and reasoning.strip() and "<think>" not in content:
        # Exactly as Qwen3's template renders a reasoning assistant turn, so re-rendering is a no-op.
        think, content = f"<think>\n{reasoning.strip()}\n</think>\n\n", content.lstrip()
    calls = []
    for tool_call in message.tool_calls or []:
        function = getattr(tool_call, "function", None)
        if function is None:  # a non-function tool call type: nothing we can express
            continue
        arguments: Any = function.arguments
        if isinstance(arguments, str):
            try:
                decoded = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                decoded = None
            if isinstance(decoded, dict):
                arguments = decoded
        calls.append({"name": function.name, "arguments": arguments})
    return think + (format_assistant_text(content, calls) if calls else content)


def _error_body(exc: openai.APIStatusError) -> str:
    body = exc.body if exc.body is not None else getattr(exc.response, "text", "")
    return body if isinstance(body, str) else json.dumps(body)


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."
