"""TRL's parser for the SFT and GRPO recipes, with errors that name the recipe file and the key.

`TrlParser` turns YAML keys into argparse defaults, so a typo reads "Unknown arguments from config
file: ['--learnin_rate', ...]" and a wrong type "argument --max_steps: invalid int value: 'lots'"
after an 84-line usage, neither saying which file. `parse_recipe` keeps TRL's parsing (our configs
extend TRL's) and re-raises both as `RecipeError` with the file, the key and a close match.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Sequence
from typing import Any

from pipeline.errors import RecipeError
from pipeline.recipe import load_yaml


def parse_recipe(parser: Any, args: Sequence[str]) -> tuple[Any, ...]:
    """`parser.parse_args_and_config(args)` where `args` holds `--config <recipe>`, with clear errors."""
    args = list(args)
    recipe = args[args.index("--config") + 1] if "--config" in args[:-1] else None
    keys = set(load_yaml(recipe)) if recipe else set()  # a missing file or bad YAML names the file
    flags = {a[2:].split("=", 1)[0] for a in args if a.startswith("--")}

    def error(message: str) -> None:  # argparse calls this instead of printing usage and exiting
        match = re.match(r"argument --([\w.-]+)(?:/[^:]*)?: (.*)", message)
        key, problem = (match.group(1), match.group(2)) if match else (None, message)
        if key and key in keys and key not in flags:
            raise RecipeError(f"{recipe}: {key}: {problem}")
        if key:
            raise RecipeError(f"flag --{key}: {problem}")
        raise RecipeError(f"{recipe + ' (with the command line)' if recipe else 'command line'}: {problem}")

    _route_errors(parser, error)
    try:
        *parsed, from_config, from_flags = parser.parse_args_and_config(
            args, return_remaining_strings=True, separate_remaining_strings=True
        )
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
    return tuple(parsed)


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
