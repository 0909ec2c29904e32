"""The training engine on a tiny random model: rows, validation, checkpoints, final/, stop/resume, LoRA."""

import json
import os
import signal
import subprocess
import sys
import time

import pluggy
import pytest

from tunelab.core import curves, plan, runs, train, workers
from tunelab.core.config import RunConfig
from tunelab.core.errors import UserError
from tunelab.core.registry import Registry
from tunelab.core.paths import REPO_ROOT
from test_runs import wait_for

hookimpl = pluggy.HookimplMarker("tunelab")


def config(tiny_model, chat_file, **over):
    base = {"model": tiny_model, "data": {"path": str(chat_file), "val_fraction": 0.2}, "max_length": 64,
            "max_steps": 6, "batch_size": 4, "lr": 1e-3, "eval_every": 3, "save_every": 0, "warmup_ratio": 0.0}
    base.update(over)
    return RunConfig.from_dict(base)


def losses(run_dir):
    return [r for r in runs.read_metrics(run_dir) if "loss" in r]


def test_full_run_writes_rows_validation_and_a_final_model(tiny_model, chat_file, tmp_path):
    cfg = config(tiny_model, chat_file, save_every=3)
    seen = []

    class WatchCheckpoints:
        @hookimpl
        def on_log(self, run, metrics):
            seen.append([p.name for p in runs.checkpoints(run["run_dir"])])

    reg = Registry(load_external=False, extra_plugins=[(WatchCheckpoints(), "watch")])
    result = train.train(cfg, tmp_path / "run", registry=reg)
    assert result["state"] == "finished" and result["error"] is None
    rows = runs.read_metrics(tmp_path / "run")
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # a row for every optimizer step
    for r in rows:
        if "loss" in r:
            assert {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"} <= set(r)
    assert [r["step"] for r in rows if "eval_loss" in r] == [3, 6]
    assert seen[3] == ["step-3"]  # saved at step 3, there while training goes on
    assert not (tmp_path / "run" / "checkpoints").exists()  # a finished run keeps final/, not checkpoints
    status = runs.read_status(tmp_path / "run")
    assert status["state"] == "finished" and status["step"] == 6 and status["total_steps"] == 6

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    tok = AutoTokenizer.from_pretrained(tmp_path / "run" / "final")
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 1 plus 2?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_loss_falls_on_a_learnable_set(tiny_model, chat_file, tmp_path):
    cfg = config(tiny_model, chat_file, max_steps=30, lr=3e-3, eval_every=0)
    train.train(cfg, tmp_path / "run")
    rows = losses(tmp_path / "run")
    assert sum(r["loss"] for r in rows[-5:]) < sum(r["loss"] for r in rows[:5])


def test_lr_schedule_warmup_and_decay():
    cfg = RunConfig.from_dict({"lr": 1.0, "warmup_ratio": 0.2, "scheduler": "linear"})
    lrs = plan.lr_schedule(cfg, 10)
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] < 0.2
    cfg.scheduler = "cosine"
    assert plan.lr_schedule(cfg, 10)[2] == pytest.approx(1.0)
    cfg.scheduler = "constant"
    assert plan.lr_schedule(cfg, 10)[2:] == [1.0] * 8


class StopAfter:
    """A plugin that asks for a stop once a step is logged, as the dashboard's Stop button would."""

    def __init__(self, step):
        self.step = step

    @hookimpl
    def on_log(self, run, metrics):
        if metrics["step"] == self.step:
            (runs.Path(run["run_dir"]) / "STOP").write_text("x")


def test_stop_then_resume_continues_without_gap_or_repeat(tiny_model, chat_file, tmp_path):
    cfg = config(tiny_model, chat_file, max_steps=8, grad_accum=2, batch_size=2)
    reference = train.train(cfg, tmp_path / "straight")
    assert reference["state"] == "finished"

    reg = Registry(load_external=False, extra_plugins=[(StopAfter(3), "stopper")])
    first = train.train(cfg, tmp_path / "run", registry=reg)
    assert first["state"] == "stopped" and first["step"] == 3
    assert runs.read_status(tmp_path / "run")["state"] == "stopped"
    assert runs.latest_checkpoint(tmp_path / "run").name == "step-3"

    second = train.train(cfg, tmp_path / "run", resume=True)
    assert second["state"] == "finished"
    steps = [r["step"] for r in losses(tmp_path / "run")]
    assert steps == list(range(1, 9))
    # model, optimizer, scheduler, RNG and data position restored: the same curve as without a stop
    for a, b in zip(losses(tmp_path / "run"), losses(tmp_path / "straight")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), a["step"]
        assert a["lr"] == pytest.approx(b["lr"])


def test_a_killed_worker_is_reported_failed_and_resumes(tiny_model, chat_file, tmp_path):
    cfg = config(tiny_model, chat_file, max_steps=400, save_every=2, eval_every=0)
    run_dir = runs.create_run(cfg, run_dir=tmp_path / "run")
    pid = workers.launch(run_dir)
    deadline = time.time() + 120
    while time.time() < deadline and not runs.latest_checkpoint(run_dir):
        time.sleep(0.2)
    assert runs.latest_checkpoint(run_dir), (run_dir / "log.txt").read_text()
    os.kill(pid, signal.SIGKILL)
    # whoever reaps it; the lock goes with the last of its threads
    wait_for(lambda: not runs.pid_alive(pid) and not runs.worker_alive(run_dir), 60, "the worker to exit")
    status = runs.read_status(run_dir)
    assert status["state"] == "failed" and "interrupted" in status["error"]
    kept = len(losses(run_dir))
    assert kept >= 2

    # resume reads the run's own config; shorten it so the test stays fast
    last = int(runs.latest_checkpoint(run_dir).name.split("-")[1])
    cfg = config(tiny_model, chat_file, max_steps=last + 4, save_every=2, eval_every=0)
    runs.write_atomic(run_dir / "config.yaml", cfg.to_yaml())
    result = train.train(runs.run_config(run_dir), run_dir, resume=True)
    assert result["state"] == "finished"
    steps = [r["step"] for r in losses(run_dir)]
    assert steps == list(range(1, cfg.max_steps + 1))


def test_stop_command_stops_a_running_worker(tiny_model, chat_file, tmp_path):
    cfg = config(tiny_model, chat_file, max_steps=2000, eval_every=0)
    run_dir = workers.start(cfg, "stop me", root=tmp_path)
    assert run_dir.name.startswith("stop-me-")
    deadline = time.time() + 120
    while time.time() < deadline and len(losses(run_dir)) < 2:
        time.sleep(0.2)
    rc = subprocess.run([sys.executable, "-m", "tunelab", "stop", str(run_dir)], cwd=REPO_ROOT,
                        capture_output=True, text=True).returncode
    assert rc == 0
    while time.time() < deadline and runs.read_status(run_dir)["state"] in runs.ACTIVE:
        time.sleep(0.2)
    status = runs.read_status(run_dir)
    assert status["state"] == "stopped", (run_dir / "log.txt").read_text()
    assert runs.latest_checkpoint(run_dir) is not None

    # Resume as the dashboard's button does: a new worker process continues the same run
    last = status["step"]
    runs.write_atomic(run_dir / "config.yaml", config(tiny_model, chat_file, max_steps=last + 2, eval_every=0).to_yaml())
    workers.launch(run_dir, resume=True)
    while time.time() < deadline + 60 and runs.read_status(run_dir)["state"] in runs.ACTIVE:
        time.sleep(0.2)
    assert runs.read_status(run_dir)["state"] == "finished", (run_dir / "log.txt").read_text()
    assert [r["step"] for r in losses(run_dir)] == list(range(1, last + 3))


def test_lora_run_saves_an_adapter_that_peft_opens(tiny_model, chat_file, tmp_path):
    cfg = config(tiny_model, chat_file, method="lora", lr=1e-2, lora={"r": 4, "alpha": 8})
    result = train.train(cfg, tmp_path / "run")
    assert result["state"] == "finished"
    final = tmp_path / "run" / "final"
    assert (final / "adapter_config.json").is_file()
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
    from tunelab.core import models

    model, tok = models.load_model(str(final))
    total, trainable = models.count_parameters(model)
    assert total > 0


def test_gradient_checkpointing_trains(tiny_model, chat_file, tmp_path):
    cfg = config(tiny_model, chat_file, gradient_checkpointing=True, max_steps=2, method="lora")
    assert train.train(cfg, tmp_path / "run")["state"] == "finished"


def test_non_finite_loss_fails_with_an_explanation(tiny_model, chat_file, tmp_path, monkeypatch):
    import torch

    real = train.trained_loss
    monkeypatch.setattr(train, "trained_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    result = train.train(config(tiny_model, chat_file), tmp_path / "run")
    assert result["state"] == "failed"
    assert "diverged" in result["error"] and "learning rate" in result["error"]
    assert runs.read_status(tmp_path / "run")["state"] == "failed"


def test_a_plugin_raising_in_a_hook_does_not_stop_training(tiny_model, chat_file, tmp_path):
    class Broken:
        @hookimpl
        def on_log(self, run, metrics):
            raise RuntimeError("boom")

    reg = Registry(load_external=False, extra_plugins=[(Broken(), "broken")])
    result = train.train(config(tiny_model, chat_file, max_steps=3), tmp_path / "run", registry=reg)
    assert result["state"] == "finished"
    errors = runs.read_status(tmp_path / "run")["plugin_errors"]
    assert "broken" in errors[0] and "boom" in errors[0]


def test_bad_config_is_refused_before_any_model_loads(tmp_path, chat_file):
    path = tmp_path / "bad.yaml"
    path.write_text(f"model: nowhere/at-all\ndata:\n  path: {chat_file}\nlearning_rate: 0.1\n")
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "tunelab", "train", str(path)], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "learning_rate" in proc.stderr and "Traceback" not in proc.stderr
    assert time.time() - started < 20
    with pytest.raises(UserError, match="batch_size"):
        RunConfig.from_dict({"batch_size": 0})


def test_run_ids_are_safe_folder_names():
    assert runs.safe_run_id("../../etc/passwd ☃ My Run!").startswith("etc-passwd-my-run-")
    assert runs.safe_run_id("").startswith("run-")


def test_out_of_memory_fails_with_the_ladder(tiny_model, chat_file, tmp_path, monkeypatch):
    import torch

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train, "trained_loss", oom)
    result = train.train(config(tiny_model, chat_file), tmp_path / "run")
    assert result["state"] == "failed"
    ladder = result["error"]
    assert ladder.index("batch_size") < ladder.index("max_length") < ladder.index("gradient_checkpointing") \
        < ladder.index("lora") < ladder.index("precision")
    assert runs.read_status(tmp_path / "run")["error"] == ladder


def test_training_again_into_a_trained_run_folder_is_refused(tiny_model, chat_file, tmp_path):
    cfg = config(tiny_model, chat_file, max_steps=2)
    assert train.train(cfg, tmp_path / "run")["state"] == "finished"
    with pytest.raises(UserError, match="already holds a trained run"):
        train.train(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "final" / "config.json").is_file()  # nothing saved is lost


def test_status_survives_a_half_saved_checkpoint_and_a_never_started_worker(tiny_model, chat_file, tmp_path):
    import shutil

    cfg = config(tiny_model, chat_file, max_steps=4)
    reg = Registry(load_external=False, extra_plugins=[(StopAfter(2), "stopper")])
    assert train.train(cfg, tmp_path / "run", registry=reg)["state"] == "stopped"
    shutil.copytree(tmp_path / "run/checkpoints/step-2", tmp_path / "run/checkpoints/step-3.tmp")
    assert runs.read_status(tmp_path / "run")["checkpoint"].endswith("step-2")

    queued = runs.create_run(cfg, run_dir=tmp_path / "queued")
    workers.request_stop(queued)  # no worker yet: stopped at once, not left 'stopping'
    assert runs.read_status(queued)["state"] == "stopped"


def test_curve_signals_name_overfitting_flat_curves_and_spikes():
    assert curves.curve_signals([{"step": 1, "loss": 2.0}]) is None
    falling = [{"step": s, "loss": 3.0 - 0.1 * s} for s in range(1, 13)]
    val = [{"step": 4, "eval_loss": 2.0}, {"step": 8, "eval_loss": 1.8}, {"step": 12, "eval_loss": 2.2}]
    signals = curves.curve_signals(falling + val)
    assert signals["overfitting"] and not signals["flat"] and signals["spikes"] == []
    flat = [{"step": s, "loss": 2.0} for s in range(1, 13)]
    assert curves.curve_signals(flat)["flat"]
    spiky = flat[:6] + [{"step": 7, "loss": 6.0}] + flat[7:]
    assert curves.curve_signals(spiky)["spikes"] == [7]


def _chat_batch(tokenizer, n=3):
    from tunelab.core import data

    examples = [data.encode_messages([{"role": "user", "content": f"What is {i} plus {i}?"},
                                      {"role": "assistant", "content": f"It is {2 * i}."}], tokenizer, 64)
                for i in range(n)]
    return data.collate(examples, tokenizer.pad_token_id)


def test_trained_loss_is_the_models_loss_with_logits_only_at_trained_positions(tiny):
    import torch

    model, tokenizer = tiny
    batch = _chat_batch(tokenizer)
    n = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < n < batch["attention_mask"].sum() - 3  # the prompt is not trained
    rows = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            ours = train.trained_loss(model, batch, n)
            theirs = model(**batch).loss  # transformers' own: logits at every position
    finally:
        hook.remove()
    assert rows[0] == n  # the output layer saw the trained positions only
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
    grads = []
    for loss_fn in (lambda: train.trained_loss(model, batch, n), lambda: model(**batch).loss):
        model.zero_grad()
        loss_fn().backward()  # with gradients: the chunked linear cross-entropy
        grads.append([p.grad.clone() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    for ours, theirs in zip(*grads):
        assert torch.allclose(ours, theirs, rtol=1e-3, atol=1e-6)


def test_train_step_reads_top_to_bottom_and_no_function_is_long():
    import ast
    import inspect

    assert len(inspect.getsource(train.train_step).splitlines()) <= 45
    tree = ast.parse(inspect.getsource(train))
    long = [f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.end_lineno - f.lineno > 80]
    assert long == []


def test_checkpoints_load_with_weights_only_and_status_names_the_precision(tiny_model, chat_file, tmp_path):
    import torch

    cfg = config(tiny_model, chat_file, max_steps=4)
    reg = Registry(load_external=False, extra_plugins=[(StopAfter(2), "stopper")])
    assert train.train(cfg, tmp_path / "run", registry=reg)["state"] == "stopped"
    folder = runs.latest_checkpoint(tmp_path / "run")
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        torch.load(folder / name, weights_only=True)  # tensors and plain data only: no code runs
    status = runs.read_status(tmp_path / "run")
    assert status["precision"] in ("fp32", "bf16") and status["precision_reason"].startswith("auto:")
    assert "rmsnorm x5" in status["fused"] and "swiglu x2" in status["fused"]  # core.fused, recorded


def test_a_checkpoint_holding_code_is_refused(tiny_model, chat_file, tmp_path):
    import torch

    cfg = config(tiny_model, chat_file, max_steps=4)
    reg = Registry(load_external=False, extra_plugins=[(StopAfter(2), "stopper")])
    train.train(cfg, tmp_path / "run", registry=reg)
    folder = runs.latest_checkpoint(tmp_path / "run")
    torch.save({"python": os.getcwd}, folder / "rng.pt")  # a function: pickle would run code to rebuild it
    result = train.train(cfg, tmp_path / "run", resume=True)
    assert result["state"] == "failed" and result["user_error"] and "cannot read this checkpoint" in result["error"]


@pytest.mark.parametrize("chunk", [2**25, 3 * 49152])  # one chunk, and chunks of three rows
def test_linear_cross_entropy_matches_the_plain_loss_and_its_gradients(chunk):
    import torch

    torch.manual_seed(0)
    hidden = torch.randn(10, 16, requires_grad=True)
    weight = torch.randn(49152, 16, requires_grad=True)
    targets = torch.randint(0, 49152, (10,))
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    plain.backward()
    expected = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ours = train.linear_cross_entropy(hidden, weight, targets, chunk_elements=chunk)
    (ours * 2).backward()  # the incoming gradient is applied
    assert float(ours) == pytest.approx(float(plain), rel=1e-5)
    assert torch.allclose(hidden.grad, 2 * expected[0], rtol=1e-4, atol=1e-5)
    assert torch.allclose(weight.grad, 2 * expected[1], rtol=1e-4, atol=1e-5)
