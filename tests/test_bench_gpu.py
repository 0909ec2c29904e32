"""bench/gpu.py, the prepared GPU check, runs end to end (here as its CPU dry run, on a tiny stand-in), and the
CPU bench's gate for CPUs without native bf16 (bench/common.py, bench/compare.py)."""

import json
import math
import subprocess
import sys

from tunelab.core.paths import REPO_ROOT

HEADINGS = ["## The lesson workload, side by side", "## Big batches: TuneLab's step against a bare bf16 loop",
            "## Memory: the estimate against the measured peak", "## The profile of one training step",
            "## Data parallelism through the CLI (1 and 2 workers)",
            "## Device placement: the box's load, generate and evaluate"]


def finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def test_the_gpu_check_dry_runs_every_section_on_a_cpu_into_the_given_report(embedded_dir, tmp_path):
    report, out = tmp_path / "bench-gpu.md", tmp_path / "bench-gpu.json"
    docs = REPO_ROOT / "docs" / "bench-gpu.md"
    before = docs.read_bytes() if docs.exists() else None
    # TRL's peers are left out here for time (each is a process importing trl); `make bench` runs them
    proc = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--model", "tiny", "--peers",
                           "tunelab,seed", "--report", str(report), "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (docs.read_bytes() if docs.exists() else None) == before  # the dry run leaves the GPU report alone
    text = report.read_text()
    for heading in HEADINGS:
        assert heading in text
    assert "**Skipped**" not in text and "**Failed**" not in text, text
    assert "no GPU: a CPU dry run" in text  # never passed off as a GPU figure

    r = json.loads(out.read_text())
    assert finite(r["matmul"]["tflops"]) and r["matmul"]["tflops"] > 0
    lesson = r["lesson"]["results"]
    assert set(lesson) == {"tunelab", "seed"} and all(finite(p["seconds"], p["loss"]) for p in lesson.values())
    assert "TuneLab's defaults are" in text and "the seed's recipe" in text
    for row in r["big"]["rows"]:
        for kind in ("tunelab", "bare"):
            assert finite(row[kind]["s_per_step"], row[kind]["mfu"]) and row[kind]["finite"]
    for row in r["memory"]["rows"]:
        assert finite(row["estimate"], row["measured"], row["difference"]) and row["measured"] > 0
    profile = r["profile"]
    assert profile["aten_ops"] > 100 and profile["kernel_launches"] == 0 and profile["host_syncs"] >= 1
    workers = r["workers"]
    assert workers["rows"][0]["state"] == "finished" and finite(workers["rows"][0]["s_per_step"])
    assert "check_resources" in workers["said"] and "asks for 2 GPUs" in workers["said"]
    placement = r["placement"]
    assert placement["device"] == "cpu" and placement["generated_tokens"] > 0
    assert finite(placement["generate_s"], placement["evaluate_s"]) and placement["evaluate_devices"] == ["cpu"]


def test_the_two_worker_section_says_what_this_machine_cannot_show():
    from bench.gpu import workers_plan

    run, said = workers_plan(gpus=1, cpus=16, ray_installed=True, cpu_workers=False)
    assert not run and "this 1-GPU machine" in said and "asks for 2 GPUs" in said
    run, said = workers_plan(gpus=2, cpus=16, ray_installed=False, cpu_workers=False)
    assert not run and "Ray is not installed" in said
    assert workers_plan(gpus=2, cpus=16, ray_installed=True, cpu_workers=False)[0]
    run, said = workers_plan(gpus=0, cpus=2, ray_installed=True, cpu_workers=False)
    assert not run and "--cpu-workers" in said and "asks for 2 GPUs" in said  # and what one GPU would say
    assert workers_plan(gpus=0, cpus=2, ray_installed=True, cpu_workers=True)[0]


def test_without_native_bf16_the_cpu_bench_skips_its_bf16_work(monkeypatch):
    from bench import common, compare, peers
    from tunelab.core import machine

    names = ["tunelab", "tunelab-bf16", "seed", "trl", "trl-fastest", "bare"]
    monkeypatch.setattr(machine, "cpu_bf16_flags", lambda cpuinfo=None: [])
    gate = common.bf16_gate()
    assert gate and "no native bf16" in gate and "skipped" in gate
    assert compare.select_peers(names, gate) == (["tunelab", "seed", "bare"], ["tunelab-bf16", "trl", "trl-fastest"])
    sizes = []
    monkeypatch.setattr(peers, "matmul_tflops", lambda device, dtype: sizes.append(str(dtype)) or 1.0)
    assert peers.matmul_peak(bf16=gate is None) == {"fp32": 1.0, "bf16": None} and sizes == ["torch.float32"]

    monkeypatch.setattr(machine, "cpu_bf16_flags", lambda cpuinfo=None: ["avx512_bf16"])
    assert common.bf16_gate() is None
    assert compare.select_peers(names, common.bf16_gate()) == (names, [])


def test_the_profile_counts_launches_and_host_syncs_from_the_profilers_events():
    from types import SimpleNamespace

    from bench.gpu import count_events

    def event(name, device="DeviceType.CPU", us=10.0, parent=None):
        return SimpleNamespace(name=name, device_type=device, self_cpu_time_total=us, self_device_time_total=us,
                               cpu_parent=parent)
    step = event("core/train.py(250): train_step")
    item = event("aten::item", parent=event("aten::is_nonzero", parent=step))
    events = ([event("aten::mm")] * 3 + [item, event("aten::_local_scalar_dense", parent=item)]
              + [event("cudaLaunchKernel")] * 4 + [event("cudaMemcpyAsync"), event("cudaStreamSynchronize")]
              + [event("ampere_sgemm", "DeviceType.CUDA")] * 4)
    counts = count_events(events)
    assert counts["aten_ops"] == 5 and counts["kernel_launches"] == 4 and counts["gpu_kernels"] == 4
    assert counts["scalar_reads"] == 1 and counts["device_waits"] == 1 and counts["host_syncs"] == 2
    assert counts["memcpy_calls"] == 1 and counts["gpu_ms"] == 0.04
    assert counts["scalar_read_sources"] == [["aten::is_nonzero <- core/train.py(250): train_step", 1]]
