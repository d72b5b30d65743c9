"""Checks that run before any expensive work: model and tokenizer paths, endpoints, the Hub.

Without them a missing tokenizer folder falls through to the Hub (a misleading "Repo id must be in
the form 'repo_name'", or a minute of retries offline), and a dead endpoint shows up only after the
tasks were built and every episode failed. Each check raises `PreflightError` naming the field.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pipeline.settings.cpu_bf16 import cpu_bf16_is_native
from pipeline.settings.errors import PreflightError

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = 5.0


def check_model_path(name_or_path: str, field: str) -> str:
    """A local folder or a Hub repo id that resolves; the Hub is asked once, briefly, with no retries.

    A name that exists locally is used as is. A name that cannot be a repo id (`runs/tiny/model`,
    `./model`) is a missing folder. A repo id is fine when the local Hub cache has it; otherwise one
    short metadata request tells a missing repo, a missing token and no network apart.
    """
    if Path(name_or_path).expanduser().exists():
        return name_or_path
    if not _looks_like_repo_id(name_or_path):
        raise PreflightError(f"{field}: {name_or_path!r} is not a folder here (and not a Hub repo id); check the path")
    if _cached(name_or_path):
        return name_or_path
    if _offline():
        raise PreflightError(
            f"{field}: {name_or_path!r} is not a local folder nor in the Hub cache, and HF_HUB_OFFLINE is set; "
            "download it first or give a local path"
        )
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(name_or_path, timeout=PROBE_TIMEOUT)
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise PreflightError(
            f"{field}: {name_or_path!r} is not a local folder and not a Hub repo you can read "
            f"({type(exc).__name__}); check the path, or log in (hf auth login / HF_TOKEN) for a private repo"
        ) from exc
    except Exception as exc:  # no network: httpx errors, timeouts
        raise PreflightError(
            f"{field}: {name_or_path!r} is not a local folder and the Hub cannot be reached "
            f"({type(exc).__name__}); offline? give a local path or set HF_HUB_OFFLINE=1 with a filled cache"
        ) from exc
    return name_or_path


def check_endpoint(base_url: str, api_key: str, field: str) -> None:
    """An OpenAI-compatible endpoint answers at all (GET /models, one try): refused, timed out or a
    rejected key are errors; any other answer (some servers have no /models) counts as up."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=PROBE_TIMEOUT, max_retries=0)
    try:
        client.models.list()
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        raise PreflightError(
            f"{field}: nothing answers at {base_url} ({type(exc).__name__}); start the server first "
            "(see the recipe's header) or fix base_url"
        ) from exc
    except openai.AuthenticationError as exc:
        raise PreflightError(f"{field}: {base_url} rejected the api_key (HTTP 401); set api_key") from exc
    except openai.APIStatusError:
        pass
    finally:
        client.close()


def check_policy(spec: Any, field: str) -> None:
    """A recipe's policy (a PolicySpec) can start: its local model exists, its endpoint answers."""
    if spec.kind == "hf" and spec.model:
        check_model_path(spec.model, f"{field}.model")
    if spec.kind == "openai" and spec.base_url:
        check_endpoint(spec.base_url, spec.api_key, f"{field}.base_url")


def check_env(config: Any, field: str = "env") -> None:
    """The environment's own models (the RLM's sub_model) can start."""
    sub_model = getattr(config, "sub_model", None)
    if sub_model is not None and hasattr(sub_model, "kind"):
        check_policy(sub_model, f"{field}.sub_model")


def check_task_files(sources: list[Any], field: str = "tasks") -> None:
    """Every `{file: ...}` task source exists (generated sources need nothing)."""
    for index, source in enumerate(sources):
        path = getattr(source, "file", None)
        if path is not None and not Path(path).is_file():
            raise PreflightError(f"{field}.{index}.file: task file not found: {path}")


TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
"""`report_to` value -> the module the Trainer's callback imports (each an extra of the same name)."""


def check_trackers(report_to: list[str] | str | None, field: str) -> None:
    """Every tracker `report_to` names is installed, so the run does not stop when the trainer is built."""
    import importlib.util

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        module = TRACKERS.get(name)
        if module and importlib.util.find_spec(module) is None:
            raise PreflightError(
                f"{field}: {name} needs the {module} package: pip install 'statelm[{name}]' (or report_to: none)"
            )


def check_hub_push(repo_id: str | None, field: str) -> None:
    """Before the work whose result is pushed: a token exists and the Hub answers to it."""
    if not repo_id:
        raise PreflightError(f"{field}: pushing needs a repo id (hub_id / hub_model_id)")
    if _offline():
        raise PreflightError(f"{field}: push to {repo_id!r} asked for, but HF_HUB_OFFLINE is set")
    from huggingface_hub import HfApi, get_token

    if not get_token():
        raise PreflightError(f"{field}: push to {repo_id!r} needs a Hub token: run `hf auth login` or set HF_TOKEN")
    try:
        HfApi().whoami()
    except Exception as exc:
        raise PreflightError(
            f"{field}: push to {repo_id!r}: the Hub did not accept the token or cannot be reached "
            f"({type(exc).__name__}); offline? token expired?"
        ) from exc


def check_training(recipe: str | None, model: str | None, training_args: Any) -> None:
    """A TRL stage (SFT, GRPO) before any loading: the model path resolves, the trackers are installed and, when
    pushing, the Hub takes the token."""
    from pipeline.training.checkpoints import model_name

    where = f"{recipe}: " if recipe else ""
    if not model:
        raise PreflightError(f"{where}model_name_or_path is not set (the recipe's key, or --model)")
    check_model_path(model, f"{where}model_name_or_path")
    check_trackers(training_args.report_to, f"{where}report_to")
    if training_args.bf16 and training_args.use_cpu and not cpu_bf16_is_native():
        logger.warning("%sbf16: true with use_cpu on a CPU without native bf16 (no AVX512-BF16/AMX): autocast is "
                       "emulated, ~20x slower than float32 here; set bf16: false", where)  # fmt: skip
    if training_args.push_to_hub:
        check_hub_push(training_args.hub_model_id or model_name(training_args), f"{where}push_to_hub")


def _looks_like_repo_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _cached(repo_id: str) -> bool:
    from huggingface_hub.constants import HF_HUB_CACHE

    snapshots = Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
