"""Run the kernel tests across several test kernels, one per host CPU, with one combined report.

user-mode-linux runs on one host CPU, so one kernel leaves the other cores idle. Here each core
boots its own kernel; the kernels share the suite through ``lvscare_rig.claim`` (each test runs
once, in whichever kernel is free, longest first). The host prints a line per finished test, then
one report: the failures with their output, the 12 slowest tests, and ``kernel: N passed, N
failed``; the exit code is 0 only if every selected test ran and passed in a kernel that finished.

``LVSCARE_KERNELS`` sets the number of kernels (default: the host's CPUs). With one kernel, or
with ``-s`` (output to the terminal as it comes), the suite runs in a single kernel as before.
Usage: ``python -m lvscare_rig.kernelsuite [PYTEST ARGS]`` (``scripts/kernel-test`` does this).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvscare_rig import controlplane, noderoots, testkernel, tools

# Each kernel's memory: the real control plane (etcd and three kube-apiservers of about 330 MB
# each, test_real_apiserver.py) runs in one; the host lends it only what is touched.
MEM = "3G"
ROOT = Path(__file__).resolve().parents[2]
TESTS = "tests/kernel"
# Durations of a run on the CI's kind of machine, for the order of a first run; later runs use
# this machine's own last figures (testkernel.cache_dir()).
COMMITTED_HINTS = ROOT / "tests" / "kernel" / "durations.json"
SLOWEST = 12
PYTEST = ["-m", "pytest", "-p", "no:cacheprovider", "--color=no", "-q", "-p", "lvscare_rig.tiers"]


@dataclass
class Selection:
    tests: list[str]
    needs: list[str]
    units: int  # what the kernels claim: a test, or a module claimed whole


def targets(args: Sequence[str]) -> list[str]:
    """``tests/kernel``, unless the arguments name test files or ids themselves."""
    named = [a for a in args if not a.startswith("-") and (ROOT / a.split("::")[0]).exists()]
    return [] if named else [TESTS]


def select(args: Sequence[str]) -> Selection | str:
    """The tests ``args`` select and what they need built, collected on the host (a few seconds);
    or pytest's own words when the selection is wrong (a bad -k, a missing path)."""
    with tempfile.TemporaryDirectory(prefix="lvscare-select-") as tmp:
        out = Path(tmp) / "selection.json"
        proc = subprocess.run([sys.executable, *PYTEST, "--collect-only", f"--lvscare-needs={out}",
                               *targets(args), *args], cwd=ROOT, capture_output=True, text=True, check=False)
        if proc.returncode not in (0, 5) or not out.exists():
            return (proc.stdout + proc.stderr).strip()
        data = json.loads(out.read_text())
    return Selection(tests=list(data["tests"]), needs=list(data["needs"]), units=int(data["units"]))


def build(needs: Sequence[str]) -> None:
    """Build on the host, where Debian's archive is reachable, what the selected tests need; each
    is cached (a second run takes a second)."""
    for need in needs:
        if need == "node-roots":
            noderoots.main()
        elif need == "control-plane":
            controlplane.main(quiet=True)
        elif need == "image":
            # The image from this very checkout: the pod tests check the archive's source digest.
            subprocess.run([str(ROOT / "scripts" / "image")], cwd=ROOT, check=True,
                           env={**os.environ, "PYTHON": sys.executable})


def kernels_wanted() -> int:
    value = os.environ.get("LVSCARE_KERNELS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0))


def hints_file() -> Path:
    return testkernel.cache_dir() / "kernel-durations.json"


@dataclass
class Run:
    """What the kernels reported: collected test ids, results by id, kernels that did not end."""

    collected: set[str] = field(default_factory=set)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    kernel_rc: dict[str, int] = field(default_factory=dict)
    stopped: bool = False


def summarize(run: Run) -> tuple[list[str], bool]:
    """The combined report's lines, and whether the suite passed (pure: tested on the host)."""
    lines: list[str] = []
    failed = [r for r in run.results.values() if r["outcome"] in ("failed", "error")]
    for r in sorted(failed, key=lambda r: r["nodeid"]):
        lines.append(f"{'_' * 20} {r['nodeid']} ({r['worker']}, {r['outcome']}) {'_' * 20}")
        lines.extend(r["longrepr"].rstrip().splitlines())
        for title, content in r["sections"]:
            lines.append(f"{'-' * 10} {title} {'-' * 10}")
            lines.extend(content.rstrip().splitlines())
    missing = sorted(run.collected - set(run.results))
    if missing and not run.stopped:
        lines.append(f"{len(missing)} selected tests never reported a result (a kernel did not "
                     "finish):")
        lines.extend(f"  {n}" for n in missing)
    bad_kernels = {k: rc for k, rc in run.kernel_rc.items() if rc not in (0, 1, 5)}
    for kernel, rc in sorted(bad_kernels.items()):
        lines.append(f"kernel {kernel}: pytest exited {rc}")
    timed = sorted(run.results.values(), key=lambda r: -r["duration"])[:SLOWEST]
    if timed:
        lines.append(f"{'=' * 20} slowest {len(timed)} {'=' * 20}")
        lines.extend(f"{r['duration']:8.2f}s  {r['nodeid']} ({r['worker']})" for r in timed)
    count = {o: sum(r["outcome"] == o for r in run.results.values())
             for o in ("passed", "skipped")}
    n_failed = len(failed) + (0 if run.stopped else len(missing))
    summary = f"kernel: {count['passed']} passed, {n_failed} failed"
    if count["skipped"]:
        summary += f", {count['skipped']} skipped"
    lines.append(summary)
    ok = (n_failed == 0 and not bad_kernels and bool(run.results)
          and all(rc in (0, 5) for rc in run.kernel_rc.values()))
    return lines, ok


def _read_results(suite: Path, run: Run, announce: bool) -> None:
    for path in sorted(suite.glob("results-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a line still being written: read again next time
            if r["nodeid"] in run.results:
                continue
            run.results[r["nodeid"]] = r
            if announce:
                print(f"[{r['worker']}] {r['outcome'].upper():7} {r['duration']:7.2f}s "
                      f"{r['nodeid']}", flush=True)


def run_parallel(args: Sequence[str], kernels: int) -> int:
    suite = Path(tempfile.mkdtemp(prefix="lvscare-suite-", dir="/tmp"))
    # The committed durations, updated by this machine's last runs (a new test is timed there).
    known = json.loads(COMMITTED_HINTS.read_text())
    if hints_file().exists():
        known.update(json.loads(hints_file().read_text()))
    hints = suite / "hints.json"
    hints.write_text(json.dumps(known))
    run = Run()
    started = time.monotonic()
    print(f"kernel tests in {kernels} test kernels (LVSCARE_KERNELS to change)", flush=True)

    def one(name: str) -> None:
        env = {"LVSCARE_SUITE_DIR": str(suite), "LVSCARE_SUITE_WORKER": name,
               "LVSCARE_SUITE_HINTS": str(hints)}
        with (suite / f"{name}.log").open("wb") as log:
            try:
                rc = testkernel.boot([sys.executable, *PYTEST, "-p", "lvscare_rig.claim",
                                      *targets(args), *args], cwd=str(ROOT), env=env, shared=[suite],
                                     stdout=log.fileno(), timeout=3600, mem=MEM)
            except testkernel.TestKernelMissing as exc:
                log.write(f"error: {exc}\n".encode())
                rc = 1
        run.kernel_rc[name] = rc
        ended[name] = time.monotonic() - started

    ended: dict[str, float] = {}
    threads = [threading.Thread(target=one, args=(f"k{i + 1}",)) for i in range(kernels)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(1)
        _read_results(suite, run, announce=True)
    _read_results(suite, run, announce=True)
    for path in suite.glob("collected-*.json"):
        run.collected.update(json.loads(path.read_text()))
    run.stopped = (suite / "stop").exists()
    lines, ok = summarize(run)
    wall = time.monotonic() - started
    per_kernel = ", ".join(f"{k} {s:.0f} s" for k, s in sorted(ended.items()))
    print("\n".join(lines[:-1]))
    print(f"kernel tests: {wall:.0f} s wall in {kernels} kernels ({per_kernel})")
    if not ok:
        for name in sorted(run.kernel_rc):
            log = suite / f"{name}.log"
            last = (log.read_bytes().decode(errors="replace").strip().splitlines() or [""])[-1]
            print(f"kernel {name}: exit {run.kernel_rc[name]} ({last.strip('= ')}); its whole "
                  f"output: {log}")
    print(lines[-1], flush=True)
    _save_hints(run)
    if ok:
        shutil.rmtree(suite, ignore_errors=True)
    return 0 if ok else 1


def _save_hints(run: Run) -> None:
    try:
        known = json.loads(hints_file().read_text())
    except (OSError, ValueError):
        known = {}
    known.update({n: round(r["duration"], 1) for n, r in run.results.items()
                  if r["outcome"] == "passed"})
    hints_file().parent.mkdir(parents=True, exist_ok=True)
    hints_file().write_text(json.dumps(known, indent=0, sort_keys=True) + "\n")


def run_single(args: Sequence[str]) -> int:
    return testkernel.boot([sys.executable, *PYTEST, "--durations=12", *targets(args), *args],
                           cwd=str(ROOT), timeout=3600, mem=MEM)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    kernels = kernels_wanted()
    # Every program the suite runs, before anything is built or booted: a missing one is one line
    # naming its package, never a traceback in the fourth test.
    if tools.preflight() != 0:
        return 2
    selection = select(args)
    if isinstance(selection, str):
        print(selection, file=sys.stderr)
        return 2
    if not selection.tests:
        print("kernel: no test selected", file=sys.stderr)
        return 5
    try:
        build(selection.needs)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"error: building what the tests need failed: {exc}", file=sys.stderr)
        return 1
    kernels = min(kernels, selection.units)
    try:
        if kernels == 1 or "-s" in args or "--capture=no" in args:
            return run_single(args)
        return run_parallel(args, kernels)
    except testkernel.TestKernelMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
