"""The scripted Inventory expert, and the `scripted` policy that picks the expert for each environment.

The expert reads only what the model sees: its previous output's `Inventory: [...]` line and the
current chunk's commands. It applies them (pipeline/tasks/inventory.py grammar) and writes the new
`Inventory: [...]` line, so it carries the state forward exactly: an upper bound and SFT data.
"""

from __future__ import annotations

from typing import Any

from pipeline.env.inventory import CHUNK_HEADER, PREVIOUS_HEADER, SYSTEM_PROMPT, format_inventory, parse_inventory
from pipeline.policies.base import Message, Policy
from pipeline.tasks.inventory import apply_commands


def is_inventory_context(messages: list[Message]) -> bool:
    return bool(messages) and messages[0].get("role") == "system" and messages[0].get("content") == SYSTEM_PROMPT


class InventoryExpert:
    """Deterministic given the context; needs no model."""

    name = "scripted"

    async def act(self, messages: list[Message], tools: list[dict[str, Any]], seed: int | None = None) -> str:
        return self.decide(messages)

    async def aclose(self) -> None:
        return None

    def decide(self, messages: list[Message]) -> str:
        text = str(messages[-1]["content"])
        headers = list(CHUNK_HEADER.finditer(text))
        if not headers:
            return format_inventory([])
        header = headers[-1]  # the env's own header comes last; earlier ones could only be quoted output
        previous = text[: header.start()]
        previous = previous.split(PREVIOUS_HEADER, 1)[-1]
        chunk = text[header.end() :].lstrip("\n").split("\n", 1)[0]
        return format_inventory(apply_commands(parse_inventory(previous) or [], chunk))


class ScriptedExperts:
    """`policy: {kind: scripted}`: the Inventory expert in Inventory contexts, else the Pensieve expert."""

    name = "scripted"

    def __init__(self, pensieve: Policy, inventory: InventoryExpert | None = None) -> None:
        self.pensieve, self.inventory = pensieve, inventory or InventoryExpert()

    async def act(self, messages: list[Message], tools: list[dict[str, Any]], seed: int | None = None) -> str:
        expert = self.inventory if is_inventory_context(messages) else self.pensieve
        return await expert.act(messages, tools, seed)

    async def aclose(self) -> None:
        await self.pensieve.aclose()
        await self.inventory.aclose()
