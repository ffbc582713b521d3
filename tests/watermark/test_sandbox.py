"""Sandbox: outcomes are classified with their real cause, isolation is required, identities never collide."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from carelab.watermark import sandbox
from carelab.watermark.sandbox import IsolationUnavailable, Limits, isolation, run_humaneval, run_program

QUICK = Limits(wall_s=4, cpu_s=3, memory_mb=512, nproc=8)
ISOLATED, WHY = isolation()
needs_isolation = pytest.mark.skipif(not ISOLATED, reason=f"no OS isolation on this machine: {WHY}")


@needs_isolation
def test_pass_fail_error_are_distinguished():
    r = run_program("assert sum([1, 2]) == 3\nprint('ok')\n", QUICK)
    assert (r.status, r.stdout) == ("pass", "ok\n")
    assert r.contained["isolation"] == "bwrap" and r.contained["nondumpable"]
    r = run_program("assert 1 == 2, 'wrong'\n", QUICK)
    assert (r.status, r.detail) == ("fail", "AssertionError: wrong")
    r = run_program("def f(:\n", QUICK)
    assert r.status == "error" and "SyntaxError" in r.detail
    r = run_program("import sys\nsys.exit(3)\n", QUICK)
    assert r.status == "error" and "SystemExit(3)" in r.detail


@needs_isolation
def test_exiting_early_is_never_a_pass():
    for code in ("import sys\nsys.exit(0)\n", "import sys\nsys.exit()\n", "import os\nos._exit(0)\n"):
        r = run_program(code, QUICK)
        assert r.status == "error" and "before reaching its end" in r.detail, (code, r.detail)


@needs_isolation
def test_humaneval_pass_needs_the_tests_to_finish():
    from carelab.watermark.humaneval import load_problems

    p = load_problems(limit=3)[2]
    assert run_humaneval(p.as_dict(), p.prompt + p.canonical_solution, QUICK).status == "pass"
    assert run_humaneval(p.as_dict(), p.prompt + "    return 0\n", QUICK).status == "fail"
    main_exit = p.prompt + "    return 0\n\nif __name__ == '__main__':\n    import sys\n    sys.exit(0)\n"
    r = run_humaneval(p.as_dict(), main_exit, QUICK)
    assert (r.status, r.detail) == ("error", "SystemExit(0) before the tests finished")
    r = run_humaneval(p.as_dict(), "x = 1\n", QUICK)
    assert r.status == "error" and "does not define" in r.detail


@needs_isolation
def test_timeouts_and_signals_name_their_cause_and_fill_contained():
    r = run_program("while True:\n    pass\n", Limits(wall_s=2, cpu_s=30))
    assert (r.status, r.detail) == ("timeout", "wall-clock limit (2 s)") and r.duration_s < 10
    assert r.contained["isolation"] == "bwrap" and r.contained["uid"] is not None
    r = run_program("while True:\n    pass\n", Limits(wall_s=60, cpu_s=1))
    assert r.status == "timeout" and "CPU limit" in r.detail and "SIGXCPU" in r.detail
    r = run_program("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", QUICK)
    assert r.status == "error" and "SIGKILL" in r.detail and "not the CPU limit" in r.detail
    r = run_program("import ctypes\nctypes.string_at(0)\n", QUICK)
    assert (r.status, r.detail) == ("error", "the program was killed by SIGSEGV")
    assert r.contained["RLIMIT_AS"] and r.contained["namespaces"]


@needs_isolation
def test_memory_and_processes_are_bounded():
    r = run_program("x = bytearray(3 * 1024 ** 3)\n", QUICK)
    assert r.status == "error" and "MemoryError" in r.detail
    r = run_program("import os\nwhile True:\n    os.fork()\n", QUICK)
    assert r.status == "error" and "PermissionError" in r.detail
    code = ("import os, time\nn = 0\ntry:\n    for _ in range(100):\n        if os.fork() == 0:\n"
            "            time.sleep(30)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\n"
            "print('forked', n)\n")
    r = run_program(code, Limits(wall_s=10, cpu_s=5, nproc=8, allow_subprocess=True))
    assert r.status == "pass", (r.detail, r.stderr)
    assert int(r.stdout.split("forked")[1].split()[0]) < 8
    uid = r.contained["uid"]
    if os.geteuid() == 0:  # the run's throw-away uid owns nothing any more
        assert uid != 0 and not [p for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) == uid]


def _uid_of(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


@needs_isolation
def test_the_host_filesystem_is_out_of_reach(tmp_path: Path):
    target = tmp_path / "escaped.txt"
    r = run_program(f"open({str(target)!r}, 'w').write('x')\n", QUICK)
    assert r.status == "error" and not target.exists()
    inside = run_program("open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'\n"
                         "open('/tmp/t', 'w').write('y')\n", QUICK)
    assert inside.status == "pass", inside.detail


@needs_isolation
def test_file_size_and_total_disk_are_capped():
    r = run_program("f = open('big', 'wb')\nwhile True:\n    f.write(b'x' * 2 ** 20)\n", Limits(wall_s=10, fsize_mb=2))
    assert r.status == "error" and "File too large" in r.detail
    fill = "for i in range(10):\n    open(f'f{i}', 'wb').write(b'x' * (3 << 20))\n"
    r = run_program(fill, Limits(wall_s=10, fsize_mb=4, disk_mb=8))
    assert r.status == "error" and "No space left" in r.detail
    assert run_program(fill, Limits(wall_s=10, fsize_mb=4, disk_mb=40)).status == "pass"


@needs_isolation
def test_network_is_unavailable():
    r = run_program("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))\n", QUICK)
    assert r.status == "error" and "network" in r.detail
    r = run_program("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))\n",
                    Limits(wall_s=4, network=True))  # the hook allows it; the empty namespace still refuses
    assert r.status == "error" and "ConnectionRefusedError" in r.detail


def test_non_utf8_source_is_a_one_line_error():
    for code in ("x = '\udcff'\n", b"x = '\xff'\n"):
        r = run_program(code, QUICK)
        assert r.status == "error" and r.detail.startswith("the program is not valid UTF-8") and "\n" not in r.detail


def test_without_isolation_it_refuses_unless_told(monkeypatch):
    monkeypatch.setattr(sandbox, "_CACHE", {})
    monkeypatch.setenv("PATH", "/nonexistent")
    assert isolation() == (False, "bubblewrap (bwrap) is not installed")
    with pytest.raises(IsolationUnavailable, match="bubblewrap"):
        run_program("pass\n", QUICK)
    unsafe = Limits(wall_s=4, cpu_s=3, memory_mb=512, nproc=8, allow_unisolated=True)
    r = run_program("print('ran')\n", unsafe)
    assert (r.status, r.stdout, r.contained["isolation"]) == ("pass", "ran\n", "none")
    r = run_program("import os\nos.fork()\n", unsafe)  # the audit hook is all that is left, and it still holds
    assert r.status == "error" and "PermissionError" in r.detail
    r = run_program("import sys\nsys.exit(0)\n", unsafe)
    assert r.status == "error" and "SystemExit(0)" in r.detail


def test_cli_sandbox_requires_isolation_or_the_flag(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from carelab.watermark.cli import app

    src = tmp_path / "p.py"
    src.write_text("print('hi')\n")
    monkeypatch.setattr(sandbox, "_CACHE", {})
    monkeypatch.setenv("PATH", "/nonexistent")
    out = CliRunner().invoke(app, ["sandbox", str(src)])
    assert out.exit_code != 0 and "--no-isolation" in out.output and "Traceback" not in out.output
    out = CliRunner().invoke(app, ["sandbox", str(src), "--no-isolation"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["contained"]["isolation"] == "none"
    bad = tmp_path / "bad.py"
    bad.write_bytes(b"x = '\xff'\n")
    out = CliRunner().invoke(app, ["sandbox", str(bad), "--no-isolation"])
    assert out.exit_code != 0 and len(out.output.strip().splitlines()) == 1 and "UTF-8" in out.output


@pytest.mark.skipif(os.geteuid() != 0, reason="throw-away uids are allocated only when the host runs as root")
def test_run_uids_are_unique_while_held(monkeypatch, tmp_path):
    picks = iter([7, 7, 8])
    monkeypatch.setattr(sandbox.secrets, "randbelow", lambda n: next(picks))
    monkeypatch.setattr(sandbox, "_LOCK_DIR", tmp_path / "locks")
    with sandbox._run_uid(True) as first, sandbox._run_uid(True) as second:
        assert first == sandbox._UID_LO + 7 and second == sandbox._UID_LO + 8  # 7 is locked: skipped
    assert not list((tmp_path / "locks").iterdir())  # released with the run


@needs_isolation
def test_values_cross_the_harness_boundary_as_in_one_process():
    """The harness sees what an in-process test would: types kept, iterators one-shot, others opaque."""
    value = ("[1, (2, 3), {4}, frozenset({5}), {(6, 7): None}, b'8', 9j, 2 ** 100, -0.0, True, 'x', range(3),"
             " float('inf')]")
    problem = {"prompt": "", "entry_point": "f", "test": (
        "def check(candidate):\n"
        f"    assert candidate() == {value}\n"
        "    got = candidate()\n"
        "    assert [type(v).__name__ for v in got] == ['int', 'tuple', 'set', 'frozenset', 'dict', 'bytes',"
        " 'complex', 'int', 'float', 'bool', 'str', 'range', 'float']\n"
        "    assert candidate(True) != [0, 2, 4] and list(candidate(True)) == [0, 2, 4]\n")}
    program = f"def f(lazy=False):\n    return map(lambda i: 2 * i, range(3)) if lazy else {value}\n"
    r = run_humaneval(problem, program, QUICK)
    assert r.status == "pass", r.detail
    r = run_humaneval(problem, "class X:\n    pass\ndef f(lazy=False):\n    return X()\n", QUICK)
    assert r.status == "fail"


@needs_isolation
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the seccomp filter is written for x86_64")
def test_seccomp_refuses_attack_surface_syscalls():
    code = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "for nr in (101, 425, 321, 310):  # ptrace, io_uring_setup, bpf, process_vm_readv\n"
            "    assert libc.syscall(nr, 0, 0, 0, 0) == -1 and ctypes.get_errno() == 1, nr\n"
            "assert libc.syscall(39) > 0  # getpid still works\n")
    r = run_program(code, QUICK)
    assert r.status == "pass", (r.detail, r.stderr)
    assert r.contained["seccomp"] is True
