#!/usr/bin/env python3
"""10,000 users with waits: loadgen against real Locust on seed 001's mix (docs/LOCUST.md).

Starts a release `mock-upstream` (the simulated services; no gateway, so the machine's
cores go to the generators) and runs, one after the other, the same user classes of
seed 001 with their waits:

  loadgen   loadgen/scenarios/meetinity-gateway.toml
  locust    tests/locust/locustfile.py, one process
  locust-N  the same with `--processes N` (a master and N forked workers)

For each: requests/s over the whole run (the tool's own stats CSV; the ramp included)
and over its last half (the stats history), the peak resident memory of the tool's whole
process tree (sampled every 0.5 s), its CPU time, and the 1-minute load average of the
machine before the run (other work shares the cores: read the figures with it).

    python3 tests/locust/scale.py --bin-dir target/release --users 10000 --seconds 45
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOCUSTFILE = os.path.join(ROOT, "tests/locust/locustfile.py")
SCENARIO = os.path.join(ROOT, "loadgen/scenarios/meetinity-gateway.toml")
# The seed's classes with waits of 0.1 s and more (StressTestUser's 10-100 ms with 100 KB
# bodies and RateLimitTestUser's 10/s hammering are load of another kind).
CLASSES = ["PublicRouteUser", "AuthenticatedUser", "HighThroughputUser",
           "MixedWorkloadUser", "HealthCheckMonitor"]


def tree_rss(proc):
    total = 0
    try:
        for p in [proc] + proc.children(recursive=True):
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def tree_cpu(proc, seen):
    """CPU seconds of the tree, remembering the last value of every member."""
    try:
        for p in [proc] + proc.children(recursive=True):
            try:
                t = p.cpu_times()
                seen[p.pid] = t.user + t.system
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return sum(seen.values())


def measure(cmd, seconds, env=None):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                         text=True)
    ps = psutil.Process(p.pid)
    peak, cpu_seen = 0, {}
    err = []
    threading.Thread(target=lambda: err.extend(p.stderr), daemon=True).start()
    t0 = time.monotonic()
    while p.poll() is None:
        peak = max(peak, tree_rss(ps))
        tree_cpu(ps, cpu_seen)
        if time.monotonic() - t0 > seconds + 120:
            p.kill()
        time.sleep(0.5)
    return {"peak_rss_mib": round(peak / 2**20, 1), "cpu_s": round(sum(cpu_seen.values()), 1),
            "wall_s": round(time.monotonic() - t0, 1), "rc": p.returncode,
            "stderr_tail": "".join(err[-5:])[-800:]}


def rates(prefix, seconds):
    total = 0
    with open(f"{prefix}_stats.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["Name"] == "Aggregated":
                total = int(row["Request Count"])
    late = []
    path = f"{prefix}_stats_history.csv"
    if os.path.exists(path):
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
        half = rows[len(rows) // 2:]
        late = [float(r["Requests/s"]) for r in half if r["Requests/s"] not in ("", "N/A")]
    return {"requests": total, "rps_whole_run": round(total / seconds, 1),
            "rps_last_half": round(sum(late) / len(late), 1) if late else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target/release"))
    ap.add_argument("--users", type=int, default=10000)
    ap.add_argument("--spawn-rate", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=45)
    ap.add_argument("--processes", type=int, default=2, help="Locust workers for locust-N")
    ap.add_argument("--tools", default="loadgen,locust,locust-N")
    ap.add_argument("--json")
    args = ap.parse_args()
    out = tempfile.mkdtemp(prefix="locust-scale-")
    mock = subprocess.Popen([os.path.join(args.bin_dir, "mock-upstream"), "--listen",
                             "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    line = mock.stdout.readline()
    addr = line.replace("mock-upstream listening on ", "").split()[0]
    threading.Thread(target=lambda: [None for _ in mock.stdout], daemon=True).start()
    host = f"http://{addr}"
    results = {"users": args.users, "spawn_rate": args.spawn_rate, "seconds": args.seconds,
               "classes": CLASSES, "cores": os.cpu_count()}
    try:
        for tool in args.tools.split(","):
            time.sleep(3)
            load = os.getloadavg()[0]
            prefix = os.path.join(out, tool)
            common = ["--host", host, "--users", str(args.users), "--spawn-rate",
                      str(args.spawn_rate), "--run-time", f"{args.seconds}s", "--headless",
                      "--only-summary", "--csv", prefix]
            if tool == "loadgen":
                cmd = [os.path.join(args.bin_dir, "loadgen"), "run", SCENARIO, *common,
                       "--user-classes", ",".join(CLASSES)]
            else:
                cmd = [sys.executable, "-m", "locust", "-f", LOCUSTFILE, *common,
                       "--loglevel", "WARNING"]
                if tool == "locust-N":
                    cmd += ["--processes", str(args.processes)]
                cmd += CLASSES
            m = measure(cmd, args.seconds)
            r = {**m, **rates(prefix, args.seconds), "load_before": round(load, 2),
                 "load_after": round(os.getloadavg()[0], 2)}
            results[tool] = r
            print(f"{tool:>9}: {r['rps_whole_run']} req/s over the run, "
                  f"{r['rps_last_half']} req/s in its last half, peak RSS "
                  f"{r['peak_rss_mib']} MiB, CPU {r['cpu_s']} s in {r['wall_s']} s, "
                  f"load {r['load_before']} -> {r['load_after']}", flush=True)
    finally:
        mock.terminate()
        mock.wait(timeout=10)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
