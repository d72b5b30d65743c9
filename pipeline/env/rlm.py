"""The RLM environment (recursive language model, SPEC 2): the input lives in a Python REPL.

The model never sees the input. It writes ```python blocks; each runs in a sandboxed REPL process
(`pipeline/env/sandbox.py`) where the input is the string `context`, the state persists across turns, and
`llm_query(prompt)` / `llm_query_batched(prompts)` ask a sub-model (any policy, built by the caller and
passed in as `sub_policy`, run with bounded parallelism). The model answers by filling the dict `answer`
and setting `answer["ready"] = True`; the episode ends after that block.

`step(raw_text)` appends the assistant message, runs its blocks in order, and appends one tool
message per block with the block's output (cut to `max_output_chars`, with a note saying so). Each
block is one action in `turn.tool_calls`: `python` {code}, or `finish` {code, answer} for the block
that submitted the answer (so curation's "ended through finish" holds as in Pensieve). What counts
as what:

- **format error** (the model's output is not a well-formed action): no complete ```python block in
  the message; a block that does not parse (SyntaxError; later blocks of the message do not run).
  After `max_format_errors` consecutive turns with one, the episode ends as `malformed`.
- **runtime observation** (a well-formed action that failed): exceptions, timeouts, the sandbox
  refusing something, memory errors, a REPL that died and restarts. The model sees the traceback or
  note; the turn is not a format error.

Budgets as in Pensieve: `max_rounds` (`max_rounds`), rendered context + `max_output_tokens` over
`max_context_tokens` (`over_budget`), and a time budget, the REPL and sub-model seconds of the episode
over `max_episode_seconds` (`over_budget`). Sub-calls (prompt, reply, token counts, seconds) and
per-block figures are recorded in the trajectory's `metadata["rlm"]`. `step` never raises.
"""

from __future__ import annotations

import re
import time
import weakref
import zlib
from typing import Any, Literal

from pydantic import Field

from pipeline.data.trajectory import MessageRecord, Trajectory
from pipeline.env.base import BaseEnv, BaseEnvConfig, StepResult
from pipeline.env.sandbox import BlockOutcome, Sandbox, SandboxConfig
from pipeline.env.sub_model import SubCallResult, SubModelRunner
from pipeline.tasks.schema import Task

SYSTEM_PROMPT = """You answer a question about a long input that is NOT in your context. The input is stored in a \
Python REPL as the string variable `context`. Work by writing Python code in ```python blocks: the REPL runs the \
blocks of your message in order and shows you what they print (long output is cut, so print lengths, slices and \
summaries, not the whole input). Variables persist between your messages.

In the REPL:
- `context`: the input text.
- `llm_query(prompt)` asks a sub-model one question and returns its reply as a string; `llm_query_batched(prompts)` \
asks a list of prompts at once (much faster than a loop) and returns the replies in order. The sub-model does not \
see `context`: put the text it needs into each prompt, e.g. one chunk per prompt.
- `answer`: a dict. Put your final answer in `answer["content"]` and set `answer["ready"] = True` to submit it; the \
episode ends after that block.

The REPL is sandboxed: standard library only, no network, no subprocesses or threads, files only in the current \
directory, and each block has a time limit. Every message must contain at least one ```python block."""

RLM_MARKER = "stored in a Python REPL as the string variable `context`"  # lets policies recognise an RLM episode
NO_SUB_MODEL = "no sub-model is configured for this episode"
_BLOCK = re.compile(r"```(?:python3?|py|repl)[ \t]*\n(.*?)```", re.DOTALL)
_OPEN_FENCE = re.compile(r"```(?:python3?|py|repl)[ \t]*\n")


class RLMConfig(BaseEnvConfig):
    """Budgets, output and sub-model settings; recipes set these under `env:` with `kind: rlm`."""

    kind: Literal["rlm"] = "rlm"
    max_rounds: int = Field(default=50, description="Assistant turns before the episode ends as max_rounds.")
    max_episode_seconds: float = Field(default=1800.0, description="REPL + sub-model seconds before 'over_budget'.")
    max_output_chars: int = Field(default=4000, ge=200, description="REPL output shown per block; the rest is cut.")
    max_blocks_per_turn: int = Field(default=8, ge=1, description="Blocks run per message; later ones are skipped.")
    max_answer_chars: int = Field(default=20_000, description="Longest answer kept.")
    sub_model: Any = Field(
        default=None,
        description="Policy behind llm_query (same fields as `policy:`; the recipe validates it, the caller builds it "
        "and passes it to the env as `sub_policy`); None: llm_query is unavailable.",
    )
    max_depth: int = Field(default=1, ge=1, le=1, description="llm_query recursion depth (1: a plain model call).")
    max_parallel_sub_calls: int = Field(default=8, ge=1, description="Sub-calls in flight at once per batch.")
    max_sub_calls: int = Field(default=256, ge=0, description="Sub-calls per episode; later ones return an error.")
    max_batch: int = Field(default=256, ge=1, description="Prompts in one llm_query_batched call.")
    max_sub_prompt_chars: int = Field(default=200_000, description="Longest prompt one sub-call may send.")
    max_sub_response_chars: int = Field(default=50_000, description="Longest reply handed back to the REPL.")
    sub_call_timeout_seconds: float = Field(default=600.0, gt=0)
    record_prompt_chars: int = Field(default=4000, ge=0, description="Prompt characters kept in the trajectory.")
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)


# ----------------------------------------------------------------------------- the environment


class RLMEnv(BaseEnv):
    """One episode over one task input. Build a new env per episode; it owns one REPL process."""

    name = "rlm"

    def __init__(
        self,
        question: str,
        input_text: str,
        tokenizer: Any,
        config: RLMConfig | None = None,
        choices: list[str] | None = None,
        sub_model: SubModelRunner | Any | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(tokenizer, config or RLMConfig())
        self.question, self.input_text, self.choices = question, input_text, choices
        if sub_model is None and self.config.sub_model is not None:
            raise ValueError(
                "env.sub_model is set but no sub-model was passed to the environment: build it with "
                "pipeline.policies.factory.sub_policy_for(config) and pass it as sub_policy"
            )
        self._own_runner = sub_model is not None and not isinstance(sub_model, SubModelRunner)
        if self._own_runner:
            sub_model = SubModelRunner(sub_model)  # a policy object given directly: its loop lives as long as we do
        self.sub_model: SubModelRunner | None = sub_model
        self.seed = seed
        self.seconds = 0.0  # REPL + sub-model time: the time budget
        self.sub_calls: list[dict[str, Any]] = []
        self.blocks: list[dict[str, Any]] = []
        self._input_tokens: int | None = None
        self._turn_index = 0
        self._block_index = 0
        cfg = self.config
        self.sandbox = Sandbox(
            input_text,
            cfg.sandbox,
            max_output_chars=cfg.max_output_chars,
            max_answer_chars=cfg.max_answer_chars,
            max_prompt_chars=cfg.max_sub_prompt_chars,
            max_batch=cfg.max_batch,
        )
        try:
            self.sandbox_layers = self.sandbox.start()  # SandboxError here is an infrastructure failure
        except Exception:
            _release(self.sandbox, self.sub_model if self._own_runner else None)
            raise
        self._finalizer = weakref.finalize(self, _release, self.sandbox, self.sub_model if self._own_runner else None)
        self._add(MessageRecord(role="system", content=SYSTEM_PROMPT, msg_id=0))
        self._add(MessageRecord(role="user", content=self._task_text(), msg_id=1))
        self.context_tokens = self.count_tokens()
        self._check_budgets()

    @classmethod
    def from_task(cls, task: Task, tokenizer: Any, config: RLMConfig, sub_policy: Any = None) -> RLMEnv:
        """The env for `task`; `sub_policy` (a policy or a shared SubModelRunner) answers llm_query."""
        seed = zlib.crc32(task.id.encode())
        return cls(task.question, task.load_input(), tokenizer, config, task.choices, sub_policy, seed)._for_task(task)

    # -- observation -------------------------------------------------------------------------
    @property
    def input_tokens(self) -> int:
        if self._input_tokens is None:
            self._input_tokens = len(self.tokenizer(self.input_text, add_special_tokens=False)["input_ids"])
        return self._input_tokens

    # -- the step ----------------------------------------------------------------------------
    def _turn(self, raw_text: Any, context_before: list[int], tokens_before: int) -> StepResult:
        """Apply one assistant message: run its code blocks (BaseEnv.step counted the round)."""
        text = raw_text if isinstance(raw_text, str) else str(raw_text)
        assistant_id = self._new_msg_id()
        assistant_row = self._add(MessageRecord(role="assistant", content=text, msg_id=assistant_id))
        blocks, problem = extract_code_blocks(raw_text)
        calls: list[dict[str, Any]] = [{"name": "python", "arguments": {"code": code}} for code in blocks]
        results, errors = [], 0
        if problem:
            errors += 1
            results.append(self._tool_message(assistant_id, f"Error: {problem}"))
        for number, code in enumerate(blocks[: self.config.max_blocks_per_turn], start=1):
            outcome = self._run_block(code, assistant_id, number)
            body = outcome.output.rstrip("\n") or "(no output)"
            if outcome.syntax_error:
                errors += 1
                if number < len(blocks):
                    body += "\n(The block does not parse, so the later blocks of this message were not run.)"
            answer = outcome.answer or {}
            if answer.get("ready") and not outcome.syntax_error:
                self.answer = answer.get("content", "")
                self._end("finished")
                calls[number - 1] = {"name": "finish", "arguments": {"code": code, "answer": self.answer}}
                body += f"\nAnswer submitted: {self.answer[:200]!r}{' ...' if len(self.answer) > 200 else ''}"
            elif len(blocks) > self.config.max_blocks_per_turn and number == self.config.max_blocks_per_turn:
                body += f"\n(Only the first {number} blocks of a message run; {len(blocks) - number} were skipped.)"
            results.append(self._tool_message(assistant_id, body, number))
            if self.done or outcome.syntax_error:
                break
        self._count_errors(errors)
        self.context_tokens = self.count_tokens()
        self._check_budgets()
        result = self._record_turn(context_before, tokens_before, assistant_row, calls, results, False, errors)
        self._turn_index += 1
        if self.done:
            self.close()
        return result

    def _run_block(self, code: str, assistant_id: int, number: int) -> BlockOutcome:
        self._block_index = number
        try:
            outcome = self.sandbox.run(code, f"<block {assistant_id}.{number}>", self._handle_llm)
        except Exception as exc:  # the sandbox promises not to raise; a bug there must not end the run either
            outcome = BlockOutcome(f"Error: the REPL failed: {type(exc).__name__}: {exc}", error="SandboxError")
        self.seconds += outcome.seconds
        self.blocks.append(
            {
                "turn": self._turn_index,
                "block": number,
                "seconds": round(outcome.seconds, 4),
                "cpu_seconds": outcome.cpu_seconds,
                "error": outcome.error,
                "syntax_error": outcome.syntax_error,
                "timed_out": outcome.timed_out,
                "restarted": outcome.restarted,
                "output_chars": outcome.output_chars,
            }
        )
        return outcome

    def _handle_llm(self, prompts: list[str]) -> list[str]:
        """Answer one llm_query / llm_query_batched request from the REPL; never raises."""
        cfg = self.config
        if self.sub_model is None:
            return [f"[llm_query error: {NO_SUB_MODEL}]"] * len(prompts)
        allowed = max(0, min(len(prompts), cfg.max_sub_calls - len(self.sub_calls)))
        started = time.monotonic()
        try:
            seed = self.seed + len(self.sub_calls)
            results = self.sub_model.run_batch(
                prompts[:allowed], cfg.max_parallel_sub_calls, cfg.sub_call_timeout_seconds, seed
            )
        except Exception as exc:
            results = [SubCallResult(None, f"{type(exc).__name__}: {exc}", 0.0)] * allowed
        self.seconds += time.monotonic() - started
        replies = []
        for index, (prompt, result) in enumerate(zip(prompts, results, strict=False)):
            reply = strip_thinking(result.text)[: cfg.max_sub_response_chars] if result.text is not None else None
            self.sub_calls.append(
                {
                    "turn": self._turn_index,
                    "block": self._block_index,
                    "index": index,
                    "batch_size": len(prompts),
                    "prompt": prompt[: cfg.record_prompt_chars],
                    "prompt_chars": len(prompt),
                    "prompt_tokens": self._tokens(prompt),
                    "response": result.text,
                    "response_tokens": self._tokens(result.text or ""),
                    "seconds": round(result.seconds, 4),
                    "error": result.error,
                }
            )
            replies.append(reply if reply is not None else f"[llm_query error: {result.error}]")
        limit = f"[llm_query error: the episode's limit of {cfg.max_sub_calls} sub-calls is used up]"
        return replies + [limit] * (len(prompts) - allowed)

    # -- helpers -----------------------------------------------------------------------------
    def _task_text(self) -> str:
        parts = [f"Question: {self.question}"]
        if self.choices:
            parts.append("Options:\n" + "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(self.choices)))
            parts.append("Answer with the letter of the correct option.")
        lines = self.input_text.count("\n") + 1
        parts.append(
            f"The input is in the REPL variable `context`: a string of {len(self.input_text)} characters "
            f"({lines} lines)."
        )
        if self.sub_model is None:
            parts.append(f"llm_query and llm_query_batched are not available: {NO_SUB_MODEL}.")
        else:
            parts.append(
                f"llm_query_batched runs up to {self.config.max_parallel_sub_calls} prompts at once; "
                f"at most {self.config.max_sub_calls} sub-calls per episode."
            )
        return "\n\n".join(parts)

    def _tool_message(self, caller: int, body: str, block: int | None = None) -> int:
        msg_id = self._new_msg_id()
        header = f"[REPL output of block {block}]" if block is not None else "[REPL]"
        content = f"{header}\n{body}"
        return self._add(MessageRecord(role="tool", content=content, msg_id=msg_id, tool_name="python", call_id=caller))

    def _over_budget(self) -> bool:
        """The context budget, or the time budget: REPL and sub-model seconds of the episode."""
        return self._over_context() or self.seconds > self.config.max_episode_seconds

    def close(self) -> None:
        """Stop the REPL process and remove its scratch directory (done automatically when the episode ends)."""
        self._finalizer()

    # -- records -----------------------------------------------------------------------------
    def recorded_input_tokens(self) -> int | None:
        return self._input_tokens

    def episode_metadata(self) -> dict[str, Any]:
        """REPL and sub-call figures, in metadata["rlm"]."""
        rlm = {
            "sub_calls": self.sub_calls,
            "sub_call_count": len(self.sub_calls),
            "sub_call_prompt_tokens": sum(c["prompt_tokens"] for c in self.sub_calls),
            "sub_call_response_tokens": sum(c["response_tokens"] for c in self.sub_calls),
            "sub_call_errors": sum(c["error"] is not None for c in self.sub_calls),
            "blocks": self.blocks,
            "repl_restarts": max(0, self.sandbox.starts - 1),
            "seconds": round(self.seconds, 4),
            "sandbox": {k: v for k, v in self.sandbox_layers.items() if k not in ("pid", "readable")},
        }
        return {"rlm": rlm}

    @classmethod
    def eval_figures(cls, trajectories: list[Trajectory]) -> dict[str, Any]:
        """REPL and sub-model statistics of RLM episodes (metadata["rlm"])."""
        stats = [t.metadata.get("rlm", {}) for t in trajectories]
        blocks = [b for s in stats for b in s.get("blocks", [])]
        n, n_blocks = len(trajectories), len(blocks)
        sub_calls = sum(s.get("sub_call_count", 0) for s in stats)
        repl = {
            "blocks": n_blocks,
            "blocks_per_episode": n_blocks / n,
            "block_error_rate": sum(b.get("error") is not None for b in blocks) / n_blocks if n_blocks else 0.0,
            "syntax_errors": sum(bool(b.get("syntax_error")) for b in blocks),
            "timeouts": sum(bool(b.get("timed_out")) for b in blocks),
            "repl_restarts": sum(s.get("repl_restarts", 0) for s in stats),
            "sub_calls": sub_calls,
            "sub_calls_per_episode": sub_calls / n,
            "sub_call_errors": sum(s.get("sub_call_errors", 0) for s in stats),
            "sub_call_prompt_tokens": sum(s.get("sub_call_prompt_tokens", 0) for s in stats),
            "sub_call_response_tokens": sum(s.get("sub_call_response_tokens", 0) for s in stats),
            "repl_seconds": round(sum(s.get("seconds", 0.0) for s in stats), 3),
        }
        return {"repl": repl}


def _release(sandbox: Sandbox, runner: SubModelRunner | None) -> None:
    sandbox.close()
    if runner is not None:
        runner.close(close_policy=False)


def strip_thinking(text: str) -> str:
    """The text after the reasoning: after the last `</think>`, and without an unclosed `<think>...`."""
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    return text.split("<think>", 1)[0].strip()


def extract_code_blocks(raw_text: Any) -> tuple[list[str], str | None]:
    """The ```python blocks outside <think>, and the format problem when there is none."""
    if not isinstance(raw_text, str):
        return [], f"the assistant output is not text (got {type(raw_text).__name__})"
    text = strip_thinking(raw_text)
    blocks = [m.group(1) for m in _BLOCK.finditer(text)]
    if blocks:
        return blocks, None
    if _OPEN_FENCE.search(text):
        return [], "a ```python block was opened but never closed with ``` (was the message cut off?)"
    return [], (
        "no ```python code block found. Write Python code in a ```python ... ``` block (at least one per "
        'message); to submit, set answer["content"] = ... and answer["ready"] = True in a block.'
    )
