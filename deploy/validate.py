#!/usr/bin/env python3
"""Offline checks of deploy/: Kubernetes manifests against the Kubernetes
schemas (kubernetes-validate ships them), kustomize references, the
Dockerfile targets, and docker-compose.yml references; then real builds:
`kubectl kustomize` of base and every overlay (each rendered object against
the schemas) and `docker-compose config`. Exit 1 on any error.
Run: python3 deploy/validate.py   (tests/tests/deploy.rs runs it)."""
import os
import re
import sys
import tomllib

import yaml
import kubernetes_validate

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
K8S_VERSION = "1.30.0"
errors = []


def err(msg):
    errors.append(msg)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def read(path):
    with open(path) as f:
        return f.read()


# --- Dockerfile ---
dockerfile = read(os.path.join(HERE, "Dockerfile"))
targets = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.M))
for t in ("builder", "gateway", "loadgen", "mock-upstream"):
    if t not in targets:
        err(f"Dockerfile: no stage {t}")
if "USER 10001" not in dockerfile or "HEALTHCHECK" not in dockerfile:
    err("Dockerfile: runtime must be non-root with a HEALTHCHECK")

# --- Toolchain: the image's rustc, the declared MSRV and the lock agree ---
# `cargo build --locked` inside the builder image fails when a locked crate
# needs a newer rustc than the image has; the declared rust-version must be
# at least what the lock needs and at most what the image has.
import json
import subprocess


def version(v):
    parts = [int(x) for x in re.findall(r"\d+", v)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


m = re.search(r"^FROM rust:(\d+\.\d+(?:\.\d+)?)\S* AS builder$", dockerfile, re.M)
if not m:
    err("Dockerfile: the builder stage must start FROM rust:X.Y[-variant]")
else:
    image = version(m.group(1))
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        declared_s = tomllib.load(f)["workspace"]["package"]["rust-version"]
    declared = version(declared_s)
    if declared > image:
        err(f"Cargo.toml rust-version {declared_s} is newer than the Dockerfile's rust:{m.group(1)}")
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked",
         "--filter-platform", "x86_64-unknown-linux-gnu"],
        cwd=ROOT, capture_output=True, text=True)
    if meta.returncode != 0:
        err(f"cargo metadata --locked failed: {meta.stderr.strip()[-400:]}")
    else:
        md = json.loads(meta.stdout)
        used = {n["id"] for n in md["resolve"]["nodes"]}
        needs = sorted(
            ((version(p["rust_version"]), p["name"], p["version"], p["rust_version"])
             for p in md["packages"] if p["id"] in used and p.get("rust_version")),
            reverse=True)
        if needs:
            top, name, ver, rv = needs[0]
            if top > image:
                err(f"Cargo.lock: {name} {ver} needs rustc {rv}, newer than the Dockerfile's rust:{m.group(1)}")
            if top > declared:
                err(f"Cargo.lock: {name} {ver} needs rustc {rv}, newer than Cargo.toml's rust-version {declared_s}")

# --- Kubernetes ---
base = os.path.join(HERE, "k8s", "base")
docs = []
kust = yaml.safe_load(read(os.path.join(base, "kustomization.yaml")))
for r in kust["resources"]:
    p = os.path.join(base, r)
    if not os.path.exists(p):
        err(f"k8s/base: missing resource {r}")
        continue
    docs += [(r, d) for d in load_all(p)]
for g in kust.get("configMapGenerator", []):
    for f in g["files"]:
        src = f.split("=", 1)[-1]
        if not os.path.exists(os.path.join(base, src)):
            err(f"k8s/base: configMapGenerator file {src} missing")
crds = {"ServiceMonitor", "PrometheusRule", "Certificate", "Issuer", "ClusterIssuer"}
kinds = {}
for name, d in docs:
    kinds.setdefault(d["kind"], []).append(d)
    if d["kind"] in crds:
        continue
    try:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        err(f"{name}: {d['kind']} {d['metadata']['name']}: {e.message} at {list(e.path)}")
    except Exception as e:  # noqa: BLE001 - schema lookup errors
        err(f"{name}: {d['kind']}: {e}")
for k in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret",
          "ServiceMonitor", "PrometheusRule", "CronJob", "Job"):
    if k not in kinds:
        err(f"k8s/base: no {k}")

# The gateway Deployment: probes on the admin port, grace >= drain + preStop.
gw = next(d for d in kinds.get("Deployment", []) if d["metadata"]["name"] == "gateway")
pod = gw["spec"]["template"]["spec"]
c = pod["containers"][0]
for probe in ("livenessProbe", "readinessProbe"):
    if c.get(probe, {}).get("httpGet", {}).get("port") != "admin":
        err(f"gateway {probe} must hit the admin port")
m = re.search(r'^drain_timeout\s*=\s*"(\d+)s"', read(os.path.join(base, "gateway.toml")), re.M)
drain = int(m.group(1)) if m else 0
pre = c["lifecycle"]["preStop"]["sleep"]["seconds"]
if pod["terminationGracePeriodSeconds"] < drain + pre:
    err(f"terminationGracePeriodSeconds < drain_timeout {drain}s + preStop {pre}s")
if not c.get("resources", {}).get("limits") or not c.get("securityContext"):
    err("gateway container needs resources and securityContext")
# The job must be Indexed.
if not any(j["spec"].get("completionMode") == "Indexed" for j in kinds.get("Job", [])):
    err("the distributed loadgen Job must be Indexed")
# The admin listener is never public: no Service that reaches the gateway's
# admin port may have a virtual IP (only a headless one, which Ingresses and
# LoadBalancers cannot front) or be a NodePort/LoadBalancer. The
# ServiceMonitor scrapes admin through a Service it selects.
admin_ports = {p["containerPort"] for p in c.get("ports", []) if p.get("name") == "admin"}
gw_labels = gw["spec"]["template"]["metadata"]["labels"]


def admin_exposures(services, where):
    """Errors for every Service that publishes the gateway's admin port."""
    for svc in services:
        spec = svc["spec"]
        sel = spec.get("selector") or {}
        if not sel or any(gw_labels.get(k) != v for k, v in sel.items()):
            continue
        for p in spec.get("ports", []):
            tp = p.get("targetPort", p.get("port"))
            if tp == "admin" or tp in admin_ports or p.get("name") == "admin":
                public = spec.get("clusterIP") != "None" or spec.get("type", "ClusterIP") != "ClusterIP"
                if public:
                    err(f"{where}: Service {svc['metadata']['name']} exposes the gateway admin port {p.get('name', tp)}: "
                        "use a headless (clusterIP: None) ClusterIP Service for Prometheus")


admin_exposures(kinds.get("Service", []), "k8s/base")
sm = kinds["ServiceMonitor"][0]["spec"]
sm_sel = sm.get("selector", {}).get("matchLabels", {})
scraped = [x for x in kinds.get("Service", [])
           if all(x["metadata"].get("labels", {}).get(k) == v for k, v in sm_sel.items())]
if not scraped:
    err("ServiceMonitor selects no Service")
svc_ports = {p["name"] for x in scraped for p in x["spec"]["ports"]}
for ep in sm["endpoints"]:
    if ep["port"] not in svc_ports:
        err(f"ServiceMonitor port {ep['port']} not on the Services it selects")
# The pod's gateway.toml: every key file it names is mounted from a Secret
# or ConfigMap that holds that key, every secret_env is set, and every host
# it talks to is a Service of the base (or an IP).
gcfg = tomllib.loads(read(os.path.join(base, "gateway.toml")))
args = c.get("args", [])
config_path = args[args.index("--config") + 1] if "--config" in args else ""
mounts = {vm["mountPath"].rstrip("/"): vm["name"] for vm in c.get("volumeMounts", [])}
volumes = {v["name"]: v for v in pod.get("volumes", [])}
secrets = {x["metadata"]["name"]: x for x in kinds.get("Secret", [])}
# Secrets cert-manager writes for a Certificate of the base: tls.crt,
# tls.key and ca.crt.
for cert in kinds.get("Certificate", []):
    secrets.setdefault(cert["spec"]["secretName"],
                       {"data": {"tls.crt": "", "tls.key": "", "ca.crt": ""}})
cm_files = {g["name"]: [f.split("=", 1)[0] for f in g["files"]]
            for g in kust.get("configMapGenerator", [])}
env_names = {e["name"] for e in c.get("env", [])}
service_names = {x["metadata"]["name"] for x in kinds.get("Service", [])}


def mounted(path):
    """The keys a pod sees at path, or None when nothing is mounted there."""
    for m, vol_name in mounts.items():
        if path.startswith(m + "/"):
            rel = path[len(m) + 1:]
            vol = volumes.get(vol_name, {})
            if "secret" in vol:
                sec = secrets.get(vol["secret"]["secretName"], {})
                return rel, set(sec.get("stringData", {})) | set(sec.get("data", {}))
            if "configMap" in vol:
                return rel, set(cm_files.get(vol["configMap"]["name"], []))
            return rel, set()
    return None


if mounted(config_path) is None or mounted(config_path)[0] not in mounted(config_path)[1]:
    err(f"gateway --config {config_path} is not a mounted ConfigMap key")
for pname, provider in gcfg.get("auth", {}).items():
    for i, key in enumerate(provider.get("keys", [])):
        for field in ("secret_file", "pem_file"):
            p = key.get(field)
            if not p:
                continue
            full = p if os.path.isabs(p) else os.path.join(os.path.dirname(config_path), p)
            found = mounted(full)
            if found is None or found[0] not in found[1]:
                err(f"gateway.toml auth.{pname}.keys[{i}].{field}: {full} is not mounted in the gateway pod")
        if key.get("secret_env") and key["secret_env"] not in env_names:
            err(f"gateway.toml auth.{pname}.keys[{i}].secret_env: {key['secret_env']} not set in the pod")


def must_mount(p, where):
    full = p if os.path.isabs(p) else os.path.join(os.path.dirname(config_path), p)
    found = mounted(full)
    if found is None or found[0] not in found[1]:
        err(f"gateway.toml {where}: {full} is not mounted in the gateway pod")


# TLS: the certificate files and every CA bundle come from mounted Secrets.
for i, pair in enumerate(gcfg.get("server", {}).get("tls", {}).get("certificates", [])):
    must_mount(pair["cert_file"], f"server.tls.certificates[{i}].cert_file")
    must_mount(pair["key_file"], f"server.tls.certificates[{i}].key_file")
if gcfg.get("server", {}).get("tls", {}).get("client_ca_file"):
    must_mount(gcfg["server"]["tls"]["client_ca_file"], "server.tls.client_ca_file")
for pname, provider in gcfg.get("auth", {}).items():
    if provider.get("jwks", {}).get("ca_file"):
        must_mount(provider["jwks"]["ca_file"], f"auth.{pname}.jwks.ca_file")
# Serving HTTPS: the pod serves the https port, and a Certificate of the base
# issues the Secret its files come from.
if gcfg.get("server", {}).get("tls"):
    if not any(p.get("name") == "https" for p in c.get("ports", [])):
        err("gateway.toml has [server.tls] but the gateway container has no https port")
    cert_secrets = {x["spec"]["secretName"] for x in kinds.get("Certificate", [])}
    tls_vols = {volumes[n]["secret"]["secretName"] for m, n in mounts.items()
                if "secret" in volumes.get(n, {}) and any(
                    pr["cert_file"].startswith(m + "/") for pr in gcfg["server"]["tls"]["certificates"])}
    if not tls_vols or not tls_vols <= cert_secrets:
        err(f"the gateway's certificate Secret(s) {sorted(tls_vols)} are not issued by a Certificate of the base")
# Admin writes need a token, and it comes from a Secret.
admin_cfg = gcfg.get("admin", {})
if admin_cfg.get("token_file"):
    p = admin_cfg["token_file"]
    full = p if os.path.isabs(p) else os.path.join(os.path.dirname(config_path), p)
    found = mounted(full)
    vol = next((volumes.get(n, {}) for m, n in mounts.items() if full.startswith(m + "/")), {})
    if found is None or found[0] not in found[1] or "secret" not in vol:
        err(f"gateway.toml admin.token_file: {full} is not a key of a Secret mounted in the gateway pod")
elif admin_cfg.get("token_env"):
    e = next((e for e in c.get("env", []) if e["name"] == admin_cfg["token_env"]), None)
    if e is None or "secretKeyRef" not in e.get("valueFrom", {}):
        err(f"gateway.toml admin.token_env: {admin_cfg['token_env']} is not set from a Secret in the pod")
else:
    err("gateway.toml: no [admin] token_file or token_env: admin writes would be refused")


def host_ok(host):
    return re.fullmatch(r"[0-9.]+", host) is not None or host in service_names


for uname, up in gcfg.get("upstreams", {}).items():
    for ep in up.get("endpoints", []):
        if not host_ok(ep.rsplit(":", 1)[0]):
            err(f"gateway.toml upstreams.{uname}.endpoints: {ep} is not a Service of the base")
redis_url = gcfg.get("rate_limit", {}).get("redis", {}).get("url", "")
if redis_url and not host_ok(re.sub(r"^rediss?://([^:/]+).*$", r"\1", redis_url)):
    err(f"gateway.toml rate_limit.redis.url: {redis_url} is not a Service of the base")
for pname, provider in gcfg.get("auth", {}).items():
    url = provider.get("jwks", {}).get("url", "")
    if url.startswith("http://"):
        err(f"gateway.toml auth.{pname}.jwks.url: {url}: JWKS must be fetched over https")
    if url and not host_ok(re.sub(r"^https?://([^:/]+).*$", r"\1", url)):
        err(f"gateway.toml auth.{pname}.jwks.url: {url} is not a Service of the base")

# The k8s gateway.toml is deploy/config/meetinity.toml with the cluster's
# addresses and the mounted key: nothing else may drift.
local = tomllib.loads(read(os.path.join(ROOT, "deploy/config/meetinity.toml")))
for up in local.get("upstreams", {}).values():
    up["endpoints"] = [e.replace("127.0.0.1:18080", "mock-upstream:18080") for e in up["endpoints"]]
local["rate_limit"]["redis"]["url"] = "redis://redis:6379"
local["rate_limit"]["trusted_proxies"] = gcfg["rate_limit"]["trusted_proxies"]
local["auth"]["meetinity"]["jwks"]["url"] = "https://mock-upstream:18443/.well-known/jwks.json"
local["auth"]["meetinity"]["jwks"]["ca_file"] = gcfg["auth"]["meetinity"]["jwks"].get("ca_file")
if "tls" in gcfg.get("server", {}):
    local["server"]["tls"] = gcfg["server"]["tls"]  # the cluster's certificate, from its Secret
local["auth"]["meetinity"]["keys"][0]["secret_file"] = "/etc/gateway-keys/hs256-secret"
if "admin" in gcfg:
    local["admin"] = gcfg["admin"]  # the cluster's token, from its Secret
if local != gcfg:
    err("k8s/base/gateway.toml drifted from deploy/config/meetinity.toml beyond the cluster addresses and key path")

# Copies that must stay identical to their source.
for copy, src in (("meetinity-sla.toml", "loadgen/scenarios/meetinity-sla.toml"),
                  ("prometheusrule.yaml", "monitoring/kubernetes/prometheusrule.yaml")):
    if read(os.path.join(base, copy)) != read(os.path.join(ROOT, src)):
        err(f"k8s/base/{copy} differs from {src}: copy it again")
if not kinds["PrometheusRule"][0]["spec"]["groups"]:
    err("PrometheusRule has no groups")
# Overlays reference what exists.
for ov in ("staging", "production"):
    d = os.path.join(HERE, "k8s", "overlays", ov)
    k = yaml.safe_load(read(os.path.join(d, "kustomization.yaml")))
    for r in k.get("resources", []):
        if not os.path.exists(os.path.join(d, r)):
            err(f"overlay {ov}: missing {r}")
    for p in k.get("patches", []):
        if "path" in p:
            pp = os.path.join(d, p["path"])
            if not os.path.exists(pp):
                err(f"overlay {ov}: missing patch {p['path']}")
                continue
            for doc in load_all(pp):
                names = [x["metadata"]["name"] for x in kinds.get(doc["kind"], [])]
                if doc["metadata"]["name"] not in names:
                    err(f"overlay {ov}: patch targets unknown {doc['kind']} {doc['metadata']['name']}")

# --- docker-compose.yml ---
compose = yaml.safe_load(read(os.path.join(HERE, "docker-compose.yml")))
services = compose["services"]
for s in ("gateway-1", "gateway-2", "redis", "mock-upstream", "prometheus", "alertmanager", "grafana", "loadgen"):
    if s not in services:
        err(f"compose: no service {s}")
for name, s in services.items():
    deps = s.get("depends_on", [])
    for dep in (deps if isinstance(deps, list) else deps.keys()):
        if dep not in services:
            err(f"compose: {name} depends on unknown {dep}")
    b = s.get("build")
    if b:
        if not os.path.exists(os.path.join(HERE, b["context"], b["dockerfile"])):
            err(f"compose: {name}: no {b['dockerfile']}")
        if b.get("target") not in targets:
            err(f"compose: {name}: no Dockerfile stage {b.get('target')}")
    for v in s.get("volumes", []):
        host = v.split(":")[0]
        if host.startswith(".") and not os.path.exists(os.path.join(HERE, host)) and "reports" not in host:
            err(f"compose: {name}: volume source {host} missing")
    env = s.get("environment", {})
    up = env.get("GATEWAY_UPSTREAM") if isinstance(env, dict) else None
    if up and up.split(":")[0] not in services:
        err(f"compose: {name}: GATEWAY_UPSTREAM host {up} is not a service")
if services["gateway-1"]["environment"]["GATEWAY_REDIS_URL"] != services["gateway-2"]["environment"]["GATEWAY_REDIS_URL"]:
    err("compose: the gateway replicas must share Redis")


def published(port):
    """(host ip, container port) of a compose ports entry."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "")), int(str(port["target"]).split("/")[0])
    parts = str(port).split("/")[0].split(":")
    host_ip = parts[0] if len(parts) == 3 else ""
    return host_ip, int(parts[-1].split("-")[0])


for name, s in services.items():
    env = s.get("environment", {})
    admin = env.get("GATEWAY_ADMIN_LISTEN") if isinstance(env, dict) else None
    if not admin:
        continue
    admin_port = int(admin.rsplit(":", 1)[1])
    for port in s.get("ports", []):
        host_ip, target = published(port)
        if target == admin_port and host_ip not in ("127.0.0.1", "::1", "[::1]"):
            err(f"compose: {name} publishes the admin port {admin_port} beyond 127.0.0.1 ({port})")
    # The admin token the cluster config names is mounted.
    tf = gcfg.get("admin", {}).get("token_file")
    if tf and not any(str(v).split(":")[1] == tf for v in s.get("volumes", [])):
        err(f"compose: {name} does not mount the admin token at {tf}")
prom = yaml.safe_load(read(os.path.join(HERE, "compose", "prometheus.yml")))
for sc in prom["scrape_configs"]:
    for st in sc["static_configs"]:
        for t in st["targets"]:
            if t.split(":")[0] not in services:
                err(f"compose prometheus: target {t} is not a service")
prov = yaml.safe_load(read(os.path.join(ROOT, "monitoring/grafana/provisioning/dashboards/gateway.yml")))
mounts = [v.split(":")[1] for v in services["grafana"]["volumes"]]
if prov["providers"][0]["options"]["path"] not in mounts:
    err("compose: grafana does not mount the dashboards where the provider looks")

# --- Real builds: kustomize (kubectl's built-in) and docker-compose ---
# Each overlay as kubectl would apply it: every rendered object against the
# schemas, every ConfigMap/Secret a pod mounts exists under its generated
# (hash-suffixed) name, the overlay's namespace on every object, production
# without the simulated services.
import shutil  # noqa: E402
import subprocess  # noqa: E402

rendered_total = 0
for tool in ("kubectl", "docker-compose"):
    if shutil.which(tool) is None:
        err(f"{tool} not found: apt-get install {tool} (scripts/test.sh does)")
for ov in ("base", "overlays/staging", "overlays/production") if shutil.which("kubectl") else ():
    out = subprocess.run(["kubectl", "kustomize", os.path.join(HERE, "k8s", ov)],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        err(f"kubectl kustomize k8s/{ov}: {out.stderr.strip()}")
        continue
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    rendered_total += len(rendered)
    names = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    ns = None
    if ov != "base":
        ns = yaml.safe_load(read(os.path.join(HERE, "k8s", ov, "kustomization.yaml"))).get("namespace")
    for d in rendered:
        where = f"k8s/{ov} (built): {d['kind']} {d['metadata']['name']}"
        if d["kind"] not in crds:
            try:
                kubernetes_validate.validate(d, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                err(f"{where}: {e.message} at {list(e.path)}")
            except Exception as e:  # noqa: BLE001
                err(f"{where}: {e}")
        if ns and d["metadata"].get("namespace") != ns:
            err(f"{where}: not in namespace {ns}")
        if d["kind"] == "Service":
            admin_exposures([d], f"k8s/{ov} (built)")
        spec = d.get("spec", {})
        tmpl = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template")
        for v in (tmpl or {}).get("spec", {}).get("volumes", []):
            if "configMap" in v and ("ConfigMap", v["configMap"]["name"]) not in names:
                err(f"{where}: mounts missing ConfigMap {v['configMap']['name']}")
            issued = {x["spec"]["secretName"] for x in rendered if x["kind"] == "Certificate"}
            if "secret" in v and ("Secret", v["secret"]["secretName"]) not in names \
                    and v["secret"]["secretName"] not in issued:
                err(f"{where}: mounts missing Secret {v['secret']['secretName']}")
    has_mock = any(n == "mock-upstream" for _, n in names)
    if ov.endswith("production") and has_mock:
        err("k8s/overlays/production (built): still runs mock-upstream")
    if not ov.endswith("production") and not has_mock:
        err(f"k8s/{ov} (built): no mock-upstream for gateway.toml's upstreams")
out = subprocess.run(["docker-compose" if shutil.which("docker-compose") else "true", "-f", os.path.join(HERE, "docker-compose.yml"), "config", "-q"],
                     capture_output=True, text=True, timeout=120)
if out.returncode != 0:
    err(f"docker-compose config: {out.stderr.strip()}")

# --- The cluster's gateway.toml passes `gateway check` ---
# With the pod's mounted files stood in by local ones (a generated
# certificate for the Secrets cert-manager writes, random key and token),
# so a key the gateway refuses (a JWKS over http://, a bad TLS section)
# fails here, not in the cluster.
gateway_bin = os.path.join(ROOT, "target", "debug", "gateway")
if os.path.exists(gateway_bin) and shutil.which("openssl"):
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        text = read(os.path.join(base, "gateway.toml"))
        for mount in ("/etc/gateway-keys", "/etc/gateway-admin", "/etc/gateway-tls"):
            os.makedirs(tmp + mount, exist_ok=True)
            text = text.replace(mount + "/", tmp + mount + "/")
        with open(tmp + "/etc/gateway-keys/hs256-secret", "w") as f:
            f.write(os.urandom(32).hex())
        with open(tmp + "/etc/gateway-admin/token", "w") as f:
            f.write(os.urandom(32).hex())
        d = tmp + "/etc/gateway-tls/"
        gen = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "90", "-subj", "/CN=gateway", "-addext", "subjectAltName=DNS:gateway",
             "-keyout", d + "tls.key", "-out", d + "tls.crt"], capture_output=True, text=True)
        shutil.copy(d + "tls.crt", d + "ca.crt")
        cfg = os.path.join(tmp, "gateway.toml")
        with open(cfg, "w") as f:
            f.write(text)
        chk = subprocess.run([gateway_bin, "check", cfg], capture_output=True, text=True, timeout=60)
        if gen.returncode != 0:
            err(f"openssl: {gen.stderr.strip()}")
        elif chk.returncode != 0:
            err(f"gateway check k8s/base/gateway.toml: {(chk.stdout + chk.stderr).strip()}")
else:
    print("note: target/debug/gateway or openssl missing: gateway check of k8s/base/gateway.toml skipped")

for e in errors:
    print("error:", e)
print(f"deploy: {len(docs)} Kubernetes objects ({rendered_total} rendered by kustomize over base and overlays), {len(services)} compose services, {len(errors)} errors")
sys.exit(1 if errors else 0)
