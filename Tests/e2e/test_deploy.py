"""deploy/ is checked, not just shipped: alert rules and their unit tests with promtool, every metric name
the rules and the dashboard use exported by a running binary, the systemd unit by systemd-analyze, the
container build (built when a Docker daemon is reachable, linted otherwise), the compose fleet and the
Kubernetes manifests (structure: the sidecar as the pod's only way out, secrets only in the sidecar
container, probes on the admin port, a grace period above the drain deadline)."""

import json
import re
import shutil
import subprocess

import pytest
import requests
import yaml

from conftest import BIN, ROOT

DEPLOY = ROOT / "deploy"


def run(*cmd, **kw):
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=600, **kw)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_alert_rules_check_and_pass_their_unit_tests():
    p = run("promtool", "check", "rules", str(DEPLOY / "alerts.yaml"))
    assert p.returncode == 0, p.stdout + p.stderr
    p = run("promtool", "test", "rules", str(DEPLOY / "alerts.test.yaml"))
    assert p.returncode == 0, p.stdout + p.stderr
    # Every alert has a unit test.
    alerts = {r["alert"] for g in yaml.safe_load((DEPLOY / "alerts.yaml").read_text())["groups"] for r in g["rules"]}
    tested = {t["alertname"] for case in yaml.safe_load((DEPLOY / "alerts.test.yaml").read_text())["tests"] for t in case["alert_rule_test"]}
    assert alerts == tested, alerts ^ tested


def exported_names(sidecar_factory):
    s = sidecar_factory(None)
    text = requests.get(f"{s.admin_url}/metrics", timeout=5).text
    names = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            names.add(m.group(1))
            if m.group(2) == "histogram":
                names |= {m.group(1) + s for s in ("_bucket", "_sum", "_count")}
    return names


def test_every_metric_the_rules_and_dashboard_use_is_exported(sidecar_factory):
    names = exported_names(sidecar_factory)
    used = set()
    for path in (DEPLOY / "alerts.yaml", DEPLOY / "grafana-dashboard.json", DEPLOY / "alerts.test.yaml"):
        used |= set(re.findall(r"\bgateway_[a-z0-9_]+", path.read_text()))
    assert used, "no metric names found"
    missing = sorted(used - names)
    assert not missing, f"used but not exported: {missing}"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path):
    unit = tmp_path / "agent-sidecar.service"
    unit.write_text((DEPLOY / "agent-sidecar.service").read_text().replace("/usr/local/bin/sidecar", str(BIN)))
    p = run("systemd-analyze", "verify", str(unit))
    assert p.returncode == 0 and "error" not in (p.stdout + p.stderr).lower(), p.stdout + p.stderr
    text = unit.read_text()
    for option in ("NoNewPrivileges=true", "ProtectSystem=strict", "CapabilityBoundingSet=", "SystemCallFilter=@system-service",
                   "ExecStartPre=" + str(BIN) + " check-config", "ExecReload=/bin/kill -HUP"):
        assert option in text, option
    assert "KEK_BASE64=" in (DEPLOY / "agent-sidecar.env.example").read_text()


def docker_daemon():
    return shutil.which("docker") is not None and run("docker", "info").returncode == 0


def test_container_image_builds_or_lints(tmp_path):
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(stages) == 2 and stages[0][1] == "build", stages
    assert re.search(r"^USER\s+10001", text, re.M), "runs as an unprivileged user"
    assert "--static-swift-stdlib" in (ROOT / "scripts/release-flags.sh").read_text() and "release-flags.sh" in text
    assert re.search(r"^ENTRYPOINT \[\"/usr/local/bin/sidecar\"\]", text, re.M)
    for lib in ("libhiredis", "libsqlite3", "libjemalloc", "ca-certificates", "tzdata"):
        assert lib in text.split("AS runtime", 1)[1], lib
    assert ".build" in (ROOT / ".dockerignore").read_text()
    if not docker_daemon():
        pytest.skip("no Docker daemon: linted only")
    tag = "agent-sidecar:e2e"
    p = run("docker", "build", "-t", tag, str(ROOT))
    assert p.returncode == 0, p.stderr[-3000:]
    p = run("docker", "run", "--rm", tag, "version")
    assert p.returncode == 0 and p.stdout.startswith("sidecar "), p.stdout + p.stderr


def test_compose_fleet_is_two_sidecars_one_redis_and_prometheus():
    doc = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    services = doc["services"]
    assert {"redis", "sidecar-a", "sidecar-b", "prometheus", "keys"} <= set(services)
    for name in ("sidecar-a", "sidecar-b"):
        svc = services[name]
        assert svc["environment"]["REDIS_URL"] == "redis://redis:6379"
        assert any(v.startswith("fleet-keys:/keys") for v in svc["volumes"])
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["sidecar-a"]["environment"]["SIDECAR_ID"] != services["sidecar-b"]["environment"]["SIDECAR_ID"]
    p = run(str(BIN), "check-config", str(DEPLOY / "compose/sidecar.yaml"))
    assert p.returncode == 0, p.stderr
    targets = yaml.safe_load((DEPLOY / "compose/prometheus.yaml").read_text())["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["sidecar-a:9090", "sidecar-b:9090"]
    if docker_daemon() and run("docker", "compose", "version").returncode == 0:
        p = run("docker", "compose", "-f", str(DEPLOY / "docker-compose.yaml"), "config", "-q")
        assert p.returncode == 0, p.stderr


def k8s_docs():
    out = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        out += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def test_kubernetes_manifests(tmp_path):
    docs = k8s_docs()
    kinds = {d["kind"] for _, d in docs}
    assert {"Deployment", "ConfigMap", "Secret", "NetworkPolicy", "StatefulSet", "Service", "PodMonitor"} <= kinds, kinds
    agent = next(d for _, d in docs if d["kind"] == "Deployment")
    pod = agent["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    sidecar, app = containers["sidecar"], containers["agent"]
    # The sidecar is the only way out: iptables in an init container let only its UID connect out.
    init = pod["initContainers"][0]
    assert "NET_ADMIN" in init["securityContext"]["capabilities"]["add"]
    script = init["args"][0]
    assert f"--uid-owner {sidecar['securityContext']['runAsUser']}" in script and "-j REJECT" in script
    assert app["securityContext"]["runAsUser"] != sidecar["securityContext"]["runAsUser"]
    # Secrets (KEK, keys, vault, CA key, admin token) reach the sidecar container only.
    secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
    assert secret_volumes and not secret_volumes & {m["name"] for m in app.get("volumeMounts", [])}
    assert secret_volumes <= {m["name"] for m in sidecar["volumeMounts"]}
    app_env = {e["name"]: e for e in app["env"]}
    assert set(app_env) >= {"HTTPS_PROXY", "HTTP_PROXY", "SSL_CERT_FILE"}
    assert all("secretKeyRef" not in (e.get("valueFrom") or {}) or e["name"] == "AGENT_TOKEN" for e in app["env"])
    # Probes on the admin port; the grace period outlasts the drain deadline.
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz" and sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    config = yaml.safe_load(next(d for _, d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "agent-sidecar-config")["data"]["sidecar.yaml"])
    drain = int(config["limits"]["drain_timeout"].rstrip("s"))
    assert pod["terminationGracePeriodSeconds"] > drain
    # The ConfigMap's configuration and policy load.
    cm = next(d for _, d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "agent-sidecar-config")["data"]
    (tmp_path / "policy.yaml").write_text(cm["policy.yaml"])
    p = run(str(BIN), "check-policy", str(tmp_path / "policy.yaml"))
    assert p.returncode == 0, p.stderr
    # Redis persists; egress is DNS, Redis and 443 only.
    redis_conf = next(d for _, d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "agent-sidecar-redis")["data"]["redis.conf"]
    assert "appendonly yes" in redis_conf
    egress = next(d for _, d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "agent-sidecar-egress")["spec"]["egress"]
    ports = sorted({p["port"] for rule in egress for p in rule["ports"]})
    assert ports == [53, 443, 6379]
    assert "169.254.0.0/16" in egress[-1]["to"][0]["ipBlock"]["except"]
