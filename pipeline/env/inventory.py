"""The Inventory environment (SPEC 2 "Variants"): track an inventory through a stream, with a memory wipe.

The task input is a stream of chunks of noise words with `[GET item]` / `[DROP item]` commands
(pipeline/tasks/inventory.py). Turn k shows the model exactly two messages: the system prompt, and one
user message holding its own previous output (its reasoning block removed) and chunk k. The model
answers with its updated state, ending in the line `Inventory: [item, item]`; after the last chunk that
line is the final answer. Then the context is wiped: the next turn starts again from the system prompt.

Message table and turns follow the Pensieve contracts (pipeline/data/trajectory.py): every user and
assistant message is stored once, `turn.context` is [system, that turn's user message], and every turn
that is followed by a wipe is marked `edited`, so the segmenter makes one segment per turn.

Each turn's parsed output is recorded as one action in `turn.tool_calls`: `inventory` (the carried
state) or, on the last chunk, `finish` with the answer, so action balancing and the "ended by finish"
check of curation apply unchanged. There are no tools: `tools` is [].

End states: `finished` (the last chunk's output has an inventory line), `malformed` (no inventory line
in `max_format_errors` consecutive outputs, or in the last one), `over_budget` (system prompt + carried
output + chunk + `max_output_tokens` exceed `max_context_tokens`), `max_rounds` (more chunks than
`max_rounds`). `step` never raises on model output.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pipeline.data.trajectory import MessageRecord, Trajectory
from pipeline.env.base import BaseEnv, BaseEnvConfig, StepResult
from pipeline.tasks.graders import grade_set
from pipeline.tasks.inventory import inventory_states
from pipeline.tasks.schema import DOCUMENT_SEPARATOR, Task

SYSTEM_PROMPT = """You keep an inventory while a long stream of text is shown to you one chunk at a time.
The stream is mostly noise. Only the commands change the inventory: [GET item] adds the item, [DROP item]
removes it (dropping an item you do not hold changes nothing). The inventory starts empty.
Your memory is wiped after every chunk: nothing you saw survives except your own last output, which is
shown to you again together with the next chunk. So end every message with your complete current
inventory on one line, written exactly as
Inventory: [item, item]
(Inventory: [] when it is empty). After the last chunk, that line is your final answer."""

PREVIOUS_HEADER = "Your previous output:"
FIRST_TURN = f"{PREVIOUS_HEADER} (none: this is the first chunk, the inventory is empty)"
CHUNK_HEADER = re.compile(r"^Chunk (\d+) of (\d+):$", re.MULTILINE)
STEP_INSTRUCTION = "Apply this chunk's commands and write your updated inventory as Inventory: [item, item]."
FINAL_INSTRUCTION = (
    "This was the last chunk. Apply its commands and give your final inventory as Inventory: [item, item]."
)
NO_INVENTORY = (
    "your previous output had no inventory line; end every message with Inventory: [item, item] "
    "(Inventory: [] when empty)."
)
_INVENTORY = re.compile(r"Inventory:\s*\[([^\[\]]*)\]", re.IGNORECASE)


class InventoryConfig(BaseEnvConfig):
    """Budgets (BaseEnvConfig); recipes set them under `environment: {kind: inventory, ...}` (stream sizes belong
    to the tasks). A round is a chunk; a format error is an output without an inventory line."""

    kind: Literal["inventory"] = "inventory"


def visible_text(raw: str) -> str:
    """What survives the wipe: the output without its reasoning (an unclosed `<think>` hides the rest)."""
    text = raw.split("</think>")[-1]
    return text.split("<think>")[0].strip()


def parse_inventory(text: str) -> list[str] | None:
    """Items of the last `Inventory: [...]` line, in order, without quotes; None if there is none."""
    matches = _INVENTORY.findall(text)
    if not matches:
        return None
    items = [item.strip().strip("'\"`*").strip() for item in matches[-1].split(",")]
    return [item for item in items if item]


def format_inventory(items: list[str]) -> str:
    return f"Inventory: [{', '.join(items)}]"


def user_message(previous: str | None, chunk: str, index: int, total: int, error: str | None = None) -> str:
    """Turn `index`'s only user message: the carried output, the chunk, the instruction (and any error)."""
    parts = [FIRST_TURN] if previous is None else [f"{PREVIOUS_HEADER}\n{previous or '(empty)'}"]
    parts.append(f"Chunk {index + 1} of {total}:\n{chunk}")
    if error:
        parts.append(f"Error: {error}")
    parts.append(FINAL_INSTRUCTION if index == total - 1 else STEP_INSTRUCTION)
    return "\n\n".join(parts)


class InventoryEnv(BaseEnv):
    """One episode over one stream. Build a new env per episode."""

    name = "inventory"

    def __init__(self, chunks: list[str], tokenizer: Any, config: InventoryConfig | None = None) -> None:
        if not chunks:
            raise ValueError("InventoryEnv: the stream has no chunks")
        super().__init__(tokenizer, config or InventoryConfig())
        self.chunks = chunks
        self.states = inventory_states(chunks)  # the true inventory after each chunk
        self.state_correct: list[bool] = []
        self.chunk_index = 0
        self.final_items: list[str] | None = None
        self._input_tokens: int | None = None
        self._add(MessageRecord(role="system", content=SYSTEM_PROMPT, msg_id=0))
        self._show(user_message(None, chunks[0], 0, len(chunks)))

    @classmethod
    def from_task(cls, task: Task, tokenizer: Any, config: InventoryConfig) -> InventoryEnv:
        chunks = task.documents if task.documents is not None else task.load_input().split(DOCUMENT_SEPARATOR)
        return cls(list(chunks), tokenizer, config)._for_task(task)

    # -- observation -------------------------------------------------------------------------
    @property
    def input_tokens(self) -> int:
        """The whole stream's length in student tokens."""
        if self._input_tokens is None:
            text = DOCUMENT_SEPARATOR.join(self.chunks)
            self._input_tokens = self._tokens(text)
        return self._input_tokens

    # -- the step ----------------------------------------------------------------------------
    def _turn(self, raw_text: Any, context_before: list[int], tokens_before: int) -> StepResult:
        """Apply one assistant message, then wipe the context (BaseEnv.step counted the round)."""
        raw = raw_text if isinstance(raw_text, str) else str(raw_text)
        assistant_row = len(self.table)
        self.table.append(MessageRecord(role="assistant", content=raw))
        carried = visible_text(raw)
        items = parse_inventory(carried)
        index, last = self.chunk_index, self.chunk_index == len(self.chunks) - 1
        self.state_correct.append(items is not None and grade_set(", ".join(items), self.states[index]))
        errors = int(items is None)
        self.format_errors += errors
        self.consecutive_error_turns = self.consecutive_error_turns + 1 if errors else 0
        if items is None:
            calls = []
        elif last:
            calls = [{"name": "finish", "arguments": {"answer": ", ".join(items)}}]
        else:
            calls = [{"name": "inventory", "arguments": {"items": items}}]
        edited = False
        if last:
            self.final_items = items
            if items is None:
                self._end("malformed")
            else:
                self.answer = ", ".join(items)
                self._end("finished")
        elif self.consecutive_error_turns >= self.config.max_format_errors:
            self._end("malformed")
        elif self.rounds >= self.config.max_rounds:
            self._end("max_rounds")
        else:  # the memory wipe: only the carried output goes on
            self.chunk_index += 1
            self.context = [0]
            error = NO_INVENTORY if errors else None
            self._show(user_message(carried, self.chunks[self.chunk_index], self.chunk_index, len(self.chunks), error))
            edited = True
        if not edited:  # the episode ended here: its last context keeps the answer
            self.context.append(assistant_row)
            self.context_tokens = self.count_tokens()
        return self._record_turn(context_before, tokens_before, assistant_row, calls, [], edited, errors)

    # -- helpers -----------------------------------------------------------------------------
    def _show(self, content: str) -> None:
        """Add the turn's user message to the (wiped) context and check the budget for the next output."""
        self._add(MessageRecord(role="user", content=content))
        self.context_tokens = self.count_tokens()
        if self._over_context():
            self._end("over_budget")

    # -- records -----------------------------------------------------------------------------
    def episode_metadata(self) -> dict[str, Any]:
        """Episode figures kept in the trajectory metadata. `state_accuracy` is over the whole stream:
        a chunk the episode never reached counts as a state not carried."""
        return {
            "episode_length": len(self.turns),
            "chunks_total": len(self.chunks),
            "final_item_count": None if self.final_items is None else len(self.final_items),
            "gold_item_count": len(self.states[-1]),
            "state_correct": list(self.state_correct),
            "state_accuracy": sum(self.state_correct) / len(self.chunks),
        }

    def recorded_input_tokens(self) -> int | None:
        return self.input_tokens

    @classmethod
    def eval_figures(cls, trajectories: list[Trajectory]) -> dict[str, Any]:
        """How well the state survives the wipes: the share of chunks after which the carried inventory was right
        (over the whole stream, so an episode that stopped early counts its unread chunks as wrong)."""
        n = len(trajectories)
        return {
            "inventory": {
                "state_accuracy": sum(t.metadata.get("state_accuracy", 0.0) for t in trajectories) / n,
                "mean_chunks": sum(t.metadata.get("chunks_total", 0) for t in trajectories) / n,
            }
        }
