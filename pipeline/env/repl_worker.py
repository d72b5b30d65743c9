"""The REPL process of the RLM environment: it confines itself, then runs the model's code blocks.

`pipeline/env/sandbox.py` starts it as `python -I -S repl_worker.py '<settings json>'` in a new
session. It uses the standard library only (the project's packages are not importable in the
sandbox) and must stay a single self-contained file.

Start-up, in this order, before any model code runs:
1. read the `init` message (the task input, bound to `context`);
2. as root: new mount, network, IPC and UTS namespaces; the episode's scratch directory becomes a
   size-limited tmpfs (`scratch_mb`; it vanishes with the process), /run is hidden (system services' unix
   sockets), the Python standard library is bind-mounted read-only where the unprivileged user can reach
   it; then setgroups/setresgid/setresuid to `nobody`, which drops every capability (no privileged
   operation, no signal to the host, no root-only file). As another user: the same namespaces inside a
   new user namespace when the kernel allows it, then every capability dropped;
3. no_new_privs (setuid programs cannot give privileges back), then Landlock (kernel >= 5.13): read-only
   access to the standard library and the system's shared libraries, read-write access to the scratch
   directory only, no execve anywhere, no TCP bind or connect (ABI >= 4), no signals or abstract unix
   sockets outside the sandbox (ABI >= 6, kernel >= 6.12);
4. seccomp (libseccomp, which apt depends on, so every Debian system has it): new namespaces (a nested
   user namespace would hand out capabilities), mount, ptrace, process_vm_*, keyrings, BPF, perf,
   userfaultfd, io_uring, open_by_handle_at, modules, kexec and clock setting fail with EPERM;
5. resource limits: address space (`memory_mb`: big allocations raise MemoryError), CPU time per block
   and per episode, file size, open files, no new processes or threads (`RLIMIT_NPROC` = 0).

Protocol: one JSON object per line. Host -> worker: `init`, then `exec` {code, name} and the
`llm_result` {responses} answering a request. Worker -> host: `ready` {layers}, `llm` {prompts} while a
block runs, and `result` {output, error, syntax_error, answer, ...} when it ends.
"""

import ast
import builtins
import collections
import ctypes
import errno
import importlib
import io
import json
import linecache
import os
import resource
import signal
import stat
import sys
import sysconfig
import time
import traceback

# Imported before the sandbox closes, so model code finds them in sys.modules even where the standard
# library is not readable (no namespaces); every other stdlib module is read from the library on demand.
PRELOAD = (
    "base64 bisect csv dataclasses datetime difflib fractions functools hashlib heapq itertools math operator "
    "random re statistics string textwrap typing unicodedata"
).split()

WORKER_FILE = os.path.abspath(__file__)
LIBC = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_RULE_PATH_BENEATH = 1

# Landlock filesystem rights by ABI version (linux/landlock.h).
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_TRUNCATE = 1 << 14
FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
FS_ALL_LATEST = (1 << 16) - 1  # ABI 5 added IOCTL_DEV (1 << 15)
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
READ_ONLY = FS_READ_FILE | FS_READ_DIR

# seccomp (through libseccomp, which apt itself depends on): system calls that only serve escapes or kernel
# attack surface fail with EPERM. Names unknown on this architecture are skipped.
SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, SCMP_CMP_MASKED_EQ = 0x7FFF0000, 0x00050000, 7
DENIED_SYSCALLS = (
    "unshare setns mount umount2 pivot_root chroot move_mount open_tree fsopen fsconfig fsmount fspick "
    "mount_setattr ptrace process_vm_readv process_vm_writev keyctl add_key request_key bpf perf_event_open "
    "userfaultfd io_uring_setup io_uring_enter io_uring_register open_by_handle_at name_to_handle_at kexec_load "
    "kexec_file_load init_module finit_module delete_module reboot swapon swapoff syslog acct quotactl "
    "lookup_dcookie vhangup iopl ioperm settimeofday clock_settime adjtimex clock_adjtime sethostname "
    "setdomainname"
).split()

SANDBOX_HINT = (
    "(The sandbox allows no network, no subprocesses or threads, and file access only in the scratch "
    "directory, which is the current directory; memory, file sizes and the scratch space are limited.)"
)


class BlockTimeout(BaseException):
    """Raised in model code when the block's wall-clock time is up (not catchable by `except Exception`)."""


class CPULimit(BaseException):
    """Raised in model code when the block's CPU time is up."""


class LandlockRulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]  # fmt: skip


class LandlockPathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class ScmpArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_uint), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]  # fmt: skip


# ----------------------------------------------------------------------------- confinement


def _check(result, what):
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def _mount(source, target, fstype, flags, data):
    enc = [None if v is None else v.encode() for v in (source, target, fstype, data)]
    _check(LIBC.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]), f"mount {target}")


def _unshare_namespaces(settings, layers):
    """New mount/net/IPC/UTS namespaces (inside a new user namespace when not root); tmpfs scratch."""
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    if uid != 0:
        flags |= CLONE_NEWUSER
    try:
        _check(LIBC.unshare(flags), "unshare")
    except OSError as exc:
        layers["namespaces_error"] = str(exc)
        return False
    if uid != 0:
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as handle:
                handle.write(text)
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    owner = f"uid={settings['run_uid']},gid={settings['run_gid']}" if uid == 0 else f"uid={uid},gid={gid}"
    size = f"size={settings['scratch_mb']}m,nr_inodes=4096,mode=0700,{owner}"
    _mount("tmpfs", settings["scratch"], "tmpfs", MS_NOSUID | MS_NODEV, size)
    layers["scratch_tmpfs_mb"] = settings["scratch_mb"]
    scratch_in_run = os.path.realpath(settings["scratch"]).startswith("/run/")
    if os.path.isdir("/run") and not os.path.islink("/run") and not scratch_in_run:  # system services' sockets
        _mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=4k,mode=0755")
        layers["run_hidden"] = True
    return True


def _stdlib_dirs():
    paths = sysconfig.get_paths()
    dirs = {os.path.realpath(paths["stdlib"]), os.path.realpath(paths["platstdlib"])}
    dirs |= {os.path.realpath(p) for p in sys.path if os.path.isdir(p)}
    return sorted(d for d in dirs if os.path.isdir(d))


def _bind_stdlib(settings, layers):
    """Make the standard library readable by `nobody` (it may sit under root's home): a read-only bind mount."""
    target = settings["python_dir"]
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    _mount(stdlib, target, None, MS_BIND | MS_REC, None)
    _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)

    def moved(path):
        real = os.path.realpath(path)
        return target + real[len(stdlib) :] if real == stdlib or real.startswith(stdlib + os.sep) else path

    sys.path[:] = [moved(p) for p in sys.path]
    for module in list(sys.modules.values()):  # packages imported so far look for submodules in their __path__
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            search[:] = [moved(p) for p in search]
    sys.path_importer_cache.clear()
    layers["stdlib_bind"] = target


def _drop_root(settings, layers):
    os.setgroups([])
    os.setresgid(settings["run_gid"], settings["run_gid"], settings["run_gid"])
    os.setresuid(settings["run_uid"], settings["run_uid"], settings["run_uid"])
    layers["uid"] = os.getuid()


def _drop_capabilities(layers):
    """capset(all zero): the creator of a user namespace holds every capability inside it."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    data = (Data * 2)()
    _check(LIBC.capset(ctypes.byref(Header(0x20080522, 0)), data), "capset")
    layers["capabilities"] = "none"


def _landlock(settings, read_paths, layers):
    """Landlock: read the runtime, write the scratch directory, nothing else; no TCP; scoped signals."""
    syscall = LIBC.syscall
    syscall.restype = ctypes.c_long
    abi = syscall(ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        layers["landlock_error"] = os.strerror(ctypes.get_errno())
        return
    handled = FS_RIGHTS_BY_ABI.get(abi, FS_ALL_LATEST)
    attr = LandlockRulesetAttr(handled, 0, 0)
    size = 8
    if abi >= 4:
        attr.handled_access_net, size = NET_BIND_TCP | NET_CONNECT_TCP, 16
    if abi >= 6:
        attr.scoped, size = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL, 24
    ruleset = _check(
        syscall(ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(size),
                ctypes.c_uint32(0)), "landlock_create_ruleset")  # fmt: skip
    file_rights = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | (FS_TRUNCATE if abi >= 3 else 0)
    rules = [(p, READ_ONLY) for p in read_paths]
    rules += [(settings["scratch"], handled & ~FS_EXECUTE), ("/dev/null", FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE)]
    rules += [("/dev/urandom", FS_READ_FILE), ("/dev/zero", FS_READ_FILE)]
    allowed = []
    for path, rights in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= file_rights
        rule = LandlockPathBeneathAttr(rights & handled, fd)
        _check(syscall(ctypes.c_long(SYS_LANDLOCK_ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(1),
                       ctypes.byref(rule), ctypes.c_uint32(0)), f"landlock_add_rule {path}")  # fmt: skip
        os.close(fd)
        allowed.append(path)
    _check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(no_new_privs)")
    _check(syscall(ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)),
           "landlock_restrict_self")  # fmt: skip
    os.close(ruleset)
    layers.update(landlock_abi=int(abi), landlock_tcp=abi >= 4, landlock_scoped_signals=abi >= 6)
    layers["readable"] = allowed


def _open_libseccomp(layers):
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        layers["seccomp_error"] = f"libseccomp.so.2 not found: {exc}"
        return None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.c_void_p]  # fmt: skip
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def _seccomp(lib, layers):
    """Deny DENIED_SYSCALLS, new namespaces through clone, and clone3 (ENOSYS: its flags cannot be inspected)."""
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        layers["seccomp_error"] = "seccomp_init failed"
        return
    try:
        denied = 0
        for name in DENIED_SYSCALLS:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number >= 0 and lib.seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO | errno.EPERM, number, 0, None) == 0:
                denied += 1
        clone = lib.seccomp_syscall_resolve_name(b"clone")
        if clone >= 0:
            for flag in (CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET):
                check = ScmpArgCmp(0, SCMP_CMP_MASKED_EQ, flag, flag)
                lib.seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO | errno.EPERM, clone, 1, ctypes.byref(check))
        clone3 = lib.seccomp_syscall_resolve_name(b"clone3")
        if clone3 >= 0:
            lib.seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO | errno.ENOSYS, clone3, 0, None)
        code = lib.seccomp_load(ctx)
        if code != 0:
            layers["seccomp_error"] = f"seccomp_load: {os.strerror(-code)}"
            return
        layers["seccomp_denied_syscalls"] = denied
    finally:
        lib.seccomp_release(ctx)


def _limits(settings, layers):
    mb = 1024 * 1024
    limits = {
        "RLIMIT_CORE": 0,
        "RLIMIT_NOFILE": settings["max_open_files"],
        "RLIMIT_FSIZE": settings["max_file_mb"] * mb,
        "RLIMIT_NPROC": 0,  # no fork, no threads (per-user count: checked only for a non-root user)
        "RLIMIT_AS": settings["memory_mb"] * mb,
    }
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))
    total = settings["max_cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (total, total + 1))
    layers["limits"] = {k.removeprefix("RLIMIT_").lower(): v for k, v in limits.items()} | {"cpu_total": total}


def confine(settings):
    """Apply every layer that the system allows; returns what is in force (the host decides if that is enough)."""
    layers = {"pid": os.getpid(), "start_uid": os.getuid()}
    libseccomp = _open_libseccomp(layers)
    namespaces = settings["namespaces"] and _unshare_namespaces(settings, layers)
    layers["namespaces"] = bool(namespaces)
    read_paths = list(settings["system_read_paths"])
    if os.getuid() == 0:
        if namespaces:
            _bind_stdlib(settings, layers)
            read_paths.append(settings["python_dir"])
        else:
            read_paths += _stdlib_dirs()
        os.chdir(settings["scratch"])  # enter the tmpfs (or the plain directory) before losing root
        _drop_root(settings, layers)
    else:
        os.chdir(settings["scratch"])
        read_paths += _stdlib_dirs()
        if namespaces:
            _drop_capabilities(layers)
    try:
        _landlock(settings, read_paths, layers)
    except OSError as exc:
        layers["landlock_error"] = str(exc)
    if "landlock_abi" not in layers:
        LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if libseccomp is not None:
        _seccomp(libseccomp, layers)
    _limits(settings, layers)
    layers["uid"] = os.getuid()
    return layers


# ----------------------------------------------------------------------------- the REPL


class Capture(io.TextIOBase):
    """stdout/stderr of a block: keeps the first and last `limit // 2` characters and counts the rest."""

    def __init__(self, limit):
        self.half, self.head, self.head_size = max(limit // 2, 1), [], 0
        self.tail, self.tail_size, self.total = collections.deque(), 0, 0

    def writable(self):
        return True

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        size = len(text)
        self.total += size
        if self.head_size < self.half:
            take = text[: self.half - self.head_size]
            self.head.append(take)
            self.head_size += len(take)
            text = text[len(take) :]
        if text:
            self.tail.append(text[-self.half :])
            self.tail_size += len(self.tail[-1])
            while self.tail_size - len(self.tail[0]) >= self.half:
                self.tail_size -= len(self.tail.popleft())
        return size

    def text(self, limit):
        head, tail = "".join(self.head), "".join(self.tail)
        if len(head) + len(tail) == self.total:
            return head + tail
        tail = tail[-self.half :]
        cut = self.total - len(head) - len(tail)
        note = f"\n... [{cut} characters cut: the output was {self.total} characters, the limit is {limit}] ...\n"
        return head + note + tail


class Channel:
    """The JSON-lines link to the host on two private file descriptors."""

    def __init__(self):
        self.reader = os.fdopen(os.dup(0), "rb")
        self.writer = os.fdopen(os.dup(1), "wb")
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.close(devnull)

    def send(self, message):
        self.writer.write(json.dumps(message).encode() + b"\n")
        self.writer.flush()

    def receive(self):
        line = self.reader.readline()
        return json.loads(line) if line else None


class Repl:
    def __init__(self, channel, settings, context):
        self.channel, self.settings = channel, settings
        self.blocks = 0
        self.namespace = {
            "__name__": "__main__",
            "__builtins__": builtins,
            "context": context,
            "answer": {"content": "", "ready": False},
            "llm_query": self.llm_query,
            "llm_query_batched": self.llm_query_batched,
        }

    # -- sub-model calls (answered by the host) --------------------------------------------------
    def llm_query(self, prompt):
        """Ask the sub-model one prompt; returns its reply (a string starting "[llm_query error" on failure)."""
        return self.llm_query_batched([prompt])[0]

    def llm_query_batched(self, prompts):
        """Ask the sub-model several prompts concurrently; replies in the same order."""
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise TypeError("llm_query_batched takes a list of prompt strings")
        prompts = [p if isinstance(p, str) else str(p) for p in prompts]
        if not prompts:
            return []
        limit = self.settings["max_prompt_chars"]
        too_long = [i for i, p in enumerate(prompts) if len(p) > limit]
        if too_long:
            raise ValueError(f"prompt {too_long[0]} has {len(prompts[too_long[0]])} characters; the limit is {limit}")
        if len(prompts) > self.settings["max_batch"]:
            raise ValueError(f"{len(prompts)} prompts in one batch; the limit is {self.settings['max_batch']}")
        remaining = signal.setitimer(signal.ITIMER_REAL, 0)[0]  # sub-model time does not count against the block
        try:
            self.channel.send({"op": "llm", "prompts": prompts})
            reply = self.channel.receive()
        finally:
            if remaining > 0:
                signal.setitimer(signal.ITIMER_REAL, remaining)
        if not reply or reply.get("op") != "llm_result":
            raise RuntimeError("llm_query: no answer from the host")
        return [str(r) for r in reply["responses"]]

    # -- one block -------------------------------------------------------------------------------
    def run(self, code, name):
        self.blocks += 1
        capture = Capture(self.settings["max_output_chars"])
        result = {"op": "result", "error": None, "syntax_error": False, "timed_out": False, "answer": None}
        started, cpu_started = time.monotonic(), _cpu_seconds()
        try:
            body, last = _compile(code, name)
        except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as exc:
            capture.write("".join(traceback.format_exception_only(type(exc), exc)))
            result.update(error=type(exc).__name__, syntax_error=True)
            return self._finish(result, capture, started, cpu_started)
        linecache.cache[name] = (len(code), None, code.splitlines(keepends=True), name)
        stdout, stderr = sys.stdout, sys.stderr
        try:
            self._arm()
            sys.stdout = sys.stderr = capture
            try:
                exec(body, self.namespace)
                if last is not None:
                    value = eval(last, self.namespace)
                    if value is not None:
                        capture.write(repr(value) + "\n")
            except BaseException as exc:  # everything model code raises is reported, nothing ends the REPL
                result.update(_describe_error(exc, capture))
            if not result["timed_out"]:  # an answer set before an error still counts
                result["answer"] = _read_answer(self.namespace, self.settings["max_answer_chars"])
        except BaseException as exc:  # a limit that struck while the error or the answer was read
            result.update(_describe_error(exc, capture))
        finally:
            self._disarm()
            sys.stdout, sys.stderr = stdout, stderr
        return self._finish(result, capture, started, cpu_started)

    def _finish(self, result, capture, started, cpu_started):
        result["output"] = capture.text(self.settings["max_output_chars"])
        result["output_chars"] = capture.total
        result["seconds"] = round(time.monotonic() - started, 4)
        result["cpu_seconds"] = round(_cpu_seconds() - cpu_started, 4)
        return result

    def _arm(self):
        used = _cpu_seconds()
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        soft = min(int(used) + 1 + self.settings["cpu_seconds_per_block"], hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        signal.setitimer(signal.ITIMER_REAL, self.settings["block_timeout"])

    def _disarm(self):
        signal.setitimer(signal.ITIMER_REAL, 0)


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _compile(code, name):
    """The block as code objects: the statements, and the last one apart when it is an expression."""
    tree = ast.parse(code, filename=name, mode="exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = compile(ast.Expression(tree.body.pop().value), name, "eval")
    return compile(tree, name, "exec"), last


def _read_answer(namespace, limit):
    """The `answer` dict as {ready, content}; only a plain dict counts."""
    answer = namespace.get("answer")
    if type(answer) is not dict:
        return {"ready": False, "content": "", "problem": f"`answer` is a {type(answer).__name__}, not a dict"}
    content = answer.get("content", "")
    if isinstance(content, (list, tuple, set, frozenset)):
        content = ", ".join(str(item) for item in content)
    elif not isinstance(content, str):
        content = str(content)
    return {"ready": answer.get("ready") is True, "content": content[:limit]}


def _describe_error(exc, capture):
    if isinstance(exc, BlockTimeout):
        capture.write("\nTimeoutError: the block ran longer than its wall-clock limit; stopped.\n")
        return {"error": "TimeoutError", "timed_out": True}
    if isinstance(exc, CPULimit):
        capture.write("\nTimeoutError: the block used up its CPU time; stopped.\n")
        return {"error": "CPUTimeExceeded", "timed_out": True}
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != WORKER_FILE]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames)] if frames else []
    lines += traceback.format_exception_only(type(exc), exc)
    if isinstance(exc, SystemExit):
        lines.append("(exit() does not end the REPL; the variables are kept.)\n")
    if isinstance(exc, (PermissionError, BlockingIOError, MemoryError)) or (
        isinstance(exc, OSError)
        and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENETUNREACH, errno.ENOSPC, errno.EFBIG)
    ):
        lines.append(SANDBOX_HINT + "\n")
    if isinstance(exc, RuntimeError) and "thread" in str(exc):
        lines.append(SANDBOX_HINT + "\n")
    capture.write("\n" + "".join(lines))
    return {"error": type(exc).__name__}


def _on_alarm(signum, frame):
    raise BlockTimeout()


def _on_xcpu(signum, frame):
    raise CPULimit()


def main():
    settings = json.loads(sys.argv[1])
    for name in PRELOAD:
        importlib.import_module(name)
    channel = Channel()
    init = channel.receive()
    if not init or init.get("op") != "init":
        sys.exit(2)
    layers = confine(settings)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGXCPU, _on_xcpu)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writing past the file-size limit fails with EFBIG instead
    repl = Repl(channel, settings, init["context"])
    del init
    channel.send({"op": "ready", "layers": layers})
    while True:
        message = channel.receive()
        if message is None or message.get("op") == "close":
            return
        if message.get("op") == "exec":
            try:
                result = repl.run(str(message["code"]), str(message.get("name", "<block>")))
            except (BlockTimeout, CPULimit) as exc:  # the limit struck between the model's code and the reply
                result = {"op": "result", "output": "", "output_chars": 0, "error": type(exc).__name__,
                          "syntax_error": False, "timed_out": True, "answer": None}  # fmt: skip
            channel.send(result)


if __name__ == "__main__":
    main()
