"""The Pensieve environment (SPEC 2): a context of messages with ids, a notebook, an index, and budgets.

The model acts only through tool calls. `step(raw_text)` appends the assistant message, runs each
parsed call, appends one tool message per call (or one error message), re-renders the task message
when the notebook list changed, and then checks the budgets. `step` never raises on model output:
every problem becomes an error tool message and a format error.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np
from pydantic import Field

from pipeline.data.trajectory import MessageRecord
from pipeline.env import prompts
from pipeline.env.base import BaseEnv, BaseEnvConfig, StepResult
from pipeline.env.dense import DenseIndex, DenseUnavailable, estimated_passages, reciprocal_rank_fusion
from pipeline.env.index import ChunkIndex, SearchHit, token_offsets
from pipeline.env.notebook import Notebook
from pipeline.env.parsing import ToolCall, parse_tool_calls
from pipeline.env.tools import tool_schemas, validate_arguments
from pipeline.tasks.schema import Task


class EnvConfig(BaseEnvConfig):
    """Pensieve's budgets (BaseEnvConfig) and tool settings; recipes set these under `environment:`."""

    kind: Literal["pensieve"] = "pensieve"
    default_chunk_size: int = Field(default=4000, description="Chunk size analyzeText reports chunk counts at.")
    search_top_k: int = Field(default=20, description="Most chunk ids searchEngine returns.")
    compact_prompts: bool = Field(
        default=False,
        description="Short system prompt and tool schemas (types only): about half the tokens of every row, for "
        "small students on CPU. Train and evaluate with the same setting.",
    )
    search_mode: Literal["bm25", "dense", "hybrid"] = Field(
        default="bm25",
        description="searchEngine ranking: BM25 keywords (instant), dense passage embeddings (the [dense] extra), "
        "or hybrid: reciprocal-rank fusion of both.",
    )
    dense_model: str | None = Field(
        default=None, description="sentence-transformers folder or hub id; None: the packaged all-MiniLM-L6-v2."
    )
    dense_passage_words: int = Field(
        default=30, ge=8, description="Words per embedded passage inside a chunk (MiniLM averages: short is sharp)."
    )
    embedding_cache_dir: str | None = Field(
        default="runs/embeddings", description="Passage embeddings cached by document hash; None: no disk cache."
    )
    dense_notice_passages: int = Field(
        default=2000, description="buildIndex warns that the first dense search is slow above this many passages."
    )
    compact_stubs: bool = Field(
        default=False,
        description="Merge runs of adjacent stubs into one range stub (ids stay answerable, reading progress kept).",
    )
    rrf_k: int = Field(default=60, ge=1, description="Hybrid: the k of reciprocal-rank fusion, 1 / (k + rank).")


class PensieveEnv(BaseEnv):
    """One episode over one task input. Build a new env per episode."""

    name = "pensieve"

    def __init__(
        self,
        question: str,
        input_text: str,
        tokenizer: Any,
        config: EnvConfig | None = None,
        choices: list[str] | None = None,
    ) -> None:
        super().__init__(tokenizer, config or EnvConfig())
        self.question, self.input_text, self.choices = question, input_text, choices
        self.tools = tool_schemas(compact=self.config.compact_prompts)
        self.notebook = Notebook()
        self.index: ChunkIndex | None = None
        self.dense: DenseIndex | None = None  # embedded on the first dense or hybrid search
        self.scan_cursor = 0
        self._offsets: np.ndarray | None = None
        self._header_extra: dict[int, str] = {}  # msg id -> header detail kept in its stub (reading progress)
        self._range_members: dict[int, list[MessageRecord]] = {}  # range stub row -> the stubs it merged
        self._add(MessageRecord(role="system", content=prompts.system_prompt(self.config), msg_id=0))
        self._add(MessageRecord(role="user", content=self._task_text(), msg_id=1))
        self.context_tokens = self.count_tokens()
        self._check_budgets()

    @classmethod
    def from_task(cls, task: Task, tokenizer: Any, config: EnvConfig) -> PensieveEnv:
        return cls(task.question, task.load_input(), tokenizer, config, task.choices)._for_task(task)

    # -- observation -------------------------------------------------------------------------
    @property
    def input_tokens(self) -> int:
        return len(self.offsets) - 1

    @property
    def offsets(self) -> np.ndarray:
        if self._offsets is None:
            self._offsets = token_offsets(self.input_text, self.tokenizer)
        return self._offsets

    # -- the step ----------------------------------------------------------------------------
    def _turn(self, raw_text: Any, context_before: list[int], tokens_before: int) -> StepResult:
        """Apply one assistant message (BaseEnv.step counted the round)."""
        parsed = parse_tool_calls(raw_text)
        assistant_id = self._new_msg_id()
        assistant_row = self._add(MessageRecord(role="assistant", content=str(raw_text), msg_id=assistant_id))
        listing_before = self.notebook.listing()
        results, errors, edited = [], 0, False
        if parsed.errors:
            errors += len(parsed.errors)
            results.append(self._tool_message("error", assistant_id, "Error: " + "\n".join(parsed.errors)))
        for call in parsed.calls:
            if self.done:
                break
            text, error, call_edited, extra = self._run(call, assistant_id)
            errors += int(error)
            edited |= call_edited
            results.append(self._tool_message(call.name, assistant_id, text, extra=extra))
        if self.notebook.listing() != listing_before:
            self._replace(1, MessageRecord(role="user", content=self._task_text(), msg_id=1))
            edited = True
        self._count_errors(errors)
        self.context_tokens = self.count_tokens()
        self._check_budgets()
        calls = [c.to_dict() for c in parsed.calls]
        return self._record_turn(context_before, tokens_before, assistant_row, calls, results, edited, errors)

    def _run(self, call: ToolCall, caller: int) -> tuple[str, bool, bool, str]:
        """Run one call: (tool message text, was it an error, did it edit earlier context, header extra)."""
        args, problem = validate_arguments(call.name, call.arguments)
        if problem:
            return f"Error: {problem}", True, False, ""
        handler = getattr(self, f"_tool_{call.name}")
        try:
            result = handler(args, caller)
        except ToolError as exc:
            return f"Error: {call.name}: {exc}", True, False, ""
        text, extra = result if isinstance(result, tuple) else (result, "")
        return text, False, call.name == "deleteContext", extra

    # -- tools (each returns the tool message text, or (text, header extra)) ----------------------
    def _tool_analyzeText(self, args: Any, caller: int) -> str:
        n, size = self.input_tokens, self.config.default_chunk_size
        return f"The input has {n} tokens ({len(self.input_text)} characters): {-(-n // size)} chunks of {size} tokens."

    def _tool_buildIndex(self, args: Any, caller: int) -> str:
        if args.overlap >= args.chunk_size:
            raise ToolError(f"overlap ({args.overlap}) must be smaller than chunk_size ({args.chunk_size})")
        self.index = ChunkIndex.build(self.input_text, self.offsets, args.chunk_size, args.overlap)
        self.dense, self.scan_cursor = None, 0
        n = len(self.index)
        text = f"Index built: {n} chunks of up to {args.chunk_size} tokens (overlap {args.overlap}), ids 0-{n - 1}."
        covered_tokens = self.input_tokens * args.chunk_size / (args.chunk_size - args.overlap)  # overlap re-embeds
        passages = estimated_passages(int(covered_tokens), self.config.dense_passage_words)
        if self.config.search_mode != "bm25" and passages > self.config.dense_notice_passages:
            text += (
                f" Note: the first search embeds about {passages} passages ({self.config.search_mode} search), "
                "which takes minutes on a CPU unless this input was embedded before."
            )
        return text

    def _tool_searchEngine(self, args: Any, caller: int) -> str:
        index = self._require_index()
        if self.config.search_mode == "bm25":
            hits = index.search(args.keyword, top_k=self.config.search_top_k)
        else:
            hits = self._dense_search(index, args.keyword)
        if not hits:
            return f"No chunk matches {args.keyword!r}."
        digits = 2 if self.config.search_mode == "bm25" else 4  # cosines and fused ranks are small numbers
        lines = [f"chunk {h.chunk_id} (score {h.score:.{digits}f}): {h.snippet}" for h in hits]
        return f"{len(hits)} results for {args.keyword!r}, best first:\n" + "\n".join(lines)

    def _tool_readChunk(self, args: Any, caller: int) -> tuple[str, str]:
        index = self._require_index()
        if args.scan:
            if args.chunk_id is not None:
                raise ToolError("give either chunk_id or scan=true, not both")
            if self.scan_cursor >= len(index):
                raise ToolError(f"scan finished: all {len(index)} chunks were read in order")
            chunk_id = self.scan_cursor
            self.scan_cursor += 1
        elif args.chunk_id is None:
            raise ToolError("missing chunk_id (or pass scan=true to read the next chunk in order)")
        else:
            chunk_id = args.chunk_id
        if chunk_id >= len(index):
            raise ToolError(f"chunk_id {chunk_id} does not exist; ids are 0-{len(index) - 1}")
        progress = f"chunk {chunk_id}, progress {chunk_id + 1}/{len(index)}"
        return f"Chunk {chunk_id} of {len(index)}:\n{index.chunk(chunk_id)}", progress

    def _tool_note(self, args: Any, caller: int) -> str:
        self._raise_if(self.notebook.add(args.key, args.summary, args.content))
        return f"Note {args.key!r} stored."

    def _tool_updateNote(self, args: Any, caller: int) -> str:
        self._raise_if(self.notebook.update(args.key, args.mode, args.content, args.summary))
        return f"Note {args.key!r} {'deleted' if args.mode == 'delete' else 'updated'} ({args.mode})."

    def _tool_readNote(self, args: Any, caller: int) -> str:
        note = self.notebook.notes.get(args.key)
        if note is None:
            raise ToolError(f"no note {args.key!r}; existing keys: {', '.join(self.notebook.notes) or '(none)'}")
        return f"Note {args.key!r} ({note.summary}):\n{note.content}"

    def _tool_deleteContext(self, args: Any, caller: int) -> str:
        ids = args.msg_id if isinstance(args.msg_id, list) else [args.msg_id]
        if not ids:
            raise ToolError("msg_id is an empty list")
        live = {self.table[row].msg_id: pos for pos, row in enumerate(self.context)}
        for pos, row in enumerate(self.context):  # an id inside a range stub is live, and already deleted
            live.update(dict.fromkeys(self.table[row].covers or [], pos))
        for msg_id in ids:  # validate all first: a delete is all or nothing
            if msg_id in (0, 1):
                raise ToolError(
                    f"msg {msg_id} is the {'system' if msg_id == 0 else 'user'} message; "
                    "user and system messages cannot be deleted"
                )
            if msg_id not in live:
                raise ToolError(f"msg {msg_id} does not exist; live ids are {_id_ranges(sorted(live))}")
        deleted, already = [], []
        for msg_id in dict.fromkeys(ids):
            position = live[msg_id]
            message = self.table[self.context[position]]
            if message.stub:
                already.append(msg_id)
                continue
            self._replace(position, self._stub_of(message))
            deleted.append(msg_id)
        if self.config.compact_stubs:
            self._compact_stubs()
        text = f"Deleted msg {', '.join(map(str, deleted))}." if deleted else "Nothing deleted."
        return text + (f" Already deleted: {', '.join(map(str, already))}." if already else "")

    def _tool_checkBudget(self, args: Any, caller: int) -> str:
        used = self.count_tokens()
        cfg = self.config
        available = cfg.max_context_tokens - cfg.max_output_tokens - used
        return (
            f"Rounds: {self.rounds} used, {cfg.max_rounds - self.rounds} left of {cfg.max_rounds}. "
            f"Context: {used} tokens used, {cfg.max_output_tokens} reserved for output, {available} available "
            f"of {cfg.max_context_tokens}."
        )

    def _tool_finish(self, args: Any, caller: int) -> str:
        self.answer = args.answer
        self._end("finished")
        return "Episode finished."

    def _dense_search(self, index: ChunkIndex, query: str) -> list[SearchHit]:
        """Dense or hybrid ranking (SPEC 2 search modes); BM25 snippets where BM25 matched, else the best passage."""
        cfg = self.config
        if self.dense is None:
            try:
                chunks = [index.chunk(i) for i in range(len(index))]
                self.dense = DenseIndex.build(chunks, cfg.dense_model, cfg.dense_passage_words, cfg.embedding_cache_dir)
            except DenseUnavailable as exc:
                raise ToolError(str(exc)) from exc
        dense = self.dense.ranking(query, cfg.dense_model)
        if cfg.search_mode == "dense":
            return [SearchHit(c, score, self.dense.snippet(p)) for c, score, p in dense[: cfg.search_top_k]]
        keyword_hits = {h.chunk_id: h for h in index.search(query, top_k=len(index))}
        fused = reciprocal_rank_fusion([list(keyword_hits), [c for c, _, _ in dense]], k=cfg.rrf_k)
        best_passage = {c: p for c, _, p in dense}
        return [
            SearchHit(c, score, keyword_hits[c].snippet if c in keyword_hits else self.dense.snippet(best_passage[c]))
            for c, score in fused[: cfg.search_top_k]
        ]

    # -- helpers -----------------------------------------------------------------------------
    def _require_index(self) -> ChunkIndex:
        if self.index is None:
            raise ToolError("no index yet: call buildIndex first")
        return self.index

    @staticmethod
    def _raise_if(problem: str | None) -> None:
        if problem:
            raise ToolError(problem)

    def _stub_of(self, message: MessageRecord) -> MessageRecord:
        if message.role == "assistant":
            names = [c.name for c in parse_tool_calls(message.content).calls]
            content = prompts.assistant_stub(message.msg_id or 0, names)
        else:
            extra = self._header_extra.get(message.msg_id or 0, "")
            content = prompts.tool_stub(message.msg_id or 0, message.tool_name or "tool", message.call_id or 0, extra)
        return message.model_copy(update={"content": content, "stub": True})

    def _compact_stubs(self) -> None:
        """Replace each run of two or more adjacent stubs (range stubs included) by one range stub.

        The range stub is a new table entry, so every turn's context still rebuilds exactly from the
        trajectory; `covers` keeps the merged ids so deleteContext still answers for each of them.
        """
        context, run = [], []
        for row in [*self.context, None]:
            message = self.table[row] if row is not None else None
            if message is not None and message.stub and message.msg_id not in (0, 1):
                run.append(row)
                continue
            context += [self._range_stub(run)] if len(run) > 1 else run
            run = []
            if row is not None:
                context.append(row)
        self.context = context

    def _range_stub(self, rows: list[int]) -> int:
        members: list[MessageRecord] = []
        for row in rows:
            members += self._range_members.get(row, [self.table[row]])
        counts: dict[str, int] = {}
        chunks, progress = [], ""
        for member in members:
            if member.role == "tool":
                counts[member.tool_name or "tool"] = counts.get(member.tool_name or "tool", 0) + 1
            extra = self._header_extra.get(member.msg_id or 0, "") if member.tool_name == "readChunk" else ""
            if m := re.match(r"chunk (\d+), (progress \d+/\d+)", extra):
                chunks.append(int(m.group(1)))
                progress = m.group(2)
        ids = [m.msg_id or 0 for m in members]
        read = _id_ranges(sorted(set(chunks))) if chunks else ""
        content = prompts.range_stub(_id_ranges(ids), counts, read, progress)
        record = MessageRecord(
            role=members[-1].role, content=content, msg_id=ids[0], tool_name="deleted", stub=True, covers=ids
        )
        self.table.append(record)
        self._range_members[len(self.table) - 1] = members
        return len(self.table) - 1

    def _tool_message(self, tool: str, caller: int, body: str, extra: str = "") -> int:
        msg_id = self._new_msg_id()
        if extra:
            self._header_extra[msg_id] = extra
        content = prompts.tool_header(msg_id, tool, caller, extra) + "\n" + body
        return self._add(MessageRecord(role="tool", content=content, msg_id=msg_id, tool_name=tool, call_id=caller))

    def _task_text(self) -> str:
        return prompts.task_message(self.question, len(self.input_text), self.notebook.listing(), self.choices)

    # -- records -----------------------------------------------------------------------------
    def recorded_input_tokens(self) -> int | None:
        """Counted only if the episode tokenized the input (analyzeText or buildIndex)."""
        return self.input_tokens if self._offsets is not None else None


class ToolError(Exception):
    """A tool call that was well formed but could not be carried out; shown to the model."""


def _id_ranges(ids: list[int]) -> str:
    """Compact '2-9, 12' listing of message ids for error messages."""
    if not ids:
        return "(none)"
    ranges, start, prev = [], ids[0], ids[0]
    for i in [*ids[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        ranges.append(f"{start}-{prev}" if start != prev else str(start))
        if i is not None:
            start = prev = i
    return ", ".join(ranges)
