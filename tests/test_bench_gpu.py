"""bench/gpu.py, the prepared GPU measurement, runs end to end (here on the CPU, on the tiny model)."""

import json
import subprocess
import sys

from core.paths import REPO_ROOT


def test_the_gpu_bench_dry_runs_on_a_cpu_and_writes_its_figures(embedded_dir, tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--model", "tiny", "--batch", "2",
                           "--length", "16", "--steps", "1", "--precisions", "fp32,bf16", "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert [r["precision"] for r in figures["rows"]] == ["fp32", "bf16"]
    for row in figures["rows"]:
        assert row["finite"] and row["tokens_per_s"] > 0 and 0 < row["mfu_measured_peak"]
    assert "| bf16 |" in proc.stdout
