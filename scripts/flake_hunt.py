#!/usr/bin/env python3
"""Runs the workspace's test binaries many times and counts each test's failures.

The host suites (unit tests, the API-level tests) run --host-runs times, the
guest suites (every test file named *_guest.rs: they boot QEMU) --guest-runs
times, while a busy loop keeps one core loaded (as CI's 2-core machine may be).
Each binary runs as `cargo test` runs it (its package directory as the working
directory). The log of every failed run is kept under target/flake-hunt/.

Exit status: 0 when no test failed in any run, 1 otherwise.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = re.compile(r"^test (\S+) \.\.\. (ok|FAILED|ignored)", re.M)


def build(guests: bool):
    """Builds the binaries the tests start and the test executables; returns the latter."""
    # As `just test` builds them: the agent's test-only faults compiled in,
    # and its eBPF probes where guests run.
    features = ["--features", "mock-accel-agent/failpoints" + (",mock-accel-agent/ebpf" if guests else "")]
    subprocess.run(["cargo", "build", "--workspace", "--bins", *features], cwd=ROOT, check=True)
    out = subprocess.run(
        ["cargo", "test", "--workspace", "--no-run", *features, "--message-format=json-render-diagnostics"],
        cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    bins = []
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg["profile"]["test"]:
            continue
        src = Path(msg["target"]["src_path"])
        pkg = Path(msg["manifest_path"]).parent
        kind = msg["target"]["kind"][0]
        name = f"{pkg.name}/{msg['target']['name']}" + ("" if kind == "test" else f" ({kind})")
        bins.append({
            "name": name,
            "exe": msg["executable"],
            "cwd": str(pkg),
            "guest": src.name.endswith("_guest.rs"),
        })
    return bins


def run_binary(b, logs: Path, round_no: int, counts, failures):
    t = time.monotonic()
    # A deadline per binary (a hang is a failure that says so, not a stall):
    # the whole binary, its tests one after another where they take turns.
    limit = 7200 if b["guest"] else 900
    try:
        p = subprocess.run([b["exe"]], cwd=b["cwd"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, errors="replace", stdin=subprocess.DEVNULL, timeout=limit)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        p = subprocess.CompletedProcess([b["exe"]], 124, out + f"\nflake-hunt: killed after {limit} s\n")
    elapsed = time.monotonic() - t
    results = RESULT.findall(p.stdout)
    failed = [name for name, r in results if r == "FAILED"]
    for name, r in results:
        if r != "ignored":
            counts[(b["name"], name)] += 1
    for name in failed:
        failures[(b["name"], name)] += 1
    if p.returncode != 0 and not failed:
        # Crashed, or failed outside any test: charge the binary itself.
        counts[(b["name"], "<binary>")] += 1
        failures[(b["name"], "<binary>")] += 1
        failed = ["<binary>"]
    if failed:
        log = logs / f"{b['name'].replace('/', '_').replace(' ', '')}-run{round_no}.log"
        log.write_text(p.stdout)
        print(f"    FAILED in {b['name']}: {', '.join(failed)} (log: {log.relative_to(ROOT)})", flush=True)
    return elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host-runs", type=int, default=int(os.environ.get("FLAKE_HOST_RUNS", 20)))
    ap.add_argument("--guest-runs", type=int, default=int(os.environ.get("FLAKE_GUEST_RUNS", 3)))
    ap.add_argument("--only", default=os.environ.get("FLAKE_ONLY", ""),
                    help="only binaries whose name contains one of these (comma-separated)")
    ap.add_argument("--no-load", action="store_true", help="leave the other core idle")
    a = ap.parse_args()
    # Killed (SIGTERM, or the terminal's SIGHUP): unwind, so that the busy
    # loop is stopped and the running test binary killed (subprocess.run
    # kills its child on the way out; the rig's children die with it).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda n, _f: sys.exit(128 + n))

    only = [o for o in a.only.split(",") if o] or [""]
    bins = [b for b in build(a.guest_runs > 0) if any(o in b["name"] for o in only)]
    logs = ROOT / "target" / "flake-hunt"
    logs.mkdir(parents=True, exist_ok=True)
    for f in logs.glob("*.log"):
        f.unlink()
    host = [b for b in bins if not b["guest"]]
    guest = [b for b in bins if b["guest"]]
    if guest and a.guest_runs:
        # The guests' driver image carries the agent `just test` gives them
        # (else the debug agent: twice as slow on the node).
        subprocess.run(["just", "agent-image"], cwd=ROOT, check=True)
    print(f"flake-hunt: {len(host)} host binaries x {a.host_runs}, "
          f"{len(guest)} guest binaries x {a.guest_runs}", flush=True)

    load = None
    if not a.no_load:
        load = subprocess.Popen(["sh", "-c", "while :; do :; done"])
        print(f"flake-hunt: one core kept busy (pid {load.pid})", flush=True)
    counts, failures = defaultdict(int), defaultdict(int)
    start = time.monotonic()
    try:
        for suites, runs, what in ((host, a.host_runs, "host"), (guest, a.guest_runs, "guest")):
            for i in range(1, runs + 1):
                t = time.monotonic()
                for b in suites:
                    run_binary(b, logs, i, counts, failures)
                print(f"  {what} run {i}/{runs}: {time.monotonic() - t:.0f} s "
                      f"(failures so far: {sum(failures.values())}, {time.monotonic() - start:.0f} s in all)",
                      flush=True)
    finally:
        if load:
            load.kill()
            load.wait()

    failed = sum(failures.values())
    print(f"\nflake-hunt: {len(counts)} tests, {sum(counts.values())} runs, "
          f"{failed} failures, {time.monotonic() - start:.0f} s")
    width = max((len(f"{b} {t}") for b, t in counts), default=10)
    for key in sorted(counts):
        if failures.get(key) or os.environ.get("FLAKE_ALL"):
            print(f"  {key[0] + ' ' + key[1]:<{width}}  {failures[key]:>3} / {counts[key]} failed")
    if not failed:
        print("  every test passed every run")
    (logs / "summary.json").write_text(json.dumps(
        [{"binary": b, "test": t, "runs": counts[(b, t)], "failures": failures.get((b, t), 0)}
         for b, t in sorted(counts)], indent=1))
    # The plain closing line (a count of test runs).
    print(f"flake-hunt: {sum(counts.values()) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
