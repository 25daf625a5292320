"""The README's first command: scripts/run-dev.sh (what `make run` runs after building) starts the sidecar on
its embedded default and prints commands; the printed commands must work as printed."""

import os
import signal
import subprocess
import time

import requests

from conftest import ROOT, free_port



def test_make_run_prints_commands_that_work(tmp_path):
    proxy, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(SIDECAR_PROXY_LISTEN=proxy, SIDECAR_ADMIN_LISTEN=admin, SIDECAR_STATE_DIR=str(tmp_path / "state"))
    err = open(tmp_path / "stderr", "w+")
    proc = subprocess.Popen([str(ROOT / "scripts" / "run-dev.sh")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
                            start_new_session=True)
    try:
        deadline = time.time() + 30
        text = ""
        while time.time() < deadline and "Ctrl-C to stop" not in text:
            time.sleep(0.1)
            err.seek(0)
            text = err.read()
            assert proc.poll() is None, text
        lines = [l.strip() for l in text.splitlines()]
        # Every printed `export` runs first, in order, as a user pasting them would.
        exports = "\n".join(l for l in lines if l.startswith("export "))
        assert "HTTPS_PROXY" in exports and "SSL_CERT_FILE" in exports
        # The curl lines (forward proxy, and HTTPS through the proxy) exactly as printed.
        curls = [l for l in lines if l.startswith("curl -x") or l.startswith("curl --cacert")]
        assert len(curls) == 2
        for line in curls:
            out = subprocess.run(["bash", "-c", exports + "\n" + line], env=env, capture_output=True, text=True, timeout=20)
            assert out.returncode == 0 and "organic_results" in out.stdout, line + "\n" + out.stdout + out.stderr
        # The Python lines, as printed.
        for py in [l for l in lines if l.startswith("python3 -c")]:
            out = subprocess.run(["bash", "-c", exports + "\n" + py], env=env, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, py + "\n" + out.stderr
        assert requests.get(f"http://{admin}/metrics", timeout=5).status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
