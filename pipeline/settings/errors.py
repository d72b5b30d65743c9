"""What a user sees when a stage stops: one short paragraph and an exit code (SPEC: CLI contract).

Stages raise ordinary exceptions whose messages already name the file, line or field. `explain`
turns any of them (ours, pydantic's, the Hub's, the network's) into a few lines that say what went
wrong and what to do; the CLI prints that instead of a traceback unless `--debug` or
`STATELM_DEBUG=1` asks for one. Exit codes are for schedulers: see `EXIT_*`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

EXIT_ERROR = 1
"""The stage stopped on a bad input or an unreachable service; what was written before is intact."""
EXIT_USAGE = 2
"""Click's code for a bad command line (unknown option, missing argument)."""
EXIT_EPISODES_FAILED = 3
"""`collect` ran to the end, but more episodes failed than the recipe allows; a re-run retries them."""

DEBUG_ENV = "STATELM_DEBUG"
_MAX_LINES = 6
_MAX_CHARS = 900


class StateLMError(Exception):
    """An error whose message is already written for the user (what, where, and what to do)."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class RecipeError(StateLMError, ValueError):
    """A recipe (YAML) names an unknown key or a value of the wrong type; the message names file and key."""


class PreflightError(StateLMError):
    """A model path, tokenizer, endpoint or the Hub is not usable; found before any expensive work."""


def exit_cleanly(run: Callable[[], object]) -> None:
    """Run a stage's `python -m` entry point (what `accelerate launch` and the launchers start) with the CLI's
    short error and exit code instead of a traceback from every process; STATELM_DEBUG=1 keeps the traceback."""
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        run()
    except Exception as exc:
        if debug_requested():
            raise
        rank = f" (rank {os.environ.get('RANK', '?')})" if multi_process else ""
        print(f"error{rank}: {explain(exc)}\n({DEBUG_ENV}=1 shows the traceback)", file=sys.stderr, flush=True)
        raise SystemExit(getattr(exc, "exit_code", EXIT_ERROR)) from None
    if multi_process:
        exit_finished_rank()


def exit_finished_rank() -> None:
    """End a rank whose stage returned (model, report and checkpoints written, process group destroyed) without
    the interpreter's teardown. On CPU runs of ZeRO-3 with gloo, 2 of ~20 runs here (one in CI) had a rank abort
    after the final model was written (`terminate called without an active exception`, SIGABRT, typically a C++
    thread destroyed while joinable), which the launcher reports as a failed run; teardown is the likely place (not
    proven: no stack was captured; the launch tests now set PYTHONFAULTHANDLER). Nothing is left to clean up but
    buffered output, flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def debug_requested() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def explain(exc: BaseException) -> str:
    """A few lines for the user: the message of the error, prefixed with what kind of problem it is."""
    message = _message(exc)
    lines = [line for line in message.splitlines() if line.strip()] or [type(exc).__name__]
    if len(lines) > _MAX_LINES:
        lines = [*lines[:_MAX_LINES], f"... ({len(lines) - _MAX_LINES} more lines)"]
    text = "\n".join(lines)
    return text if len(text) <= _MAX_CHARS else text[:_MAX_CHARS] + " ..."


def _message(exc: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(exc, StateLMError):
        return str(exc)
    if isinstance(exc, ValidationError):
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()]
        return f"invalid {exc.title}: " + "; ".join(problems[:5])
    hub = _hub_problem(exc)
    if hub:
        return hub
    if isinstance(exc, FileNotFoundError):
        return f"file not found: {exc.filename}" if exc.filename and str(exc.filename) not in str(exc) else str(exc)
    if isinstance(exc, (ValueError, KeyError, OSError, RuntimeError, TypeError)) and str(exc):
        kind = "" if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: "
        # str(KeyError) quotes its key; every other message is shown as written (it may end in a quote)
        return kind + (str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))
    return f"internal error {type(exc).__name__}: {exc} (please report it with the --debug traceback)"


def _hub_problem(exc: BaseException) -> str | None:
    """The Hub and network failures in one line: offline, no token, no such repo."""
    chain = _chain(exc)
    names = {type(e).__name__ for e in chain}
    last = str(chain[-1]).splitlines()[0] if str(chain[-1]) else type(chain[-1]).__name__
    if "OfflineModeIsEnabled" in names:
        return f"the Hugging Face Hub is needed but HF_HUB_OFFLINE is set ({last})"
    if names & {"GatedRepoError", "RepositoryNotFoundError"}:
        return f"the Hub has no repo you may read here ({last}): check the name, or log in (hf auth login / HF_TOKEN)"
    if "HfHubHTTPError" in names and "401" in last:
        return f"the Hub rejected the token ({last}): log in again (hf auth login) or set HF_TOKEN"
    if names & {"ConnectError", "ConnectTimeout", "ConnectionError", "NewConnectionError", "LocalEntryNotFoundError"}:
        return f"cannot reach the network service ({last}): offline? Set HF_HUB_OFFLINE=1 to use only local files"
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return seen
