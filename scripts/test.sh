#!/usr/bin/env bash
# Runs every test of the workspace. Installs or starts what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

# monitoring tests drive promtool, amtool and a real prometheus (Debian's
# prometheus and prometheus-alertmanager packages); install them once.
if ! command -v promtool >/dev/null || ! command -v amtool >/dev/null || ! command -v prometheus >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "installing prometheus and prometheus-alertmanager (monitoring tests)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            prometheus prometheus-alertmanager >/dev/null
    else
        echo "warning: promtool/amtool/prometheus missing and cannot apt-get install them" >&2
    fi
fi
# deploy/validate.py builds every kustomize overlay (kubectl's built-in
# kustomize) and parses the compose file (docker-compose config): no cluster
# or Docker daemon needed.
if ! command -v kubectl >/dev/null || ! command -v docker-compose >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "installing kubectl and docker-compose (deploy tests)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            kubectl docker-compose >/dev/null
    else
        echo "warning: kubectl/docker-compose missing and cannot apt-get install them" >&2
    fi
fi
# Kubernetes schema validation of deploy/k8s (a PyPI package shipping the schemas).
if command -v python3 >/dev/null && ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
    python3 -m pip install -q kubernetes-validate >/dev/null 2>&1 \
        || echo "warning: cannot pip install kubernetes-validate" >&2
fi
# loadgen's CSVs are compared with real Locust's (loadgen/tests/csv_locust.rs; the
# test also tries this itself and skips with the reason only if pip cannot).
if command -v python3 >/dev/null && ! python3 -c 'import locust' 2>/dev/null; then
    python3 -m pip install -q locust >/dev/null 2>&1 \
        || echo "warning: cannot pip install locust: loadgen's CSV test will skip" >&2
fi

# loadgen's HTML report is checked in a real headless browser (loadgen/tests/report.rs):
# Debian's chromium. Without it that test fails on purpose.
if ! command -v chromium >/dev/null && [ -z "${LOADGEN_CHROMIUM:-}" ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "installing chromium (HTML report test)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    else
        echo "warning: chromium missing and cannot apt-get install it: loadgen's report test will fail" >&2
    fi
fi
# loadgen's web UI is driven through its page in that chromium by Playwright
# (loadgen/tests/ui.rs + ui_browser.py; no browser download: it launches Debian's).
if command -v python3 >/dev/null && ! python3 -c 'import playwright' 2>/dev/null; then
    python3 -m pip install -q playwright >/dev/null 2>&1 \
        || echo "warning: cannot pip install playwright: loadgen's UI test will fail" >&2
fi
# The rate-limit tests run their own redis-server (and use one on :6379).
if ! command -v redis-server >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
if ! redis-cli -p 6379 ping >/dev/null 2>&1; then
  redis-server --port 6379 --save "" --appendonly no --daemonize yes >/dev/null
fi
# HTTPS termination (tests/tests/tls.rs) is checked with real clients: curl,
# openssl s_client and h2load (Debian's nghttp2-client).
if ! command -v curl >/dev/null || ! command -v openssl >/dev/null || ! command -v h2load >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "installing curl, openssl and nghttp2-client (TLS tests)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            curl openssl nghttp2-client >/dev/null
    else
        echo "warning: curl/openssl/h2load missing and cannot apt-get install them" >&2
    fi
fi
# The end-to-end tests drive the real binaries (gateway, mock-upstream, loadgen).
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- --test-threads 4
