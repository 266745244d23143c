#!/usr/bin/env python3
"""Real Locust against loadgen on seed 001's mix: same gateway binary, same config.

Starts mock-upstream, a redis-server of its own (when installed) and, for every run, a
fresh `gateway serve --config CONFIG` (ports from the OS, 127.0.0.1 only). Each phase runs
tests/locust/locustfile.py with real Locust and loadgen/scenarios/meetinity-gateway.toml
with loadgen, same users, spawn rate and run time, and compares:

  * per-name request shares (chi-square test of homogeneity over the two count vectors);
  * status-class counts as the gateway counted them (gateway_requests_total, same source
    for both tools; chi-square over 2xx / 4xx other than 429 / 429 / 5xx);
  * failure classification, from each tool's own failures CSV (HTTP 429, HTTP 4xx, HTTP
    5xx, failed check, no response), as a share of its requests (chi-square).

A difference is a failure when its p-value is below ALPHA (0.001): the two runs are then
unlikely to be samples of the same mix. Phases:

  mix        every class against deploy/config/meetinity-loadtest.toml (the config
             docs/LOCUST.md names for the baseline): the seed's baseline bar for real
             Locust, errors < 0.1 % outside the rate-limit class.
  ratelimit  the ratelimit preset (RateLimitTestUser) against deploy/config/meetinity.toml:
             429 with Retry-After for both tools, the same 429 share.
  shipped    the single-request classes (all but StressTestUser and MixedWorkloadUser)
             against deploy/config/meetinity.toml from one host, no extra header: both
             tools see the same share of 429s (the case where real Locust saw 59 % and
             loadgen 0 % when the config keyed on a header only loadgen sent).
             MixedWorkloadUser is left out here: when a step of a journey fails, loadgen
             ends the journey and Locust goes on with the next request (docs/LOCUST.md),
             so its later steps' shares differ whenever 429s are frequent.

StressTestUser (10-100 ms waits) issues requests at a rate set by the tool's own latency,
so its names are compared within the class (echo vs hello split) and its rate is reported,
not tested; the other classes' waits are >= 100 ms or constant pacing.

Exit 0 when every comparison and bar holds, 1 otherwise; a JSON summary with --json.
"""

import argparse
import csv
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ALPHA = 0.001
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOCUSTFILE = os.path.join(ROOT, "tests/locust/locustfile.py")
SCENARIO = os.path.join(ROOT, "loadgen/scenarios/meetinity-gateway.toml")
LOADTEST = os.path.join(ROOT, "deploy/config/meetinity-loadtest.toml")
SHIPPED = os.path.join(ROOT, "deploy/config/meetinity.toml")
STRESS_NAMES = {"/api/echo [100KB]", "/api/hello [stress]"}
RATELIMIT_NAME = "/api/hello [ratelimit]"
START_WAIT = 30.0


# --- statistics --------------------------------------------------------------------------


def _gamma_q(a, x):
    """Regularised upper incomplete gamma Q(a, x) (Numerical Recipes' gser / gcf)."""
    if x <= 0:
        return 1.0
    lg = math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        ap = a
        for _ in range(1000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(-x + a * math.log(x) - lg))
    b = x + 1 - a
    c = 1e300
    d = 1 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1e-300 if abs(d) < 1e-300 else d
        c = b + an / c
        c = 1e-300 if abs(c) < 1e-300 else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return min(1.0, math.exp(-x + a * math.log(x) - lg) * h)


def chi2_homogeneity(a, b, min_expected=5.0):
    """Chi-square test that count dicts `a` and `b` are samples of one distribution.

    Categories whose pooled expected count is below `min_expected` in either sample are
    merged into one "(rare)" category (dropped if still too small). Returns
    (statistic, degrees of freedom, p-value, table)."""
    na, nb = sum(a.values()), sum(b.values())
    if na == 0 or nb == 0:
        return 0.0, 0, 1.0, {}
    keys = sorted(set(a) | set(b))
    table, rare = {}, [0, 0]
    for k in keys:
        ca, cb = a.get(k, 0), b.get(k, 0)
        pooled = (ca + cb) / (na + nb)
        if pooled * min(na, nb) < min_expected:
            rare[0] += ca
            rare[1] += cb
        else:
            table[k] = (ca, cb)
    if (rare[0] + rare[1]) / (na + nb) * min(na, nb) >= min_expected:
        table["(rare)"] = tuple(rare)
    if len(table) < 2:
        return 0.0, 0, 1.0, table
    na = sum(v[0] for v in table.values())
    nb = sum(v[1] for v in table.values())
    stat = 0.0
    for ca, cb in table.values():
        pooled = (ca + cb) / (na + nb)
        for obs, n in ((ca, na), (cb, nb)):
            exp = pooled * n
            stat += (obs - exp) ** 2 / exp
    dof = len(table) - 1
    return stat, dof, _gamma_q(dof / 2, stat / 2), table


# --- processes ---------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(cmd, prefix, env=None):
    """Starts cmd; returns (process, rest of its first stdout line after `prefix`)."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True
    )
    deadline = time.monotonic() + START_WAIT
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line or proc.poll() is not None:
            break
    if not line.startswith(prefix):
        stop(proc)
        raise RuntimeError(f"{cmd[0]} did not start: {line!r}")
    # Keep draining stdout so the child never blocks on a full pipe.
    import threading

    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, line[len(prefix):].strip()


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(admin):
    deadline = time.monotonic() + START_WAIT
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{admin}/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("gateway not ready")


def server_status(admin):
    """{route: {status class: count}} from the gateway's gateway_requests_total."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    pat = re.compile(r'^gateway_requests_total\{([^}]*)\} ([0-9.e+]+)$')
    for line in text.splitlines():
        m = pat.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        code = int(labels.get("status", "0") or 0)
        cls = "429" if code == 429 else f"{code // 100}xx"
        route = out.setdefault(labels.get("route", "?"), {})
        route[cls] = route.get(cls, 0) + int(float(m.group(2)))
    return out


# --- tool runs ---------------------------------------------------------------------------


def read_stats(prefix):
    """({name: requests}, {name: failures}, aggregated row) from a Locust-format stats CSV."""
    reqs, fails, agg = {}, {}, {}
    with open(f"{prefix}_stats.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["Name"] == "Aggregated":
                agg = row
                continue
            reqs[row["Name"]] = reqs.get(row["Name"], 0) + int(row["Request Count"])
            fails[row["Name"]] = fails.get(row["Name"], 0) + int(row["Failure Count"])
    return reqs, fails, agg


def classify(error):
    """A failure message (Locust's or loadgen's) as a class."""
    # loadgen: "HTTP 429", "HTTP 401 (expected 200)"; Locust's FastHttpUser:
    # "LocustBadStatusCode(code=429)"; HttpUser: "429 Client Error: ..." or "HTTPError(...)".
    m = re.search(r"(?:HTTP |code=|^|HTTPError\(')([1-5][0-9][0-9])\b", error)
    if m:
        code = int(m.group(1))
        return "HTTP 429" if code == 429 else f"HTTP {code // 100}xx"
    low = error.lower()
    if any(w in low for w in ("connect", "timeout", "timed out", "reset", "refused", "closed")):
        return "no response"
    return "check"


def read_failures(prefix):
    out = {}
    path = f"{prefix}_failures.csv"
    if not os.path.exists(path):
        return out
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            c = classify(row["Error"])
            out[c] = out.get(c, 0) + int(row["Occurrences"])
    return out


def run_locust(host, users, rate, seconds, classes, prefix):
    env = dict(os.environ, PARITY_OUT=f"{prefix}_parity.json")
    cmd = [
        sys.executable, "-m", "locust", "-f", LOCUSTFILE, "--host", host,
        "--users", str(users), "--spawn-rate", str(rate), "--run-time", f"{seconds}s",
        "--headless", "--only-summary", "--csv", prefix, "--loglevel", "WARNING",
        "--stop-timeout", "5",
    ] + classes
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    if not os.path.exists(f"{prefix}_stats.csv"):
        raise RuntimeError(f"locust wrote no stats: {done.stderr[-2000:]}")
    with open(f"{prefix}_parity.json", encoding="utf-8") as f:
        return json.load(f)


def run_loadgen(bin_dir, host, users, rate, seconds, classes, prefix):
    cmd = [
        os.path.join(bin_dir, "loadgen"), "run", SCENARIO, "--host", host,
        "--users", str(users), "--spawn-rate", str(rate), "--run-time", f"{seconds}s",
        "--headless", "--only-summary", "--csv", prefix, "--stop-timeout", "5s",
    ]
    if classes:
        cmd += ["--user-classes", ",".join(classes)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if not os.path.exists(f"{prefix}_stats.csv"):
        raise RuntimeError(f"loadgen wrote no stats: {done.stdout[-2000:]} {done.stderr[-2000:]}")


# --- phases ------------------------------------------------------------------------------


class Stack:
    """mock-upstream and Redis for the whole script; a fresh gateway per tool run."""

    def __init__(self, bin_dir):
        self.bin_dir = bin_dir
        self.procs = []
        mock, addr = spawn(
            [os.path.join(bin_dir, "mock-upstream"), "--listen", "127.0.0.1:0"],
            "mock-upstream listening on ",
        )
        self.procs.append(mock)
        self.mock = addr.split()[0]
        self.redis_port = None
        if shutil.which("redis-server"):
            port = free_port()
            self.procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
            deadline = time.monotonic() + START_WAIT
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    self.redis_port = port
                    break
                except OSError:
                    time.sleep(0.05)
        # Without a Redis of our own, a closed port: the limiter falls back to local
        # (on_error = "local") and never shares state with another Redis user.
        self.redis_url = f"redis://127.0.0.1:{self.redis_port or free_port()}"

    def gateway(self, config):
        if self.redis_port:
            subprocess.run(["redis-cli", "-p", str(self.redis_port), "FLUSHALL"],
                           capture_output=True, timeout=10)
        env = dict(
            os.environ,
            GATEWAY_LISTEN="127.0.0.1:0",
            GATEWAY_ADMIN_LISTEN="127.0.0.1:0",
            GATEWAY_UPSTREAM=self.mock,
            GATEWAY_REDIS_URL=self.redis_url,
            RUST_LOG="warn",
        )
        proc, rest = spawn(
            [os.path.join(self.bin_dir, "gateway"), "serve", "--config", config],
            "gateway listening on ",
            env,
        )
        addr, admin = rest.split(" (admin ")
        admin = admin.rstrip(")")
        wait_ready(admin)
        return proc, addr, admin

    def close(self):
        for p in reversed(self.procs):
            stop(p)


def one_run(stack, tool, config, users, rate, seconds, classes, out):
    gw, addr, admin = stack.gateway(config)
    try:
        prefix = os.path.join(out, tool)
        host = f"http://{addr}"
        extra = {}
        t0 = time.monotonic()
        if tool == "locust":
            extra = run_locust(host, users, rate, seconds, classes, prefix)
        else:
            run_loadgen(stack.bin_dir, host, users, rate, seconds, classes, prefix)
        wall = time.monotonic() - t0
        server = server_status(admin)
    finally:
        stop(gw)
    reqs, fails, agg = read_stats(prefix)
    status = {}
    for route in server.values():
        for cls, n in route.items():
            status[cls] = status.get(cls, 0) + n
    return {
        "requests": reqs,
        "failures_by_name": fails,
        "failures": read_failures(prefix),
        "server_status": status,
        "server_by_route": server,
        "aggregated": {k: agg.get(k) for k in ("Request Count", "Failure Count", "50%", "95%",
                                               "99%", "Requests/s")},
        "wall_s": round(wall, 1),
        "extra": extra,
    }


def compare(label, a, b, results, verdicts):
    stat, dof, p, table = chi2_homogeneity(a, b)
    ok = p >= ALPHA
    results[label] = {"chi2": round(stat, 2), "dof": dof, "p": round(p, 4),
                      "table": {k: list(v) for k, v in table.items()}, "ok": ok}
    verdicts.append(ok)
    print(f"  {label}: chi2={stat:.2f} dof={dof} p={p:.4f} {'ok' if ok else 'DIFFERENT'}")
    for k, (ca, cb) in table.items():
        na = sum(v[0] for v in table.values()) or 1
        nb = sum(v[1] for v in table.values()) or 1
        print(f"    {k:<28} locust {ca:>6} ({100 * ca / na:5.1f} %)  "
              f"loadgen {cb:>6} ({100 * cb / nb:5.1f} %)")


def failure_shares(run):
    """Failure classes plus the successes, so the table is a share of all requests."""
    total = sum(run["requests"].values())
    f = dict(run["failures"])
    f["ok"] = total - sum(f.values())
    return f


def phase(stack, name, config, users, rate, seconds, classes, out, summary, verdicts):
    print(f"== {name}: {users} users, {seconds} s, {os.path.basename(config)}"
          f"{', classes ' + ' '.join(classes) if classes else ', every class'}")
    runs = {}
    for tool in ("locust", "loadgen"):
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        runs[tool] = one_run(stack, tool, config, users, rate, seconds, classes, d)
        r = runs[tool]
        print(f"  {tool}: {sum(r['requests'].values())} requests, failures {r['failures']}, "
              f"server {r['server_status']}, p50/p95/p99 {r['aggregated']['50%']}/"
              f"{r['aggregated']['95%']}/{r['aggregated']['99%']} ms")
    lo, lg = runs["locust"], runs["loadgen"]
    res = {"config": os.path.relpath(config, ROOT), "users": users, "seconds": seconds,
           "runs": runs}
    main_l = {k: v for k, v in lo["requests"].items() if k not in STRESS_NAMES}
    main_g = {k: v for k, v in lg["requests"].items() if k not in STRESS_NAMES}
    compare("per-name shares", main_l, main_g, res, verdicts)
    st_l = {k: v for k, v in lo["requests"].items() if k in STRESS_NAMES}
    st_g = {k: v for k, v in lg["requests"].items() if k in STRESS_NAMES}
    if st_l or st_g:
        compare("StressTestUser split", st_l, st_g, res, verdicts)
        res["stress_rate_ratio"] = round(
            sum(st_g.values()) / max(1, sum(st_l.values())), 2)
        print(f"  StressTestUser requests loadgen/locust: {res['stress_rate_ratio']} "
              "(set by each tool's latency; reported, not tested)")
    compare("status classes (gateway)", lo["server_status"], lg["server_status"], res, verdicts)
    compare("failure classes", failure_shares(lo), failure_shares(lg), res, verdicts)
    summary[name] = res
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target/debug"))
    ap.add_argument("--seconds", type=int, default=12, help="run time of each mix run")
    ap.add_argument("--users", type=int, default=28, help="mix users (a multiple of 14 "
                    "gives both tools the same class counts)")
    ap.add_argument("--phases", default="mix,ratelimit,shipped")
    ap.add_argument("--out", help="directory for the CSVs (default: a temporary one)")
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="locust-parity-")
    os.makedirs(out, exist_ok=True)
    summary, verdicts, bars = {"load": os.getloadavg()}, [], []
    stack = Stack(args.bin_dir)
    try:
        phases = args.phases.split(",")
        if "mix" in phases:
            r = phase(stack, "mix", LOADTEST, args.users, args.users, args.seconds, [], out,
                      summary, verdicts)
            lo = r["runs"]["locust"]
            total = sum(lo["requests"].values())
            bad = sum(v for k, v in lo["failures_by_name"].items() if k != RATELIMIT_NAME)
            ok = total > 0 and bad * 1000 < total
            bars.append(ok)
            r["locust_baseline_errors"] = {"failures": bad, "requests": total, "ok": ok}
            print(f"  baseline bar (real Locust, errors < 0.1 % outside the rate-limit class): "
                  f"{bad}/{total} {'ok' if ok else 'MISSED'}")
        if "ratelimit" in phases:
            # The seed's ratelimit preset (20 users, spawn 5/s), shortened; 10 users.
            secs = max(6, args.seconds * 2 // 3)
            r = phase(stack, "ratelimit", SHIPPED, 10, 5, secs, ["RateLimitTestUser"], out,
                      summary, verdicts)
            lo, lg = r["runs"]["locust"], r["runs"]["loadgen"]
            with_ra = lo["extra"].get("429_with_retry_after", 0)
            without = lo["extra"].get("429_without_retry_after", 0)
            ok = with_ra > 0 and without == 0 and lg["server_status"].get("429", 0) > 0
            bars.append(ok)
            r["locust_429"] = {"with_retry_after": with_ra, "without_retry_after": without,
                               "loadgen_429_server": lg["server_status"].get("429", 0), "ok": ok}
            print(f"  ratelimit bar: Locust saw {with_ra} 429s with Retry-After, {without} "
                  f"without; loadgen drew {lg['server_status'].get('429', 0)} "
                  f"{'ok' if ok else 'MISSED'}")
        if "shipped" in phases:
            # Class weights 3+3+1+2+1: a multiple of 10 users splits alike in both tools.
            users = args.users // 14 * 10 or 10
            secs = max(6, args.seconds * 2 // 3)
            r = phase(stack, "shipped", SHIPPED, users, users, secs,
                      ["PublicRouteUser", "AuthenticatedUser", "RateLimitTestUser",
                       "HighThroughputUser", "HealthCheckMonitor"],
                      out, summary, verdicts)
            for tool in ("locust", "loadgen"):
                s = r["runs"][tool]["server_status"]
                share = s.get("429", 0) / max(1, sum(s.values()))
                r[f"{tool}_429_share"] = round(share, 3)
                print(f"  {tool}: {100 * share:.1f} % of requests answered 429")
    finally:
        stack.close()
    summary["ok"] = all(verdicts) and all(bars)
    summary["alpha"] = ALPHA
    summary["out"] = out
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1, sort_keys=True)
    print(f"parity: {'PASS' if summary['ok'] else 'FAIL'} (alpha {ALPHA}; CSVs in {out})")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
