"""The scaled `waves` scenario (about 2 minutes) against the real binary on a real redis-server: open-model
arrivals ramping to 60 req/s, a spike to 120, a wave to 80, over the three roles plus denial probes. Fails
on any sidecar error or a p99 added latency above 10 ms; then the report is generated and its files must
exist and be non-empty."""

import json
import subprocess
import sys

from conftest import BIN, ROOT


def test_scaled_waves_scenario_and_its_report(tmp_path):
    out = tmp_path / "waves"
    p = subprocess.run([sys.executable, str(ROOT / "bench/load/scenario.py"), "waves", "--scale", "0.05", "--redis", "--binary", str(BIN),
                        "--out", str(out)], capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    r = json.loads((out / "results.json").read_text())
    assert r["requests"] > 5000 and r["late_starts"] == 0, r["requests"]
    assert r["outcomes"]["sidecar_error"] == 0, r["codes"]
    assert r["outcomes"]["denial"] > 0 and r["outcomes"]["success"] > 0.9 * r["requests"]
    assert r["success_rate"] >= 0.999, r["codes"]
    assert r["overhead_ms"]["99"] <= 10, r["overhead_ms"]
    for name in ("metrics-before.prom", "metrics-after.prom", "metrics-delta.json", "samples.json", "timeline.json"):
        assert (out / name).exists(), name
    p = subprocess.run([sys.executable, str(ROOT / "bench/report"), str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for name in ("report.md", "report.html", "throughput.png", "latency.png", "breaker.png", "cache.png", "denials.png", "resources.png"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()
    assert "Success rate" in md and "overhead" in md
    assert "data:image/png;base64," in (out / "report.html").read_text()
