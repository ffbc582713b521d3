"""Hostile programs against the sandbox, as root and as an unprivileged user: 0 escapes, canaries intact.

Each case is a program that tries one escape; the suite runs in a separate host process (the driver
below) so that the same cases run as root and, via ``setpriv``, as ``nobody``. Afterwards the test checks
the verdicts *and* the world: canary files unchanged, nothing new in the host's /tmp, the listener on
127.0.0.1 never reached, no sandbox process left alive, the host alive.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from carelab.watermark import sandbox
from carelab.watermark.sandbox import MARKER

SANDBOX_PY = Path(sandbox.__file__)
PROBLEM = {"prompt": "def twice(x):\n    return x + x\n\n\ndef double(x):\n    \"\"\"2 * x\"\"\"\n",
           "test": "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(5) == twice(5)\n",
           "entry_point": "double"}
WRONG = "def double(x):\n    return x + 2\n"
RIGHT = "def double(x):\n    return 2 * x\n"
LIBC = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
FORK_EXEC = (
    "import _posixsubprocess, os\n"
    "def fork_exec(argv):\n"
    "    r, w = os.pipe()\n"
    "    a = [[os.fsencode(x) for x in argv], [os.fsencode(argv[0])], True, (), None, None,\n"
    "         -1, -1, -1, -1, -1, -1, r, w, False, False, -1, None, None, None, -1, None, False]\n"
    "    try:\n"
    "        pid = _posixsubprocess.fork_exec(*a)\n"
    "    except TypeError:\n"
    "        pid = _posixsubprocess.fork_exec(*a[:-1])\n"
    "    os.close(w)\n"
    "    os.read(r, 100)\n"
    "    return os.waitpid(pid, 0)\n"
)
# Hunts the nonce, then writes a "pass" report to every descriptor it can reach (0-2 are /dev/null and the
# output logs: skipped so that its own printout survives for the test to read).
FORGE = (
    "import gc, json, os, re, sys\n"
    "nonces = set(re.findall(r'[0-9a-f]{32}', open('/proc/self/cmdline').read()))\n"
    "for pid in os.listdir('/proc'):\n"
    "    try:\n"
    "        nonces |= set(re.findall(r'[0-9a-f]{32}', open(f'/proc/{pid}/cmdline').read()))\n"
    "    except OSError:\n"
    "        pass\n"
    "f = sys._getframe()\n"
    "while f is not None:\n"
    "    for v in list(f.f_globals.values()) + list(f.f_locals.values()):\n"
    "        if isinstance(v, dict) and 'nonce' in v:\n"
    "            nonces.add(str(v['nonce']))\n"
    "    f = f.f_back\n"
    "for o in gc.get_objects():\n"
    "    if isinstance(o, str) and re.fullmatch(r'[0-9a-f]{32}', o):\n"
    "        nonces.add(o)\n"
    "try:\n"
    "    open(f'/proc/{os.getppid()}/mem', 'rb')\n"
    "    print('HARNESS MEMORY OPENED')\n"
    "except OSError:\n"
    "    print('harness memory closed')\n"
    "print('nonces found:', len(nonces), flush=True)\n"
    "msgs = [json.dumps({'nonce': n, 'status': 'pass', 'detail': '', 'layers': {}}) for n in nonces or ['x']]\n"
    "targets = [str(fd) for fd in range(3, 64)]\n"
    "for pid in os.listdir('/proc'):\n"
    "    try:\n"
    "        targets += [f'/proc/{pid}/fd/{fd}' for fd in os.listdir(f'/proc/{pid}/fd') if int(fd) > 2]\n"
    "    except OSError:\n"
    "        pass\n"
    "for t in targets:\n"
    "    try:\n"
    "        fd = int(t) if t.isdigit() else os.open(t, os.O_WRONLY | os.O_NONBLOCK)\n"
    "        for m in msgs:\n"
    "            os.write(fd, m.encode())\n"
    "    except (OSError, ValueError):\n"
    "        pass\n"
    "os._exit(0)\n"
)

# name -> (mode, program, statuses allowed, text the detail must contain)
CASES: dict[str, tuple[str, str, list[str], str]] = {
    "loop": ("program", "while True:\n    pass\n", ["timeout"], ""),
    "cpu_burn_in_call": ("humaneval", "def double(x):\n    while True:\n        pass\n", ["timeout"], ""),
    "fork_bomb": ("program", "import os\nwhile True:\n    os.fork()\n", ["error"], "PermissionError"),
    "fork_bomb_ctypes": ("program", LIBC + "import time\nn = 0\nfor _ in range(2000):\n    pid = libc.fork()\n"
                         "    if pid == 0:\n        time.sleep(60)\n        libc._exit(0)\n    if pid < 0:\n"
                         "        break\n    n += 1\nprint('forked', n)\nassert n < 2000\n", ["pass"], ""),
    "memory": ("program", "x = bytearray(3 * 1024 ** 3)\n", ["error"], "MemoryError"),
    "write_outside": ("program", "open(@CANARY@, 'w').write('x')\n", ["error"], ""),
    "delete_outside": ("program", "import os\nos.remove(@CANARY@)\n", ["error"], ""),
    "ctypes_unlink_and_write": ("program", LIBC + "libc.unlink(@CANARY@.encode())\n"
                                "fd = libc.open(b'/tmp/@TOK@-ctypes', 0o101, 0o644)\nlibc.write(fd, b'x', 1)\n"
                                "libc.close(fd)\n", ["pass", "error"], ""),
    "subprocess": ("program", "import subprocess\nsubprocess.run(['rm', '-f', @CANARY@])\n", ["error"],
                   "PermissionError"),
    "posixsubprocess": ("program", FORK_EXEC + "print(fork_exec(['/bin/rm', '-f', @CANARY@]))\n"
                        "print(fork_exec(['/usr/bin/touch', '/tmp/@TOK@-forkexec']))\n", ["pass", "error"], ""),
    "sqlite_mkfifo": ("program", "import os, sqlite3\nsqlite3.connect('/tmp/@TOK@.db').execute('create table t(x)')\n"
                      "os.mkfifo('/tmp/@TOK@.fifo')\n", ["pass", "error"], ""),
    "socket": ("program", "import socket\nsocket.create_connection(('127.0.0.1', @PORT@), timeout=1)\n", ["error"],
               ""),
    "ctypes_connect": ("program", LIBC + "import struct\ns = libc.socket(2, 1, 0)\n"
                       "addr = struct.pack('<H', 2) + struct.pack('>H', @PORT@) + bytes([127, 0, 0, 1]) + bytes(8)\n"
                       "rc = libc.connect(s, addr, 16)\nprint('connect', rc)\nassert rc != 0\n", ["pass"], ""),
    # the harness is the namespace's init: signals from inside cannot kill it, so the run still ends cleanly
    "kill_parent": ("program", "import os\nos.kill(os.getppid(), 9)\nprint('harness alive')\n", ["pass"], ""),
    "kill_all": ("program", "import os\ntry:\n    os.kill(-1, 9)\nexcept ProcessLookupError:\n    pass\n",
                 ["pass"], ""),
    "ptrace_harness": ("program", LIBC + "import os\nprint('ptrace', libc.ptrace(16, os.getppid(), 0, 0))\n",
                       ["pass"], ""),
    "setsid_daemon": ("program", LIBC + "import os, time\nif libc.fork() == 0:\n    libc.setsid()\n"
                      "    if libc.fork() == 0:\n        time.sleep(30)\n        open('/tmp/@TOK@-daemon', 'w')\n"
                      "    libc._exit(0)\ntime.sleep(0.3)\n", ["pass"], ""),
    "disk_fill": ("program", "i = 0\nwhile True:\n    open(f'/tmp/fill{i}', 'wb').write(b'x' * (4 << 20))\n"
                  "    i += 1\n", ["error"], "No space left"),
    "stdout_flood": ("program", "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", ["error"],
                     "File too large"),
    "segfault": ("program", "import ctypes\nctypes.string_at(0)\n", ["error"], "SIGSEGV"),
    "sys_exit_program": ("program", "import sys\nsys.exit(0)\n", ["error"], "SystemExit(0)"),
    "sys_exit_main": ("humaneval", WRONG + "def main():\n    return 0\nif __name__ == '__main__':\n"
                      "    import sys\n    sys.exit(main())\n", ["error"], "SystemExit(0) before the tests"),
    "exit_in_candidate": ("humaneval", "import sys\ndef double(x):\n    sys.exit(0)\n", ["error"], "SystemExit"),
    "os_exit_in_candidate": ("humaneval", "import os\ndef double(x):\n    os._exit(0)\n", ["error"], "exited"),
    "eq_always_true": ("humaneval", "class Yes:\n    def __eq__(self, other):\n        return True\n"
                       "def double(x):\n    return Yes()\n", ["fail"], ""),
    "forged_report": ("program", FORGE, ["error"], ""),
    "forged_report_humaneval": ("humaneval", WRONG + FORGE, ["error"], ""),
    "redefined_helper": ("humaneval", "def twice(x):\n    return 4\ndef double(x):\n    return 4\n", ["fail"], ""),
    "right_answer": ("humaneval", RIGHT, ["pass"], ""),
}

DRIVER = r'''
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("sbx", sys.argv[1])
sbx = importlib.util.module_from_spec(spec)
sys.modules["sbx"] = sbx
spec.loader.exec_module(sbx)
cases = json.load(open(sys.argv[2]))
limits = sbx.Limits(wall_s=4, cpu_s=2, memory_mb=512, nproc=8, fsize_mb=4, disk_mb=16)
out = {"isolation": sbx.isolation(limits), "results": {}}
if out["isolation"][0]:
    for name, (mode, code, problem) in cases.items():
        r = (sbx.run_humaneval(problem, code, limits) if mode == "humaneval" else sbx.run_program(code, limits))
        out["results"][name] = {"status": r.status, "detail": r.detail, "stdout": r.stdout,
                                "contained": {k: v for k, v in r.contained.items() if k != "limits"}}
print(json.dumps(out))
'''


def _listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(5)
    s.setblocking(False)
    return s


def _marker_processes() -> list[int]:
    """Live processes running the sandbox bootstrap (any sandbox left behind)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if MARKER.encode() in cmd and stat.split(")")[-1].split()[0] != "Z":
                found.append(int(pid))
    return found


def _run_suite(as_user: int | None) -> None:
    """Run every case in a driver process (as ``as_user`` if given) and check verdicts and side effects."""
    base = Path(tempfile.mkdtemp(prefix="carelab-hostile-"))
    try:
        base.chmod(0o755)
        canary_dir = base / "canaries"
        canary_dir.mkdir()
        canary = canary_dir / "canary.txt"
        canary.write_text("precious")
        if as_user is not None:
            for p in (canary_dir, canary):
                os.chown(p, as_user, as_user)
        shutil.copy(SANDBOX_PY, base / "sandbox.py")
        (base / "driver.py").write_text(DRIVER)
        tok = f"carelab-hostile-{os.getpid()}-{time.time_ns()}"
        listener = _listener()
        port = listener.getsockname()[1]
        fill = {"@CANARY@": repr(str(canary)), "@TOK@": tok, "@PORT@": str(port)}
        cases = {}
        for name, (mode, code, _, _) in CASES.items():
            for key, value in fill.items():
                code = code.replace(key, value)
            cases[name] = (mode, code, PROBLEM)
        (base / "cases.json").write_text(json.dumps(cases))
        for p in base.iterdir():
            p.chmod(0o755 if p.is_dir() else 0o644)
        canary.chmod(0o644)
        before_tmp = set(os.listdir("/tmp"))
        if as_user is None:
            cmd = [sys.executable, str(base / "driver.py")]
        else:
            cmd = ["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups", "/usr/bin/python3",
                   "-I", str(base / "driver.py")]
        proc = subprocess.run([*cmd, str(base / "sandbox.py"), str(base / "cases.json")], capture_output=True,
                              text=True, timeout=600, cwd=str(base), env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout)
        if not out["isolation"][0]:
            pytest.skip(f"no OS isolation for this user: {out['isolation'][1]}")
        results = out["results"]
        escapes = []
        for name, (_, _, statuses, text) in CASES.items():
            r = results[name]
            if r["status"] not in statuses or text not in r["detail"]:
                escapes.append(f"{name}: {r['status']} ({r['detail']}) expected {statuses} {text!r}")
            if r["contained"].get("isolation") != "bwrap":
                escapes.append(f"{name}: not isolated: {r['contained']}")
        forked = int(results["fork_bomb_ctypes"]["stdout"].split("forked")[1].split()[0])
        assert forked < 8, f"RLIMIT_NPROC did not bind: {forked} forks"
        for name in ("forged_report", "forged_report_humaneval"):
            assert "harness memory closed\nnonces found: 0" in results[name]["stdout"]
        assert "connect -1" in results["ctypes_connect"]["stdout"]
        assert "ptrace -1" in results["ptrace_harness"]["stdout"]
        time.sleep(0.5)
        assert canary.read_text() == "precious", "canary modified"
        assert sorted(p.name for p in canary_dir.iterdir()) == ["canary.txt"]
        stray = sorted(n for n in set(os.listdir("/tmp")) - before_tmp if tok in n)
        assert not stray, f"files appeared in the host's /tmp: {stray}"
        try:
            listener.accept()
            escapes.append("a program reached the host's 127.0.0.1 listener")
        except BlockingIOError:
            pass
        listener.close()
        assert not _marker_processes(), "sandbox processes outlived their run"
        assert not escapes, "\n".join(escapes)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_hostile_programs_as_the_current_user():
    _run_suite(None)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to an unprivileged user needs root")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs a system /usr/bin/python3 for 'nobody'")
def test_hostile_programs_as_an_unprivileged_user():
    _run_suite(65534)
