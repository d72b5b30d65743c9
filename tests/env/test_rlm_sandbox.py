"""The RLM sandbox contains escape attempts: each fails with a clear error, the host and the run go on."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from pipeline.env.sandbox import Sandbox, SandboxConfig

SECRET = "host-secret-7f3a9"


def no_llm(prompts: list[str]) -> list[str]:
    return ["no sub-model"] * len(prompts)


@pytest.fixture(scope="module")
def host_files(tmp_path_factory):
    """A readable secret file and a world-writable directory on the host."""
    root = tmp_path_factory.mktemp("host")
    secret = root / "secret.txt"
    secret.write_text(SECRET)
    secret.chmod(0o644)
    open_dir = root / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    for parent in (root, *root.parents):  # make the path reachable for any user: only the sandbox may stop it
        if str(parent) in ("/", "/tmp"):
            break
        parent.chmod(parent.stat().st_mode | 0o711)
    return {"secret": secret, "open": open_dir}


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox(
        "the context " * 100,
        SandboxConfig(block_timeout_seconds=2, grace_seconds=1, memory_mb=512, scratch_mb=8, max_file_mb=4),
    )
    box.start()
    yield box
    box.close()


def run(box: Sandbox, code: str):
    return box.run(code, "<test>", no_llm)


def assert_repl_intact(box: Sandbox) -> None:
    """The REPL still answers and the host process is untouched."""
    outcome = run(box, "print(len(context))")
    assert outcome.error is None and outcome.output.strip() == str(len("the context " * 100))
    assert os.getpid() > 0 and threading.main_thread().is_alive()


def test_layers_are_in_force(sandbox):
    layers = sandbox.layers
    assert sandbox.missing_layers() == []
    assert layers["namespaces"] and layers["landlock_abi"] >= 1 and layers["limits"]["nproc"] == 0
    if os.getuid() == 0:  # a root host hands the code to `nobody`, without capabilities
        assert layers["uid"] != 0
        out = run(sandbox, "import os\nprint(os.getuid(), os.geteuid(), os.getgroups())").output
        assert out.split()[:2] == [str(layers["uid"])] * 2


@pytest.mark.parametrize(
    "code",
    [
        "open({secret!r}).read()",
        "open('/etc/passwd').read()",
        "open('/proc/1/environ').read()",
        "import os\nopen(f'/proc/{{os.getppid()}}/environ').read()",
        "import os\nos.listdir({parent!r})",
        "import os\nos.listdir('/')",
        "import os\nos.symlink({secret!r}, 'link')\nopen('link').read()",
        "import os\nos.link({secret!r}, 'hard')\nopen('hard').read()",
    ],
)
def test_reading_outside_the_scratch_dir_fails(sandbox, host_files, code):
    code = code.format(secret=str(host_files["secret"]), parent=str(host_files["secret"].parent))
    outcome = run(sandbox, code)
    assert outcome.error in ("PermissionError", "OSError", "FileNotFoundError"), outcome.output
    assert SECRET not in outcome.output
    assert any(s in outcome.output for s in ("Permission denied", "No such file", "cross-device")), outcome.output
    assert_repl_intact(sandbox)


@pytest.mark.parametrize(
    "path_key",
    ["open", "tmp", "home"],
)
def test_writing_outside_the_scratch_dir_fails(sandbox, host_files, path_key):
    target = {"open": host_files["open"] / "x.txt", "tmp": "/tmp/statelm-escape.txt", "home": "/root/escape.txt"}
    path = str(target[path_key])
    outcome = run(sandbox, f"open({path!r}, 'w').write('escaped')")
    assert outcome.error == "PermissionError", outcome.output
    assert "Permission denied" in outcome.output and "scratch directory" in outcome.output
    assert not os.path.exists(path)
    assert host_files["secret"].read_text() == SECRET
    outcome = run(sandbox, f"open({str(host_files['secret'])!r}, 'a').write('x')")
    assert outcome.error == "PermissionError" and host_files["secret"].read_text() == SECRET


def test_the_scratch_dir_is_writable_and_bounded(sandbox):
    outcome = run(sandbox, "open('notes.txt', 'w').write('kept')\nprint(open('notes.txt').read())")
    assert outcome.error is None and outcome.output.strip() == "kept"
    too_big = run(sandbox, "open('big.bin', 'wb').write(b'x' * (6 << 20))")  # over max_file_mb
    assert too_big.error == "OSError" and "File too large" in too_big.output
    fill = run(sandbox, "for i in range(20):\n    open(f'f{i}.bin', 'wb').write(b'x' * (3 << 20))")
    assert fill.error == "OSError" and "No space left" in fill.output  # the 8 MB tmpfs is full
    run(sandbox, "import os\nfor name in os.listdir('.'):\n    os.remove(name)")
    assert_repl_intact(sandbox)


def test_no_network(sandbox):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.5)
    port, udp_port = server.getsockname()[1], udp.getsockname()[1]
    try:
        attempts = [
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
            "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)",
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.sendto(b'leak', ('127.0.0.1', {udp_port}))",
            "import socket\nsocket.getaddrinfo('pypi.org', 443)",
            "import socket\ns = socket.socket()\ns.bind(('0.0.0.0', 8765))\ns.listen()",
            "import socket\nsocket.socket(socket.AF_UNIX).connect('/run/dbus/system_bus_socket')",
        ]
        for code in attempts:
            outcome = run(sandbox, code)
            assert outcome.error is not None, (code, outcome.output)
        with pytest.raises(TimeoutError):
            server.accept()  # nothing ever reached the host
        with pytest.raises(TimeoutError):
            udp.recvfrom(16)
    finally:
        server.close()
        udp.close()
    assert_repl_intact(sandbox)


@pytest.mark.parametrize(
    "code, error",
    [
        ("import os\nwhile True:\n    os.fork()", "BlockingIOError"),  # a fork bomb fails at its first fork
        ("import subprocess\nsubprocess.run(['ls', '/'])", None),
        ("import os\nos.system('touch /tmp/statelm-escaped')", None),
        ("import os\nos.execv('/bin/sh', ['sh', '-c', 'touch /tmp/statelm-escaped'])", "PermissionError"),
        ("import threading\nthreading.Thread(target=print).start()", "RuntimeError"),
    ],
)
def test_no_processes_or_threads(sandbox, code, error):
    processes_before = _count_processes()
    outcome = run(sandbox, code)
    if error:
        assert outcome.error == error, outcome.output
    assert "bin" not in outcome.output.split("Traceback")[0]  # `ls /` printed nothing
    assert not os.path.exists("/tmp/statelm-escaped")
    assert _count_processes() <= processes_before + 1
    assert_repl_intact(sandbox)


def test_killing_the_parent_or_anything_else_fails(sandbox):
    for code in [
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
        "import os, signal\nos.kill(1, signal.SIGTERM)",
    ]:
        outcome = run(sandbox, code)
        assert outcome.error == "PermissionError", outcome.output
    outcome = run(sandbox, "import os, signal\nos.kill(-1, signal.SIGKILL)")  # everything it may signal: nothing
    assert outcome.error in (None, "PermissionError")
    time.sleep(0.1)
    assert_repl_intact(sandbox)


def test_privileged_operations_fail(sandbox):
    attempts = [
        "import os\nos.setuid(0)",
        "import os\nos.chroot('.')",
        "import socket\nsocket.socket(socket.AF_PACKET, socket.SOCK_RAW)",
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.mount(b'tmpfs', b'.', b'tmpfs', 0, None) == 0, 'mount failed'",
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.ptrace(16, os.getppid(), None, None) == 0, 'ptrace failed'",
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.unshare(0x10000000) == 0, 'unshare failed'",
    ]
    for code in attempts:
        outcome = run(sandbox, code)
        assert outcome.error in ("PermissionError", "AssertionError"), (code, outcome.output)
    assert_repl_intact(sandbox)


def test_huge_allocations_raise_memory_error_and_the_repl_survives(sandbox):
    run(sandbox, "kept = 41")
    growing = "chunks = []\nwhile True:\n    chunks.append(bytearray(2**24))"
    for code in ["x = bytearray(50 * 2**30)", "s = 'a' * 10**10", growing]:
        outcome = run(sandbox, code)
        assert outcome.error == "MemoryError", outcome.output
        run(sandbox, "chunks = None")
    assert run(sandbox, "kept + 1").output.strip() == "42"


def test_infinite_loop_times_out_and_keeps_state(sandbox):
    run(sandbox, "kept = 'still here'")
    started = time.monotonic()
    outcome = run(sandbox, "while True:\n    pass")
    assert outcome.timed_out and outcome.error == "TimeoutError" and not outcome.restarted
    assert 1.5 < time.monotonic() - started < 4
    assert "wall-clock limit" in outcome.output
    assert run(sandbox, "kept").output.strip() == "'still here'"


def test_code_that_ignores_the_timeout_is_killed_and_the_repl_restarts(host_files):
    box = Sandbox("abc", SandboxConfig(block_timeout_seconds=1, grace_seconds=0.5))
    box.start()
    try:
        run(box, "kept = 1")
        started = time.monotonic()
        outcome = run(box, "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass")
        assert outcome.timed_out and outcome.restarted and time.monotonic() - started < 5
        assert "variables are gone" in outcome.output
        after = run(box, "print(context, 'kept' in globals())")
        assert after.output.strip() == "abc False" and box.starts == 2
    finally:
        box.close()


def test_cpu_limit_per_block():
    box = Sandbox("", SandboxConfig(block_timeout_seconds=20, cpu_seconds_per_block=1))
    box.start()
    try:
        outcome = run(box, "while True:\n    pass")  # stopped by CPU time (1-2 s), long before the 20 s wall clock
        assert outcome.timed_out and outcome.error == "CPUTimeExceeded" and outcome.cpu_seconds < 3
        assert run(box, "1 + 1").output.strip() == "2"
    finally:
        box.close()


def test_exits_and_protocol_abuse_are_contained(sandbox, monkeypatch):
    outcome = run(sandbox, "import sys\nsys.exit(3)")
    assert outcome.error == "SystemExit" and not outcome.restarted
    for code in [
        "import os\nos._exit(0)",
        "import os\nfor fd in range(3, 10):\n    try:\n        os.write(fd, b'not json\\n')\n    except OSError:\n"
        "        pass\nprint('done')",
        "import os\nfor fd in range(3, 10):\n    try:\n        os.close(fd)\n    except OSError:\n        pass",
        'import os\nfor fd in range(3, 10):\n    try:\n        os.write(fd, b\'{"op": "surprise"}\\n\')\n'
        "    except OSError:\n        pass\nimport time\ntime.sleep(5)",
    ]:
        outcome = run(sandbox, code)
        assert outcome.restarted and outcome.error == "ReplDied", (code, outcome)
        assert "variables are gone" in outcome.output
        assert_repl_intact(sandbox)
    monkeypatch.setattr("pipeline.env.sandbox.MAX_MESSAGE_BYTES", 1 << 20)
    endless = (
        "import os\nfor fd in range(3, 10):\n    try:\n        os.write(fd, b'x' * (4 << 20))\n"
        "    except OSError:\n        pass"
    )
    outcome = run(sandbox, endless)  # a line without end is cut off by the host
    assert outcome.restarted
    assert_repl_intact(sandbox)


def test_no_host_environment_leaks(monkeypatch):
    monkeypatch.setenv("STATELM_API_KEY", SECRET)
    box = Sandbox("x", SandboxConfig())
    box.start()
    try:
        outcome = run(box, "import os\nprint(dict(os.environ))")
        assert SECRET not in outcome.output and "PATH" in outcome.output
    finally:
        box.close()


def test_the_episode_dir_is_removed_on_close():
    box = Sandbox("x", SandboxConfig())
    box.start()
    base = box._base
    assert base and os.path.isdir(base)
    run(box, "open('f.txt', 'w').write('x')")
    box.close()
    assert not os.path.exists(base) and not box.alive


def _count_processes() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


def test_standard_library_imports_work(sandbox):
    outcome = run(sandbox, "import json, zipfile, collections, sqlite3, email.message\nprint('ok')")
    assert outcome.error is None and outcome.output.strip() == "ok"


def test_no_worker_process_is_left_over():
    box = Sandbox("x", SandboxConfig())
    box.start()
    pid = box.process.pid
    assert _alive(pid)
    box.close()
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


NON_ROOT_HOST = """
import os, sys
sys.path[:0] = {paths!r}
from pipeline.env.sandbox import Sandbox, SandboxConfig
print("IMPORT_OK", flush=True)
box = Sandbox("ctx", SandboxConfig(block_timeout_seconds=2, scratch_root={scratch!r}))
box.start()
for code in ["open('/etc/passwd').read()", "import os; os.kill(os.getppid(), 9)", "import os; os.fork()",
             "import socket; socket.create_connection(('127.0.0.1', 22), timeout=1)", "print(len(context))"]:
    print("RESULT", box.run(code, "<b>", None).error, flush=True)
print("MISSING", box.missing_layers(), flush=True)
box.close()
"""


@pytest.mark.skipif(os.getuid() != 0, reason="the host is already not root: the other tests cover this path")
def test_a_non_root_host_gets_the_same_containment(tmp_path):
    """As another user the worker uses a user namespace instead of dropping root; run a host as `nobody`."""
    import shutil
    import subprocess
    import sys

    import pydantic

    python = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/bin:/usr/local/bin")
    if not python or not shutil.which("setpriv"):
        pytest.skip("no system Python of this version, or no setpriv, to run a host as nobody")
    tmp_path.chmod(0o777)
    for parent in tmp_path.parents:
        if str(parent) in ("/", "/tmp"):
            break
        parent.chmod(parent.stat().st_mode | 0o711)
    site = os.path.dirname(os.path.dirname(pydantic.__file__))
    script = NON_ROOT_HOST.format(paths=[os.getcwd(), site], scratch=str(tmp_path))
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", script]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    if "IMPORT_OK" not in done.stdout:
        pytest.skip(f"the project is not importable as nobody here: {done.stderr[-300:]}")
    results = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert results == ["PermissionError", "PermissionError", "BlockingIOError", "PermissionError", "None"], done
    assert "MISSING []" in done.stdout, done.stdout
