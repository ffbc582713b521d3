"""Sandbox: outcomes are classified, hostile programs are contained and reported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from carelab.watermark.sandbox import Limits, run_humaneval, run_program

QUICK = Limits(wall_s=4, cpu_s=3, memory_mb=512, nproc=8)


def test_pass_fail_error_are_distinguished():
    assert run_program("assert sum([1, 2]) == 3\nprint('ok')\n", QUICK).status == "pass"
    r = run_program("assert 1 == 2, 'wrong'\n", QUICK)
    assert (r.status, r.detail) == ("fail", "AssertionError: wrong")
    r = run_program("def f(:\n", QUICK)
    assert r.status == "error" and "SyntaxError" in r.detail
    r = run_program("import sys\nsys.exit(3)\n", QUICK)
    assert r.status == "error" and "SystemExit" in r.detail


def test_forged_success_is_not_a_pass():
    r = run_program("import os\nos._exit(0)\n", QUICK)
    assert r.status == "error" and "without a valid report" in r.detail


def test_infinite_loop_times_out():
    r = run_program("while True:\n    pass\n", Limits(wall_s=2, cpu_s=1))
    assert r.status == "timeout"
    assert r.duration_s < 10


def test_memory_hog_is_stopped():
    r = run_program("x = bytearray(3 * 1024 ** 3)\n", QUICK)
    assert r.status == "error" and "MemoryError" in r.detail


def test_fork_bomb_is_refused():
    r = run_program("import os\nwhile True:\n    os.fork()\n", QUICK)
    assert r.status == "error" and "PermissionError" in r.detail


@pytest.mark.skipif(os.geteuid() != 0, reason="a per-run uid needs root; as a user RLIMIT_NPROC counts all your processes")
def test_process_limit_binds_even_without_the_audit_hook():
    code = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(100):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError:\n"
        "    pass\n"
        "print('forked', n)\n"
        "assert n < 100\n"
    )
    r = run_program(code, Limits(wall_s=10, cpu_s=5, nproc=8, allow_subprocess=True))
    assert r.status == "pass", (r.detail, r.stderr)
    forked = int(r.stdout.split("forked")[1].split()[0])
    assert forked <= 8
    uid = r.contained.get("uid")
    if uid:  # every process of the throw-away uid was killed afterwards
        assert uid != 0
        leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) == uid]
        assert not leftovers


def _uid_of(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def test_writes_outside_the_directory_are_refused(tmp_path: Path):
    target = tmp_path / "escaped.txt"
    r = run_program(f"open({str(target)!r}, 'w').write('x')\n", QUICK)
    assert r.status == "error" and "PermissionError" in r.detail
    assert not target.exists()
    inside = run_program("open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'\n", QUICK)
    assert inside.status == "pass"


def test_huge_files_are_stopped():
    r = run_program("f = open('big', 'wb')\nwhile True:\n    f.write(b'x' * 2 ** 20)\n", Limits(wall_s=10, fsize_mb=2))
    assert r.status == "error" and "File too large" in r.detail


def test_network_is_unavailable():
    r = run_program("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))\n", QUICK)
    assert r.status == "error" and "network" in r.detail
    layers = run_program("pass\n", QUICK).contained
    assert layers["RLIMIT_AS"] and layers["RLIMIT_CPU"] and layers["RLIMIT_FSIZE"]
    assert "netns" in layers  # whether the kernel allowed a network namespace is reported, not assumed


def test_humaneval_program_runs_its_tests():
    from carelab.watermark.humaneval import load_problems

    p = load_problems(limit=3)[2]
    assert run_humaneval(p.as_dict(), p.prompt + p.canonical_solution, QUICK).status == "pass"
    assert run_humaneval(p.as_dict(), p.prompt + "    return 0\n", QUICK).status == "fail"
