"""The Pensieve tool set: argument models (validation) and the JSON schemas shown to the model.

Tool names and arguments are the public API of SPEC 2. Arguments are validated strictly (a chunk id
sent as the string "3" is an error the model must see), and every error message names the tool and
the argument.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Args(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class AnalyzeTextArgs(_Args):
    pass


class BuildIndexArgs(_Args):
    chunk_size: int = Field(default=4000, ge=16, le=1_000_000, description="Tokens per chunk.")
    overlap: int = Field(default=0, ge=0, description="Tokens shared by consecutive chunks.")


class SearchEngineArgs(_Args):
    keyword: str = Field(min_length=1, description="One or more keywords or phrases, comma-separated.")


class ReadChunkArgs(_Args):
    chunk_id: int | None = Field(default=None, ge=0, description="Id of the chunk to read.")
    scan: bool = Field(default=False, description="Read the next chunk in order instead of an id.")


class NoteArgs(_Args):
    key: str = Field(min_length=1, description="Unique key of the note.")
    summary: str = Field(description="One line shown in the notebook list.")
    content: str = Field(description="The facts to keep.")


class UpdateNoteArgs(_Args):
    key: str = Field(min_length=1)
    mode: Literal["append", "overwrite", "delete"] = "append"
    content: str = ""
    summary: str | None = None


class ReadNoteArgs(_Args):
    key: str = Field(min_length=1)


class DeleteContextArgs(_Args):
    msg_id: int | list[int] = Field(description="A message id or a list of ids to replace by stubs.")


class CheckBudgetArgs(_Args):
    pass


class FinishArgs(_Args):
    answer: str = Field(description="The final answer.")


ARGUMENT_MODELS: dict[str, type[_Args]] = {
    "analyzeText": AnalyzeTextArgs,
    "buildIndex": BuildIndexArgs,
    "searchEngine": SearchEngineArgs,
    "readChunk": ReadChunkArgs,
    "note": NoteArgs,
    "updateNote": UpdateNoteArgs,
    "readNote": ReadNoteArgs,
    "deleteContext": DeleteContextArgs,
    "checkBudget": CheckBudgetArgs,
    "finish": FinishArgs,
}
TOOL_NAMES = tuple(ARGUMENT_MODELS)

_DESCRIPTIONS = {
    "analyzeText": "Measure the input: total tokens and the number of chunks at the default chunk size.",
    "buildIndex": "Split the input into token chunks and build a BM25 search index over them.",
    "searchEngine": "Search the index; returns up to 20 chunk ids with highlighted snippets, best first.",
    "readChunk": "Read one chunk by id, or the next chunk in order with scan=true.",
    "note": "Store a new note in the notebook (the key must not exist yet).",
    "updateNote": "Append to, overwrite or delete an existing note.",
    "readNote": "Read the content of a note.",
    "deleteContext": "Replace assistant or tool messages, by msg id, with short stubs to free context.",
    "checkBudget": "Report rounds used, rounds left and context tokens still available.",
    "finish": "End the task with the final answer.",
}


def validate_arguments(name: str, arguments: dict[str, Any]) -> tuple[_Args | None, str | None]:
    """Validate a call's arguments; returns (args, None) or (None, an error naming the tool and field)."""
    model = ARGUMENT_MODELS.get(name)
    if model is None:
        return None, f"unknown tool {name!r}; the tools are: {', '.join(TOOL_NAMES)}"
    try:
        return model.model_validate(arguments), None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "arguments"
            problems.append(f"{where}: {err['msg']}")
        return None, f"bad arguments for {name}: {'; '.join(problems)}"


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Strip pydantic's titles so the schema the model reads is short."""
    schema = {k: v for k, v in schema.items() if k != "title"}
    if "properties" in schema:
        schema["properties"] = {k: _clean_schema(v) for k, v in schema["properties"].items()}
    for key in ("anyOf", "items"):
        if isinstance(schema.get(key), list):
            schema[key] = [_clean_schema(s) for s in schema[key]]
        elif isinstance(schema.get(key), dict):
            schema[key] = _clean_schema(schema[key])
    schema.pop("additionalProperties", None)
    return schema


# Compact schemas: the argument names and types only, a few words each. The full schemas cost ~1,000 tokens per
# row in a 49K-vocabulary tokenizer (SmolLM2), 5-10x what a small student's trained tokens are: this halves rows.
_COMPACT_DESCRIPTIONS = {
    "analyzeText": "Input size in tokens.",
    "buildIndex": "Chunk the input and index it.",
    "searchEngine": "Find chunks by keywords.",
    "readChunk": "Read a chunk (or scan=true: the next).",
    "note": "Save a new note.",
    "updateNote": "Edit a note.",
    "readNote": "Read a note.",
    "deleteContext": "Replace messages by stubs.",
    "checkBudget": "Rounds and tokens left.",
    "finish": "Give the final answer.",
}


def _compact_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Only what a call needs to be valid: types, enums, required names (no defaults, bounds or descriptions)."""
    if "anyOf" in schema:
        kinds = [_compact_schema(s) for s in schema["anyOf"] if s.get("type") != "null"]
        return kinds[0] if len(kinds) == 1 else {"anyOf": kinds}
    out = {key: schema[key] for key in ("type", "enum") if key in schema}
    if "items" in schema:
        out["items"] = _compact_schema(schema["items"])
    if "properties" in schema:
        out["properties"] = {k: _compact_schema(v) for k, v in schema["properties"].items()}
    if schema.get("required"):
        out["required"] = schema["required"]
    return out


def tool_schemas(compact: bool = False) -> list[dict[str, Any]]:
    """OpenAI-style function schemas, rendered into the prompt by the model's chat template."""
    tools = []
    for name, model in ARGUMENT_MODELS.items():
        params = _clean_schema(model.model_json_schema())
        description = _DESCRIPTIONS[name]
        if compact:
            params, description = _compact_schema(params), _COMPACT_DESCRIPTIONS[name]
        params.setdefault("properties", {})
        params["type"] = "object"
        tools.append({"type": "function", "function": {"name": name, "description": description, "parameters": params}})
    return tools
