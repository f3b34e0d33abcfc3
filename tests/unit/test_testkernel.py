"""The test kernel's boot plumbing on the host: the ptrace shim that lets user-mode-linux run where
the host's XSAVE area outgrew it, and the console split that turns a failed boot into one line."""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from lvscare_rig import claim, kernelsuite, testkernel

# Debian's user-mode-linux (6.1 and 6.12) saves and restores a guest's FPU state in this many
# bytes: x87/SSE, AVX, MPX, AVX-512 and PKRU, nothing later (AMX).
UML_XSTATE_BYTES = 2696

# A tracer doing what user-mode-linux does on every switch to a guest process: read the FPU state
# into its short buffer, change it, write it back; then read the whole state to see what stuck.
_TRACER = r"""
import ctypes, json, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
TRACEME, KILL, GETREGSET, SETREGSET, NT_X86_XSTATE = 0, 8, 0x4204, 0x4205, 0x202

class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

def regset(request, pid, buf, size):
    iov = IoVec(ctypes.addressof(buf), size)
    rc = libc.ptrace(request, pid, NT_X86_XSTATE, ctypes.byref(iov))
    return rc, ctypes.get_errno(), iov.len

pid = os.fork()
if pid == 0:
    libc.ptrace(TRACEME, 0, None, None)
    os.kill(os.getpid(), signal.SIGSTOP)
    os._exit(0)
os.waitpid(pid, 0)
whole = ctypes.create_string_buffer(65536)
_, _, host_size = regset(GETREGSET, pid, whole, 65536)
short_size = int(sys.argv[1])
short = ctypes.create_string_buffer(short_size)
regset(GETREGSET, pid, short, short_size)
pattern = bytes(range(16))
ctypes.memmove(ctypes.addressof(short) + 160, pattern, 16)   # XMM0 in the legacy area
rc, err, _ = regset(SETREGSET, pid, short, short_size)
regset(GETREGSET, pid, whole, 65536)
libc.ptrace(KILL, pid, None, None)
os.waitpid(pid, 0)
print(json.dumps({"host_size": host_size, "rc": rc, "errno": err,
                  "xmm0_set": whole.raw[160:176] == pattern}))
"""


def _trace(preload: Path | None) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if preload is not None:
        env["LD_PRELOAD"] = str(preload)
    out = subprocess.run([sys.executable, "-c", _TRACER, str(UML_XSTATE_BYTES)], env=env,
                         capture_output=True, text=True, check=True, timeout=30)
    result: dict[str, int] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(platform.machine() != "x86_64", reason="user-mode-linux is built for x86-64")
def test_the_shim_turns_user_mode_linux_s_failing_fpu_restore_into_a_working_one() -> None:
    shim = testkernel.xstate_shim()
    assert shim is not None and shim.exists()
    bare = _trace(None)
    if bare["host_size"] > UML_XSTATE_BYTES:
        # The call that panics the test kernel on AMX hosts: the host wants the whole area.
        assert (bare["rc"], bare["errno"]) == (-1, errno.EFAULT), bare
    else:
        assert bare["rc"] == 0 and bare["xmm0_set"], bare
    shimmed = _trace(shim)
    assert shimmed["rc"] == 0, shimmed
    assert shimmed["xmm0_set"], "the caller's registers must be what the task gets"


def test_the_shim_is_built_once_per_source_version() -> None:
    if platform.machine() != "x86_64":
        assert testkernel.xstate_shim() is None
        return
    first = testkernel.xstate_shim()
    assert first is not None
    mtime = first.stat().st_mtime_ns
    assert testkernel.xstate_shim() == first and first.stat().st_mtime_ns == mtime
    assert first.name.startswith("uml_xstate-") and first.parent == testkernel.cache_dir()


def _console(tmp_path: Path, lines: list[bytes]) -> tuple[testkernel.Console, bytes]:
    sink = tmp_path / "sink"
    with sink.open("wb") as f:
        console = testkernel.Console(f.fileno(), tmp_path / "console.log")
        read, write = os.pipe()
        os.write(write, b"".join(lines))
        os.close(write)
        with os.fdopen(read, "rb") as stream:
            console.copy(stream)
        console.close()
    return console, sink.read_bytes()


def test_a_boot_that_panics_is_one_line_naming_the_cause_and_the_log(tmp_path: Path) -> None:
    console, shown = _console(tmp_path, [
        b"Checking that ptrace can change system call numbers...OK\n",
        b"[    1.010000] mmapper_init - find_iomem failed\n",
        b"[    1.210000] userspace - ptrace set fp regs failed, errno = 14\n",
        b"[    1.210000] Kernel panic - not syncing: Attempted to kill init!\n",
        b"[    1.210000]  [<6002d0ed>] do_signal+0x24/0x12d\n",
    ])
    assert shown == b""
    line = console.failure(timed_out=False, timeout=60)
    assert line == ("test kernel: the kernel did not come up: userspace - ptrace set fp regs "
                    f"failed, errno = 14 (full console log: {tmp_path / 'console.log'})")
    assert b"do_signal" in (tmp_path / "console.log").read_bytes()


def test_after_boot_the_command_s_lines_are_shown_and_the_kernel_s_are_logged(
        tmp_path: Path) -> None:
    console, shown = _console(tmp_path, [
        b"[    1.260000] Failed to initialize ubd device 0\n",
        b"lvscare-test-kernel: up\n",
        b"tests passed\n",
        b"[    9.000000] Kernel panic - not syncing: sysrq triggered crash\n",
        b"[    9.000000]  [<6002d0ed>] do_signal+0x24/0x12d\n",
    ])
    assert shown == b"tests passed\n"
    assert console.failure(timed_out=False, timeout=60).startswith(
        "test kernel: the command did not finish (kernel panic or killed): Kernel panic - not "
        "syncing: sysrq triggered crash (full console log: ")
    assert console.failure(timed_out=True, timeout=60).startswith(
        "test kernel: the command did not finish within 60 s: Kernel panic")


def _result(nodeid: str, outcome: str = "passed", duration: float = 1.0,
            worker: str = "k1") -> dict[str, object]:
    return {"nodeid": nodeid, "worker": worker, "outcome": outcome, "duration": duration,
            "longrepr": "[call]\nassert 1 == 2" if outcome == "failed" else "",
            "sections": [["Captured stdout call", "what the test printed"]]
            if outcome == "failed" else []}


def test_the_combined_report_passes_only_when_every_selected_test_passed() -> None:
    run = kernelsuite.Run(collected={"a", "b", "c"}, kernel_rc={"k1": 0, "k2": 0})
    run.results = {n: _result(n, duration=d, worker=w)
                   for n, d, w in [("a", 3.0, "k1"), ("b", 9.0, "k2"), ("c", 1.0, "k1")]}
    lines, ok = kernelsuite.summarize(run)
    assert ok
    assert lines[-1] == "kernel: 3 passed, 0 failed"
    slowest = lines[lines.index("==================== slowest 3 ====================") + 1:-1]
    assert [s.split()[1] for s in slowest] == ["b", "a", "c"]


def test_a_failure_shows_its_output_and_fails_the_suite() -> None:
    run = kernelsuite.Run(collected={"a", "b"}, kernel_rc={"k1": 1, "k2": 0})
    run.results = {"a": _result("a", "failed"), "b": _result("b", "skipped", worker="k2")}
    lines, ok = kernelsuite.summarize(run)
    assert not ok
    assert lines[:5] == ["____________________ a (k1, failed) ____________________", "[call]",
                         "assert 1 == 2", "---------- Captured stdout call ----------",
                         "what the test printed"]
    assert lines[-1] == "kernel: 0 passed, 1 failed, 1 skipped"


def test_a_kernel_that_dies_fails_the_suite_with_the_tests_it_never_reported() -> None:
    run = kernelsuite.Run(collected={"a", "b", "c"}, kernel_rc={"k1": 0, "k2": 1})
    run.results = {"a": _result("a")}
    lines, ok = kernelsuite.summarize(run)
    assert not ok
    assert "2 selected tests never reported a result (a kernel did not finish):" in lines
    assert lines[-1] == "kernel: 1 passed, 2 failed"
    # A kernel whose pytest broke (usage error, internal error) fails the suite even if the other
    # kernel ran every test.
    run = kernelsuite.Run(collected={"a"}, kernel_rc={"k1": 0, "k2": 4}, results={"a": _result("a")})
    lines, ok = kernelsuite.summarize(run)
    assert not ok and "kernel k2: pytest exited 4" in lines


def test_nothing_run_is_not_a_pass() -> None:
    lines, ok = kernelsuite.summarize(kernelsuite.Run(kernel_rc={"k1": 5, "k2": 5}))
    assert not ok and lines[-1] == "kernel: 0 passed, 0 failed"


def test_the_longest_tests_are_claimed_first_and_untimed_ones_count_as_typical() -> None:
    hints = {"slow": 60.0, "mid": 10.0, "short": 4.0, "fast": 2.0}
    assert claim.longest_first(["fast", "new", "slow", "mid", "short"], hints) == [
        "slow", "mid", "new", "short", "fast"]
    assert claim.longest_first(["b", "a"], {}) == ["b", "a"]


def test_a_module_that_asks_is_claimed_as_one_unit_in_its_order() -> None:
    """A costly module fixture (the real control plane) is set up once: its tests form one unit,
    ordered among the others by their summed durations, in their own order inside."""
    from types import SimpleNamespace

    whole, single = SimpleNamespace(CLAIM_WHOLE_MODULE=True), SimpleNamespace()
    items = [SimpleNamespace(nodeid=n, module=m, reportinfo=lambda line=line: ("f", line, ""))
             for n, m, line in (("a.py::t1", single, 1), ("real.py::t2", whole, 20),
                                ("b.py::t1", single, 1), ("real.py::t1", whole, 10))]
    hints = {"a.py::t1": 50.0, "b.py::t1": 10.0, "real.py::t1": 30.0, "real.py::t2": 30.0}
    got = claim.units(items, hints)  # type: ignore[arg-type]
    assert [(key, [i.nodeid for i in group]) for key, group in got] == [
        ("real.py", ["real.py::t1", "real.py::t2"]), ("a.py::t1", ["a.py::t1"]), ("b.py::t1", ["b.py::t1"])]


@pytest.mark.parametrize("top", ["/var/tmp", "/run"])
def test_a_checkout_under_a_path_the_kernel_mounts_over_is_still_there(top: str, tmp_path: Path) -> None:
    """The test kernel mounts tmpfs on /var/tmp and /run; a checkout there (its current directory,
    its virtualenv) is mounted again at its own path instead of vanishing."""
    checkout = Path(tempfile.mkdtemp(prefix="lvscare-checkout-", dir=top))
    try:
        (checkout / "marker").write_text("the checkout\n")
        out = tmp_path / "out"
        with out.open("wb") as f:
            rc = testkernel.boot(["sh", "-c", "cat marker && pwd"], cwd=str(checkout), stdout=f.fileno())
        assert rc == 0, out.read_text()
        assert out.read_text().splitlines() == ["the checkout", str(checkout)]
    finally:
        shutil.rmtree(checkout)


def test_a_checkout_the_kernel_cannot_show_is_refused_in_one_line_naming_it() -> None:
    assert testkernel.kept_paths(["/work/x", "/var/tmp/a", "/var/tmp/a/.venv", "/run/b"]) == [
        "/run/b", "/var/tmp/a"]
    with pytest.raises(testkernel.TestKernelMissing) as exc:
        testkernel.boot(["true"], cwd="/dev/shm/checkout")
    assert "/dev/shm/checkout" in str(exc.value) and "\n" not in str(exc.value)


def test_a_selection_is_collected_on_the_host_with_only_what_it_needs_built() -> None:
    one = kernelsuite.select(["tests/kernel/test_real_apiserver.py"])
    assert not isinstance(one, str), one
    assert one.needs == ["control-plane"]
    assert one.units == 1  # claimed whole (CLAIM_WHOLE_MODULE): one kernel is enough
    assert one.tests and all(t.startswith("tests/kernel/test_real_apiserver.py::") for t in one.tests)
    wrong = kernelsuite.select(["--no-such-option"])
    assert isinstance(wrong, str) and "unrecognized arguments" in wrong


def test_every_kernel_module_has_one_smoke_test_and_the_quick_ones_need_nothing_built() -> None:
    modules = sorted(str(p.relative_to(kernelsuite.ROOT))
                     for p in (kernelsuite.ROOT / "tests" / "kernel").glob("test_*.py"))
    smoke = kernelsuite.select(["-m", "smoke"])
    assert not isinstance(smoke, str), smoke
    # One test function per module (a parametrized one counts once).
    functions = {t.split("[")[0] for t in smoke.tests}
    assert sorted(f.split("::")[0] for f in functions) == modules
    assert smoke.needs == ["node-roots", "control-plane", "image"]
    quick = kernelsuite.select(["--quick"])
    assert not isinstance(quick, str), quick
    assert quick.needs == [] and set(quick.tests) < set(smoke.tests) and len(quick.tests) >= 8
