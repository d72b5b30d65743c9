"""The RLM environment's REPL sandbox: model code runs in a separate, confined Python process.

Mechanism: only what Linux and the standard library already offer, so nothing extra is installed.
The host (this module) starts `repl_worker.py` with a fresh interpreter (`python -S -s -P -B`, no
site-packages), a minimal environment (no inherited variables, so no API keys), in its own session,
and talks to it over pipes in JSON lines. Before any model code runs, the worker confines itself
(`repl_worker.py` lists the layers in order): no network (an unconfigured loopback only), a size-limited
tmpfs scratch dir (the host's disk cannot fill up), user `nobody` without capabilities, no_new_privs,
a seccomp deny list, Landlock (read only the standard and shared libraries, write only the scratch
dir, no execve, no TCP), rlimits (a fork bomb fails at its first fork). Each block has a wall-clock
timeout: a timer in the worker raises TimeoutError in the model's code (the REPL state is kept); if
the code does not stop, the host kills the process group after a grace period and the REPL restarts
(state lost, and the model is told).

Everything model code does wrong (a crash, a kill, garbage on the pipe, an exit) is an observation
for the model; `Sandbox.run` never raises. With `strict` (the default), a worker whose namespaces,
Landlock or privilege drop could not be set up is refused at start (`SandboxError`), so an episode
never runs unconfined by accident; `strict: false` runs with whatever layers the system allows.

What it does not guarantee: it is not a defence against kernel exploits in the system calls it
still allows (the seccomp list is a deny list of the riskiest calls, not an allow list); CPU and
memory are limited per process, not through cgroups, and the host's CPU is shared with concurrent
episodes; the standard library and the system's shared libraries are readable; on kernels without
Landlock ABI 6, sandboxes running as the same user can signal one another (never a root host). It
needs root or unprivileged user namespaces (Debian's default), Landlock, and libseccomp.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

logger = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("repl_worker.py")
SYSTEM_READ_PATHS = ("/usr/lib", "/lib", "/lib64", "/usr/lib64", "/etc/ld.so.cache")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
RESTART_NOTE = (
    "The REPL process was stopped, so its variables are gone; it restarts with `context` and a fresh "
    "`answer` when your next block runs."
)


class SandboxConfig(BaseModel):
    """Limits of the REPL process; recipes set these under `env.sandbox`."""

    block_timeout_seconds: float = Field(default=30.0, gt=0, description="Wall-clock limit of one code block.")
    cpu_seconds_per_block: int = Field(default=30, gt=0, description="CPU-time limit of one code block.")
    max_cpu_seconds: int = Field(default=600, gt=0, description="CPU time of one REPL process over the episode.")
    memory_mb: int = Field(default=2048, ge=256, description="Address-space limit of the REPL process.")
    scratch_mb: int = Field(default=64, gt=0, description="Size of the scratch directory (a tmpfs).")
    max_file_mb: int = Field(default=32, gt=0, description="Largest file the code may write.")
    max_open_files: int = Field(default=64, ge=16)
    grace_seconds: float = Field(default=2.0, ge=0, description="Wait after the timeout before the process is killed.")
    start_timeout_seconds: float = Field(default=60.0, gt=0)
    strict: bool = Field(default=True, description="Refuse to run when a confinement layer is unavailable.")
    scratch_root: str | None = Field(default=None, description="Where per-episode scratch dirs are made (tmp).")


class SandboxError(RuntimeError):
    """The sandbox could not be set up (not a problem of the model's code)."""


@dataclass
class BlockOutcome:
    """What one code block did."""

    output: str
    error: str | None = None  # exception type name, or None
    syntax_error: bool = False
    timed_out: bool = False
    answer: dict[str, Any] | None = None  # {"ready": bool, "content": str} after the block
    seconds: float = 0.0
    cpu_seconds: float | None = None
    output_chars: int = 0
    restarted: bool = False  # the process was killed or died: the REPL state is gone


LlmHandler = Callable[[list[str]], list[str]]


class Sandbox:
    """One REPL process with `context` bound, restarted on demand after it dies or is killed."""

    def __init__(
        self,
        context: str,
        config: SandboxConfig | None = None,
        max_output_chars: int = 4000,
        max_answer_chars: int = 20_000,
        max_prompt_chars: int = 200_000,
        max_batch: int = 256,
    ) -> None:
        self.context = context
        self.config = config or SandboxConfig()
        self.limits = {
            "max_output_chars": max_output_chars,
            "max_answer_chars": max_answer_chars,
            "max_prompt_chars": max_prompt_chars,
            "max_batch": max_batch,
        }
        self.process: subprocess.Popen | None = None
        self.layers: dict[str, Any] = {}
        self.starts = 0
        self._buffer = bytearray()
        self._base: str | None = None
        self._stderr = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Start (or restart) the worker; returns the confinement layers in force."""
        self.close()
        self._base = tempfile.mkdtemp(prefix="statelm-rlm-", dir=self.config.scratch_root)
        base = Path(self._base)
        os.chmod(base, 0o711)  # `nobody` must reach the scratch dir inside
        (base / "work").mkdir(mode=0o700)
        (base / "python").mkdir(mode=0o755)
        run_uid, run_gid = _nobody()
        if os.getuid() == 0:
            os.chown(base / "work", run_uid, run_gid)
        cfg = self.config
        settings = {
            "scratch": str(base / "work"),
            "python_dir": str(base / "python"),
            "system_read_paths": list(SYSTEM_READ_PATHS),
            "run_uid": run_uid,
            "run_gid": run_gid,
            "namespaces": True,
            "scratch_mb": cfg.scratch_mb,
            "memory_mb": cfg.memory_mb,
            "max_file_mb": cfg.max_file_mb,
            "max_open_files": cfg.max_open_files,
            "max_cpu_seconds": cfg.max_cpu_seconds,
            "cpu_seconds_per_block": cfg.cpu_seconds_per_block,
            "block_timeout": cfg.block_timeout_seconds,
            **self.limits,
        }
        env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": settings["scratch"],
            "TMPDIR": settings["scratch"],
            "PYTHONHASHSEED": "0",
            "PYTHONIOENCODING": "utf-8",
        }
        self._stderr = open(base / "worker.stderr", "w+b")  # noqa: SIM115 (kept open for the process's life)
        command = [sys.executable, "-S", "-s", "-P", "-B", str(WORKER), json.dumps(settings)]
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=env,
                cwd=base,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise SandboxError(f"cannot start the REPL worker {WORKER}: {exc}") from exc
        self.starts += 1
        self._buffer = bytearray()
        os.set_blocking(self.process.stdin.fileno(), False)  # type: ignore[union-attr]
        deadline = time.monotonic() + cfg.start_timeout_seconds
        ok = self._write({"op": "init", "context": self.context}, deadline)
        message = self._read(deadline) if ok else None
        if not isinstance(message, dict) or message.get("op") != "ready":
            detail = self._stderr_tail()
            self.close()
            raise SandboxError(f"the REPL worker did not start: {message!r}; stderr: {detail}")
        self.layers = message.get("layers") or {}
        missing = self.missing_layers()
        if missing and cfg.strict:
            self.close()
            raise SandboxError(
                f"sandbox layers unavailable: {'; '.join(missing)} (layers: {self.layers}). Run as root or enable "
                "unprivileged user namespaces and Landlock, or set env.sandbox.strict: false to run with less."
            )
        if missing and self.starts == 1:
            logger.warning("RLM sandbox running without: %s", "; ".join(missing))
        return self.layers

    def missing_layers(self) -> list[str]:
        """The confinement layers the worker could not set up."""
        layers, missing = self.layers, []
        if not layers.get("namespaces"):
            missing.append(f"namespaces ({layers.get('namespaces_error', 'not set up')})")
        if not layers.get("landlock_abi"):
            missing.append(f"Landlock ({layers.get('landlock_error', 'not set up')})")
        if not layers.get("seccomp_denied_syscalls"):
            missing.append(f"seccomp ({layers.get('seccomp_error', 'not set up')})")
        if layers.get("uid") == 0:
            missing.append("privilege drop (the worker runs as root)")
        elif layers.get("uid") == os.getuid() and not layers.get("landlock_scoped_signals"):
            missing.append("signal scoping (same user as the host, Landlock ABI < 6)")
        return missing

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def close(self) -> None:
        """Kill the worker's process group and remove the episode's directory."""
        if self.process is not None:
            _kill_group(self.process)
            for stream in (self.process.stdin, self.process.stdout):
                with contextlib.suppress(OSError):
                    stream.close()  # type: ignore[union-attr]
            self.process = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None

    # -- one block -----------------------------------------------------------------------------
    def run(self, code: str, name: str, on_llm: LlmHandler) -> BlockOutcome:
        """Run one code block; sub-model requests go to `on_llm`. Never raises."""
        started = time.monotonic()
        if not self.alive:
            try:
                self.start()
            except SandboxError as exc:
                logger.error("RLM sandbox restart failed: %s", exc)
                return BlockOutcome(f"Error: the REPL could not be started: {exc}", error="SandboxError")
        cfg = self.config
        deadline = started + cfg.block_timeout_seconds + cfg.grace_seconds
        if not self._write({"op": "exec", "code": code, "name": name}, deadline):
            return self._lost("the REPL process stopped reading its input", started)
        while True:
            message = self._read(deadline)
            if message == "timeout":
                return self._lost(
                    f"TimeoutError: the block did not stop within {cfg.block_timeout_seconds:g} s "
                    f"(+{cfg.grace_seconds:g} s grace) and was killed",
                    started,
                    timed_out=True,
                )
            if message is None:
                return self._lost(f"the REPL process ended ({self._exit_reason()})", started)
            if not isinstance(message, dict):
                return self._lost(f"the REPL process wrote something that is not a message: {message!r:.200}", started)
            if message.get("op") == "llm":
                prompts = message.get("prompts")
                if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
                    return self._lost("the REPL process sent a malformed llm_query request", started)
                asked = time.monotonic()
                responses = on_llm(prompts)
                deadline += time.monotonic() - asked  # sub-model time is not the block's time
                if not self._write({"op": "llm_result", "responses": responses}, deadline):
                    return self._lost("the REPL process stopped reading its input", started)
                continue
            if message.get("op") == "result":
                return _outcome(message, time.monotonic() - started)
            return self._lost(f"the REPL process sent an unknown message {str(message.get('op'))[:50]!r}", started)

    def _lost(self, reason: str, started: float, timed_out: bool = False) -> BlockOutcome:
        """The process is gone or untrustworthy: kill it; the next block gets a fresh REPL."""
        if self.process is not None:
            _kill_group(self.process)
        return BlockOutcome(
            f"{reason}.\n{RESTART_NOTE}",
            error="TimeoutError" if timed_out else "ReplDied",
            timed_out=timed_out,
            seconds=time.monotonic() - started,
            restarted=True,
        )

    # -- pipes ---------------------------------------------------------------------------------
    def _write(self, message: dict[str, Any], deadline: float) -> bool:
        """Send one message; False when the process is gone or does not read before the deadline."""
        if self.process is None or self.process.stdin is None:
            return False
        data = memoryview(json.dumps(message).encode() + b"\n")
        fd = self.process.stdin.fileno()
        poller = select.poll()  # poll, not select: descriptors above 1024 are fine with many episodes
        poller.register(fd, select.POLLOUT)
        while data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                if poller.poll(remaining * 1000):
                    data = data[os.write(fd, data[: 1 << 20]) :]
            except BlockingIOError:
                continue
            except OSError:
                return False
        return True

    def _read(self, deadline: float) -> dict[str, Any] | str | None:
        """The next message; "timeout" at the deadline; None at end of file; a string for garbage."""
        if self.process is None or self.process.stdout is None:
            return None
        fd = self.process.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        scanned = 0
        while (end := self._buffer.find(b"\n", scanned)) < 0:
            scanned = len(self._buffer)
            if scanned > MAX_MESSAGE_BYTES:
                return f"a message over {MAX_MESSAGE_BYTES} bytes"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            if not poller.poll(remaining * 1000):
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        try:
            return json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return line[:200].decode("utf-8", "replace")

    def _exit_reason(self) -> str:
        if self.process is None:
            return "not running"
        try:
            code = self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            hint = {"SIGKILL": ": killed, e.g. over the CPU-time limit", "SIGSEGV": ": a crash"}.get(name, "")
            return f"signal {name}{hint}"
        return f"exit code {code}"

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, self._stderr.tell() - 2000))
        return self._stderr.read().decode("utf-8", "replace")

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _outcome(message: dict[str, Any], seconds: float) -> BlockOutcome:
    """A worker's result message as a BlockOutcome, trusting nothing about its types."""
    answer = message.get("answer")
    if isinstance(answer, dict):
        answer = {"ready": answer.get("ready") is True, "content": str(answer.get("content", ""))}
    else:
        answer = None
    cpu = message.get("cpu_seconds")
    return BlockOutcome(
        output=str(message.get("output", "")),
        error=str(message["error"]) if message.get("error") else None,
        syntax_error=message.get("syntax_error") is True,
        timed_out=message.get("timed_out") is True,
        answer=answer,
        seconds=seconds,
        cpu_seconds=float(cpu) if isinstance(cpu, int | float) else None,
        output_chars=int(message["output_chars"]) if isinstance(message.get("output_chars"), int) else 0,
    )


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        process.kill()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        logger.error("RLM sandbox: process %s did not die after SIGKILL", process.pid)


def _nobody() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534
