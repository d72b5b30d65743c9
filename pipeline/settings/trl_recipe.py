"""TRL's parser for the SFT and GRPO recipes, with errors that name the recipe file and the key.

`TrlParser` turns YAML keys into argparse defaults, so a typo reads "Unknown arguments from config
file: ['--learnin_rate', ...]" and a wrong type "argument --max_steps: invalid int value: 'lots'"
after an 84-line usage, neither saying which file. `parse_recipe` keeps TRL's parsing (our configs
extend TRL's) and re-raises both as `RecipeError` with the file, the key and a close match. It also reads
the recipe's `environment` block the way every stage does (pipeline/settings/config.py): a shared env file by path, and
`--environment.<field> value` overrides; GRPO's per-turn cap and chat-template kwargs come from it.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
from collections.abc import Sequence
from typing import Any

from pipeline.settings.config import ENVIRONMENT, apply_overrides, help_text, load_yaml, parse_overrides
from pipeline.settings.errors import RecipeError

ALIASES = {"--recipe": "--config", "--model": "--model_name_or_path", "--dataset": "--dataset_path"}
# Set once in the environment (shared with collect, curate and eval), never beside it in a GRPO recipe
DERIVED = {
    "max_completion_length": "environment.max_output_tokens",
    "chat_template_kwargs": "environment.enable_thinking",
}


def parse_recipe(parser: Any, args: Sequence[str]) -> tuple[Any, ...]:
    """TRL's parsing of `--config <recipe> [--key value ...]`, with clear errors, and our environment block:
    `environment: <file>` is read from the shared env file and `--environment.<field> value` sets one field."""
    args = [ALIASES.get(a, a) for a in args]
    has_environment = any(action.dest == ENVIRONMENT for action in parser._actions)
    if "--help" in args or "-h" in args:
        print(recipe_help(parser, has_environment))
        raise SystemExit(0)
    recipe = args[args.index("--config") + 1] if "--config" in args[:-1] else None
    if recipe:
        i = args.index("--config")
        args = args[:i] + args[i + 2 :]
    env_flags, args = _split_environment_flags(args)
    _, env_overrides, _ = parse_overrides(env_flags)
    data = load_yaml(recipe) if recipe else {}  # a missing file or bad YAML names the file
    if ENVIRONMENT in data or env_overrides:
        data = apply_overrides(data, env_overrides, recipe or "command line")
    keys = set(data)
    flags = {a[2:].split("=", 1)[0].replace("-", "_") for a in args if a.startswith("--")}
    if has_environment:
        for key, home in DERIVED.items():
            if key in keys or key in flags:
                where = f"{recipe}: {key}" if key in keys else f"flag --{key}"
                raise RecipeError(f"{where}: set {home} instead (one place for every stage)")

    def error(message: str) -> None:  # argparse calls this instead of printing usage and exiting
        match = re.match(r"argument --([\w.-]+)(?:/[^:]*)?: (.*)", message)
        key, problem = (match.group(1), match.group(2)) if match else (None, message)
        if key and key in keys and key not in flags:
            raise RecipeError(f"{recipe}: {key}: {problem}")
        if key:
            raise RecipeError(f"flag --{key}: {problem}")
        raise RecipeError(f"{recipe + ' (with the command line)' if recipe else 'command line'}: {problem}")

    _route_errors(parser, error)
    for name, value in (data.pop("env", None) or {}).items():  # TRL's `env:`: process environment variables
        os.environ[name] = str(value)
    try:
        from_config = parser.set_defaults_with_config(**data)
        *parsed, from_flags = parser.parse_args_into_dataclasses(args=args, return_remaining_strings=True)
    except RecipeError:
        raise
    except ValueError as exc:  # a config's __post_init__ ("Your setup doesn't support bf16/gpu", ...)
        raise RecipeError(f"{recipe or 'command line'}: {exc}") from exc
    known = _known_keys(parser)
    if from_config:
        unknown = [s[2:] for s in from_config[::2]]
        raise RecipeError(f"{recipe}: unknown key(s) {_with_hints(unknown, known)}; remove or rename them")
    if from_flags:
        unknown = [s[2:].split("=", 1)[0] for s in from_flags if s.startswith("--")] or list(from_flags)
        raise RecipeError(f"unknown flag(s) {_with_hints(unknown, known, prefix='--')}")
    if recipe and hasattr(parsed[0], "recipe"):
        parsed[0].recipe = parsed[0].recipe or recipe
    return tuple(parsed)


def _split_environment_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """(the `--environment.<field> [value]` flags, the rest) of a command line."""
    picked, rest = [], []
    i = 0
    while i < len(args):
        arg = args[i]
        flag_with_value = arg.startswith("--") and "=" not in arg and i + 1 < len(args)
        width = 2 if flag_with_value and not args[i + 1].startswith("--") else 1
        (picked if arg.startswith(f"--{ENVIRONMENT}.") else rest).extend(args[i : i + width])
        i += width
    return picked, rest


def recipe_help(parser: Any, environment: bool) -> str:
    """Every field the recipe may set (ours and TRL's, with their help), and the environment's fields."""
    text = parser.format_help()
    if environment:
        from pipeline.env.pensieve import EnvConfig

        text += (
            "\nenvironment (a mapping, or the path of the shared env file; --environment.<field> value sets one;"
            " default kind pensieve, see pipeline/env/registry.py):\n" + help_text(EnvConfig, prefix="environment.")
        )
    return text


def _route_errors(parser: argparse.ArgumentParser, error: Any) -> None:
    parser.error = error  # type: ignore[method-assign]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _route_errors(sub, error)


def _known_keys(parser: argparse.ArgumentParser) -> list[str]:
    return [a.dest for a in parser._actions if a.dest != "help"]


def _with_hints(unknown: list[str], known: list[str], prefix: str = "") -> str:
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        parts.append(f"{prefix}{key}" + (f" (did you mean {prefix}{close[0]}?)" if close else ""))
    return ", ".join(parts)
