"""One way to configure every stage: a YAML recipe, a shared environment file, and `--key value` overrides.

    statelm <stage> --config recipe.yaml [--key value ...] [--section.key value ...]

Every stage reads one YAML recipe. Its `environment:` is either a mapping or the path of a shared YAML file
(relative to the recipe's folder, e.g. `environment: env.yaml`): collect, curate, GRPO and eval of one run name
the same file, so budgets, the student's per-turn output cap (`max_output_tokens`) and the chat-template
settings are written once. (The key is `environment`, not `env`: TRL's parser reads a top-level `env:` as
process environment variables.) Overrides use TRL's `--key value` syntax for every stage, dotted for nested
fields (`--environment.search_top_k 5`, `--balance.max_share 0.5`); values are read as YAML scalars, a repeated
key gives a list. The pydantic stages validate the merged mapping with their recipe model, so a typo names the
file (or the flag) and the field; `help_text` lists every field with its description for `--help`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.settings.errors import RecipeError

ENVIRONMENT = "environment"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe file as a mapping; a missing file or bad YAML names the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe must be a mapping of fields, got {type(data).__name__}")
    return data


def resolve_environment(data: dict[str, Any], recipe: str | Path) -> dict[str, Any]:
    """Replace `environment: <file>` by the file's mapping (the path is relative to the recipe's folder)."""
    value = data.get(ENVIRONMENT)
    if isinstance(value, str | Path):
        path = Path(value) if Path(value).is_absolute() else Path(recipe).parent / value
        if not path.is_file():
            raise RecipeError(f"{recipe}: {ENVIRONMENT}: environment file not found: {path}")
        data = {**data, ENVIRONMENT: load_yaml(path)}
    return data


def parse_overrides(args: list[str]) -> tuple[str | None, dict[str, Any], list[str]]:
    """Split a command line into (config path, {dotted key: value}, flags left for the caller).

    `--recipe` is an alias of `--config`; `--a-b` is `--a_b`; `--key=value` and `--key value` both work; a flag
    with no value is `true`; values are YAML scalars (`5`, `0.5`, `true`, `[a, b]`); a repeated key is a list."""
    config, overrides, rest = None, {}, []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            rest.append(arg)
            i += 1
            continue
        key, has_value, value = arg[2:].partition("=")
        if not has_value:
            has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
            value = args[i + 1] if has_value else "true"
            i += 1 if has_value else 0
        i += 1
        key = key.replace("-", "_")
        if key in ("config", "recipe"):
            config = value
            continue
        parsed = yaml.safe_load(value) if value != "" else ""
        if key in overrides:
            previous = overrides[key]
            overrides[key] = [*(previous if isinstance(previous, list) else [previous]), parsed]
        else:
            overrides[key] = parsed
    return config, overrides, rest


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any], recipe: str | Path) -> dict[str, Any]:
    """`data` with each dotted key set (None leaves a key as it is); a non-mapping on the way names the key."""
    data = resolve_environment(dict(data), recipe)
    for dotted, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif isinstance(child, dict):
                child = node[key] = dict(child)
            else:
                raise RecipeError(f"{recipe}: {key} is not a mapping, so --{dotted} cannot set a field in it")
            node = child
        node[leaf] = value
    return data


def load_recipe(model: type[BaseModel], path: str | Path, overrides: dict[str, Any] | None = None) -> Any:
    """Read, resolve, override and validate a recipe; errors name the file (or the flag) and the field."""
    overrides = overrides or {}
    data = apply_overrides(load_yaml(path), overrides, path)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"{path}: invalid recipe: {_problems(exc, model, overrides)}") from exc


def _problems(exc: ValidationError, model: type[BaseModel], overrides: dict[str, Any]) -> str:
    problems = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error["loc"])
        flag = next((k for k in overrides if loc == k or loc.startswith(k + ".")), None)
        where = f"{loc} (flag --{flag})" if flag else loc
        hint = ""
        if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
            close = difflib.get_close_matches(str(error["loc"][0]), list(model.model_fields), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(f"{where}: {error['msg']}{hint}")
    return "; ".join(problems)


def help_text(model: type[BaseModel], nested: dict[str, type[BaseModel]] | None = None, prefix: str = "") -> str:
    """Every field of `model` (and of its nested models) as `--key (type, default): description` lines.
    `nested` names fields typed loosely whose model is known (the `environment` of the default kind)."""
    lines = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        sub = (nested or {}).get(name) or (annotation if _is_model(annotation) else None)
        value = None if field.is_required() else field.get_default(call_default_factory=True)
        default = "required" if field.is_required() else f"default {_short(value)}"
        kind = _type_name(annotation)
        lines.append(f"  --{prefix}{name} ({kind}, {default}): {field.description or ''}".rstrip(": "))
        if sub is not None:
            lines.append(help_text(sub, None, f"{prefix}{name}."))
    return "\n".join(lines)


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return " | ".join(str(choice) for choice in get_args(annotation))
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("pipeline.settings.recipe.", "")


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _short(value: Any) -> str:
    if isinstance(value, BaseModel):
        return "{...}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
