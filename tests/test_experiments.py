"""Experiments (core/experiments.py): settings and their values, the plan's sizing, the record beside
ordinary runs. Fast and offline: run folders are made with core.runs and given metrics rows by hand.
The slow test at the end really trains the three suggested learning rates on the embedded model."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunelab.core import experiments as ex
from tunelab.core import runs
from tunelab.core.config import RunConfig, load_config
from tunelab.core.errors import UserError

REPO = Path(__file__).resolve().parent.parent
N_TRAIN = 207  # the lesson set: 230 examples, 10% held out


def lr_plan(**kw):
    kw = {"budget_s": 120, "seconds_per_step": 3.7, "n_train": N_TRAIN, **kw}
    return ex.plan_experiment(RunConfig(), "lr", ["1e-5", "1e-4", "1e-3"], **kw)


# -- settings and values --------------------------------------------------------------------------
def test_every_setting_has_a_config_key_an_explanation_and_suggestions_that_are_valid_values():
    base = RunConfig()
    lora = RunConfig.from_dict({"method": "lora"})
    for row in ex.settings_table(lora):
        assert row["key"] in ("lr", "lora.r", "method", "batch_size", "max_length", "epochs", "warmup_ratio")
        assert row["label"] and row["explain"] and row["help"]
        assert ex.MIN_VALUES <= len(row["suggestions"]) <= ex.MAX_VALUES
        for s in row["suggestions"]:
            assert ex.parse_value(row["key"], s["text"], lora) == pytest.approx(s["value"]) or s["value"] == s["text"]
            assert s["hint"]
    assert [(s["text"], s["hint"]) for s in ex.suggestions("lr", base)] == [
        ("1e-5", "too low"), ("1e-4", "about right"), ("1e-3", "too high")]
    assert [s["value"] for s in ex.suggestions("learning_rate", lora)] == [1e-4, 1e-3, 3e-2]  # LoRA wants higher
    assert ex.setting_key("warmup") == "warmup_ratio" and ex.setting_key("lora_r") == "lora.r"


def test_values_are_parsed_and_bad_ones_refused_naming_the_setting_and_the_value():
    assert ex.parse_value("lr", "1e-4") == 1e-4 and ex.parse_value("lr", 3e-5) == 3e-5
    assert ex.parse_value("batch_size", "16") == 16 and ex.parse_value("method", " lora ") == "lora"
    for setting, raw, words in [("lr", "5", ["learning rate", "'5'", "out of range"]),
                                ("lr", "fast", ["learning rate", "'fast'", "a number"]),
                                ("batch_size", "2.5", ["batch size", "'2.5'", "whole number"]),
                                ("method", "qlora", ["method", "'qlora'", "full, lora"]),
                                ("lr", "", ["learning rate", "empty"])]:
        with pytest.raises(UserError) as err:
            ex.parse_value(setting, raw)
        assert all(w in str(err.value) for w in words), str(err.value)
    with pytest.raises(UserError, match="'seed' is not a setting an experiment can vary; choose one of lr, lora.r"):
        ex.setting_key("seed")


def test_a_plan_needs_two_to_four_different_values_and_a_sensible_budget():
    base = RunConfig()
    for values in (["1e-4"], ["1e-5", "3e-5", "1e-4", "3e-4", "1e-3"], "1e-4"):
        with pytest.raises(UserError, match="choose 2 to 4 values"):
            ex.plan_experiment(base, "lr", values, 120, 3.7, N_TRAIN)
    with pytest.raises(UserError, match="the values must differ; '0.0001' is the same as '1e-4'"):
        ex.plan_experiment(base, "lr", ["1e-4", "0.0001"], 120, 3.7, N_TRAIN)
    for budget in (0, -5, float("nan")):
        with pytest.raises(UserError, match="time budget"):
            ex.plan_experiment(base, "lr", ["1e-4", "1e-3"], budget, 3.7, N_TRAIN)
    with pytest.raises(UserError, match="method full, which has no adapters; set method: lora first"):
        ex.plan_experiment(base, "lora.r", [4, 16], 120, 3.7, N_TRAIN)


# -- sizing ---------------------------------------------------------------------------------------
def test_the_runs_copy_the_planned_run_with_one_setting_changed_and_fit_the_budget_one_after_another():
    base = load_config(REPO / "configs" / "lesson.yaml")
    plan = ex.plan_experiment(base, "lr", ["1e-5", "1e-4", "1e-3"], 120, 3.7, N_TRAIN)
    # 120 s / 3 runs = 40 s each; 14 s to start, validate and save; 26 s / 3.7 s = 7 steps
    assert plan["steps"] == 7 and plan["planned_steps"] == 52 and plan["speed_known"]
    assert plan["estimated_s"] <= 120 and "7 steps each" in plan["why"] and "52 steps" in plan["why"]
    configs = ex.run_configs(plan)
    assert [c["label"] for c in configs] == ["1e-5", "1e-4", "1e-3"]
    assert [r["hint"] for r in plan["runs"]] == ["too low", "about right", "too high"]
    for c, lr in zip(configs, (1e-5, 1e-4, 1e-3)):
        cfg = c["config"]
        assert cfg.lr == lr and cfg.max_steps == 7 and cfg.log_every == 1
        assert cfg.seed == base.seed and cfg.data == base.data and cfg.data.val_fraction == 0.1  # validation kept
        for key in ("model", "method", "batch_size", "max_length", "scheduler", "warmup_ratio", "eval_every"):
            assert cfg.get(key) == base.get(key), key
        assert c["name"] == f"exp lr {c['label']}"
    assert any("validation loss" in n for n in plan["notes"])
    json.dumps(plan)  # the plan goes into experiment.json as it is


def test_an_unknown_speed_uses_the_documented_default_and_says_so():
    plan = lr_plan(seconds_per_step=None)
    assert plan["seconds_per_step"] == ex.DEFAULT_SECONDS_PER_STEP and not plan["speed_known"]
    assert "not measured" in plan["why"]
    assert plan["steps"] == int((120 / 3 - ex.RUN_OVERHEAD_S) // ex.DEFAULT_SECONDS_PER_STEP) >= ex.MIN_STEPS


def test_a_budget_too_short_is_refused_with_the_budget_that_would_do():
    with pytest.raises(UserError, match=r"60 s is too short for 3 runs of at least 5 steps .* about 100 s"):
        lr_plan(budget_s=60)  # 3 x (14 s + 5 x 3.7 s) = 97.5 s


def test_a_generous_budget_runs_no_longer_than_the_planned_run():
    plan = lr_plan(budget_s=3600)
    assert plan["steps"] == 52 and "the planned run's whole length" in plan["why"]


def test_settings_that_change_the_step_cost_are_sized_by_the_most_expensive_value():
    plan = ex.plan_experiment(RunConfig(), "batch_size", [2, 8, 16], 300, 3.7, N_TRAIN)
    # 100 s each: 86 s of steps at 2x the plan's step cost (batch 16) = 11 steps
    assert plan["steps"] == 11 and "most expensive value (16, 2.0x" in plan["why"]
    expected = [pytest.approx(14 + 11 * 3.7 * f, abs=0.05) for f in (0.25, 1, 2)]  # batch 2, 8, 16
    assert [r["estimated_s"] for r in plan["runs"]] == expected
    assert plan["estimated_s"] <= 300
    plan = ex.plan_experiment(RunConfig(), "max_length", [256, 512], 120, 3.7, N_TRAIN)
    assert plan["steps"] == (60 - 14) // (3.7 * 2)  # assumed to fill 512 tokens: twice the step
    plan = ex.plan_experiment(RunConfig(), "max_length", [256, 512], 120, 3.7, N_TRAIN, median_tokens=180)
    assert plan["steps"] == (60 - 14) // 3.7  # examples of ~180 tokens cost the same at either limit


def test_method_and_rank_change_their_companions_so_only_the_setting_differs():
    plan = ex.plan_experiment(RunConfig(), "method", ["full", "lora"], 120, 3.7, N_TRAIN)
    full, lora = (c["config"] for c in ex.run_configs(plan))
    assert (full.method, full.lr) == ("full", 1e-4) and (lora.method, lora.lr) == ("lora", pytest.approx(1e-3))
    assert "LoRA runs at 10x" in " ".join(plan["notes"])
    base = RunConfig.from_dict({"method": "lora", "lora": {"r": 16, "alpha": 32}})
    plan = ex.plan_experiment(base, "lora.r", [4, 64], 120, 3.7, N_TRAIN)
    assert [(c["config"].lora.r, c["config"].lora.alpha) for c in ex.run_configs(plan)] == [(4, 8), (64, 128)]


def test_epochs_run_their_own_lengths_shortened_alike_when_they_do_not_fit():
    plan = ex.plan_experiment(RunConfig(), "epochs", [1, 2], 3600, 3.7, N_TRAIN)
    assert [r["steps"] for r in plan["runs"]] == [26, 52] and "whole length" in plan["why"]
    plan = ex.plan_experiment(RunConfig(), "epochs", [1, 2, 4], 300, 3.7, N_TRAIN)
    steps = [r["steps"] for r in plan["runs"]]
    assert steps[0] < 26
    shares = [s / whole for s, whole in zip(steps, (26, 52, 104))]  # each the same share of its length
    assert max(shares) - min(shares) < 1 / 26
    assert plan["estimated_s"] <= 300 and "shortened alike" in plan["why"]
    assert [c["config"].epochs for c in ex.run_configs(plan)] == [1, 2, 4]
    with pytest.raises(UserError, match="too short"):
        ex.plan_experiment(RunConfig(), "epochs", [1, 2, 4], 100, 3.7, N_TRAIN)


def test_warmup_plan_says_how_many_steps_each_ramp_is():
    plan = ex.plan_experiment(RunConfig(), "warmup_ratio", [0, 0.3], 120, 3.7, N_TRAIN)
    assert plan["steps"] == 12 and "Warm-up in steps: 0: 0 of 12, 0.3: 4 of 12." in plan["notes"]


def test_without_validation_the_plan_says_training_loss_ranks():
    base = RunConfig.from_dict({"data": {"val_fraction": 0}})
    plan = ex.plan_experiment(base, "lr", ["1e-4", "1e-3"], 120, 3.7, N_TRAIN)
    assert not plan["validation"] and any("ranks by training loss" in n for n in plan["notes"])


def test_values_are_labelled_as_people_write_them():
    assert [ex.format_value(v) for v in (1e-4, 3e-5, 0.001, 0.1, 0.05, 16, 2.0, "lora", 0.0)] == [
        "1e-4", "3e-5", "1e-3", "0.1", "0.05", "16", "2", "lora", "0"]


# -- the record -----------------------------------------------------------------------------------
def fake_run(root, cfg, name, losses, val=None, state="finished", **status):
    """A run folder as a finished (or running) worker leaves it, without training anything."""
    run_dir = runs.create_run(cfg, name, root)
    for i, loss in enumerate(losses, 1):
        runs.append_metrics(run_dir, {"step": i, "loss": loss, "elapsed_s": 3.7 * i})
    if val is not None:
        runs.append_metrics(run_dir, {"step": len(losses), "eval_loss": val, "elapsed_s": 3.7 * len(losses)})
    runs.write_status(run_dir, state=state, step=len(losses), total_steps=cfg.max_steps, **status)
    return run_dir


def test_an_experiment_is_a_record_beside_ordinary_runs_that_every_run_verb_still_finds(runs_dir):
    plan = lr_plan()
    exp = ex.create_experiment(runs_dir, plan)
    assert exp.parent == runs_dir / "experiments" and (exp / "experiment.json").is_file()
    rec = ex.read_experiment(exp)
    assert rec["state"] == "waiting" and [e["state"] for e in rec["runs"]] == ["pending"] * 3
    assert rec["verdict"]["pending"] == ["1e-5", "1e-4", "1e-3"] and not rec["final"]

    curves = {"1e-5": ([2.73, 2.51, 2.60, 2.45, 2.44, 2.60, 2.37], 2.36),
              "1e-4": ([2.73, 2.36, 2.30, 2.06, 1.96, 2.08, 1.87], 1.82),
              "1e-3": ([2.73, 3.87, 2.80, 2.37, 2.17, 2.29, 2.06], 2.00)}
    made = []
    while (nxt := ex.next_to_start(exp)) is not None:
        loss, val = curves[nxt["label"]]
        run_dir = fake_run(runs_dir, nxt["config"], nxt["name"], loss, val)
        ex.mark_started(exp, nxt["label"], run_dir.name)
        made.append(run_dir)
    assert [d.name.rsplit("-", 2)[0] for d in made] == ["exp-lr-1e-5", "exp-lr-1e-4", "exp-lr-1e-3"]
    assert all(d.parent == runs_dir for d in made)  # ordinary runs, where every verb looks for them
    listed = {r["run_id"] for r in runs.list_runs(runs_dir)}
    assert listed == {d.name for d in made}  # the experiments folder is not taken for a run

    rec = ex.read_experiment(exp / "experiment.json")
    assert rec["state"] == "finished" and rec["final"]
    assert [e["run_id"] for e in rec["runs"]] == [d.name for d in made]
    assert rec["runs"][1]["progress"]["step"] == 7 and rec["runs"][1]["progress"]["fraction"] == 1.0
    v = rec["verdict"]
    assert (v["diverged"], v["best"], v["too_slow"]) == (["1e-3"], "1e-4", ["1e-5"])
    assert v["text"].startswith("1e-3 diverged at step 2 (loss rose 42%); 1e-4 ended lowest (1.82 validation loss)")
    assert rec["plan"]["steps"] == 7

    assert [e["id"] for e in ex.list_experiments(runs_dir)] == [exp.name]
    # deleting one run like any other: the record says so and the verdict goes on without it
    import shutil
    shutil.rmtree(made[2])
    rec = ex.read_experiment(exp)
    assert rec["runs"][2]["state"] == "deleted" and rec["verdict"]["diverged"] == []


def test_runs_start_one_after_another_and_stop_stops_them_all(runs_dir, monkeypatch):
    exp = ex.create_experiment(runs_dir, lr_plan())
    first = ex.next_to_start(exp)
    assert first["label"] == "1e-5" and isinstance(first["config"], RunConfig)
    run_dir = fake_run(runs_dir, first["config"], first["name"], [2.7, 2.6], state="running",
                       pid=os.getpid(), started_at=runs.now())
    ex.mark_started(exp, "1e-5", run_dir.name)
    assert runs.read_status(run_dir)["state"] == "running"  # this test process stands in for its worker
    assert ex.next_to_start(exp) is None  # one at a time: the next waits for this one
    rec = ex.read_experiment(exp)
    assert rec["state"] == "running" and rec["runs"][0]["progress"]["step"] == 2
    assert rec["verdict"]["too_short"] == ["1e-5"] and rec["verdict"]["pending"] == ["1e-4", "1e-3"]

    assert ex.mark_stopped(exp) == [run_dir.name]  # the caller stops these, as it stops any run
    assert ex.next_to_start(exp) is None  # and no further run starts
    runs.write_status(run_dir, state="stopped")
    rec = ex.read_experiment(exp)
    assert rec["state"] == "stopped" and rec["final"] and rec["stopped"]
    with pytest.raises(UserError, match="was stopped"):
        ex.mark_started(exp, "1e-4", "some-run")


def test_a_failed_or_diverged_run_is_a_result_and_the_next_one_starts(runs_dir):
    exp = ex.create_experiment(runs_dir, lr_plan())
    nxt = ex.next_to_start(exp)
    run_dir = fake_run(runs_dir, nxt["config"], nxt["name"], [2.7, 5.0], state="failed",
                       error="The loss became nan at step 3: training diverged.")
    runs.write_status(run_dir, step=3)
    ex.mark_started(exp, nxt["label"], run_dir.name)
    assert ex.next_to_start(exp)["label"] == "1e-4"
    v = ex.read_experiment(exp)["verdict"]
    assert v["diverged"] == ["1e-5"] and v["per_run"]["1e-5"]["diverged_at"] == 3


def test_marking_is_checked(runs_dir):
    exp = ex.create_experiment(runs_dir, lr_plan())
    with pytest.raises(UserError, match="no value '3e-4'; its values are 1e-5, 1e-4, 1e-3"):
        ex.mark_started(exp, "3e-4", "r1")
    for bad in ("", "a/b", ".hidden"):
        with pytest.raises(UserError, match="is not a run id"):
            ex.mark_started(exp, "1e-4", bad)
    ex.mark_started(exp, "1e-4", "r1")
    ex.mark_started(exp, "1e-4", "r1")  # the same again is harmless
    with pytest.raises(UserError, match="1e-4 already ran as r1"):
        ex.mark_started(exp, "1e-4", "r2")
    with pytest.raises(UserError, match="is not an experiment"):
        ex.read_experiment(runs_dir)
    assert ex.list_experiments(runs_dir / "nowhere") == []
    second = ex.create_experiment(runs_dir, lr_plan())
    assert second != exp and second.parent == exp.parent  # two in one second: exp and exp-2
    assert ex.read_experiment(exp)["runs"][1]["state"] == "deleted"  # r1 never existed as a folder


# -- the real thing -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)  # ~2.5 minutes on a quiet 2-core CPU; much longer while other work shares it
def test_three_learning_rates_on_the_embedded_model_name_the_diverging_the_best_and_the_too_slow(
        runs_dir, embedded_dir):
    """The default plan's three suggested learning rates, planned into the default 2-minute budget at the
    default speed, each trained by a real worker (``python -m tunelab train``), one after another."""
    base = load_config(REPO / "configs" / "lesson.yaml")
    n_train, _ = base.split_sizes(len(json.loads((REPO / base.data.path).read_text(encoding="utf-8"))))
    values = [s["value"] for s in ex.suggestions("lr", base)]
    plan = ex.plan_experiment(base, "lr", values, ex.DEFAULT_BUDGET_S, None, n_train)
    exp = ex.create_experiment(runs_dir, plan)
    env = {**os.environ, "TUNELAB_RUNS_DIR": str(runs_dir)}
    walls, started = {}, time.time()
    while (nxt := ex.next_to_start(exp)) is not None:
        run_dir = runs.create_run(nxt["config"], nxt["name"], runs_dir)
        ex.mark_started(exp, nxt["label"], run_dir.name)
        t = time.time()
        subprocess.run([sys.executable, "-m", "tunelab", "train", str(run_dir / "config.yaml"), "--run-dir",
                        str(run_dir)], cwd=REPO, env=env, timeout=300, capture_output=True)
        walls[nxt["label"]] = round(time.time() - t, 1)
    total = time.time() - started
    rec = ex.read_experiment(exp)
    v = rec["verdict"]
    print(f"\nsteps {plan['steps']} per run; wall per run {walls}; total {total:.0f} s "
          f"(budget {plan['budget_s']:.0f} s, planned {plan['estimated_s']:.0f} s)\n{v['text']}")
    assert rec["state"] == "finished", [(e["label"], e["state"], e["progress"]) for e in rec["runs"]]
    assert (v["diverged"], v["best"], v["too_slow"]) == (["1e-3"], "1e-4", ["1e-5"]), v["text"]
    assert v["score_kind"] == "validation"
    # no assertion on the seconds: the budget is an estimate from a quiet machine's speed, and a test
    # run shares the machine (the figures printed above are what the report quotes)
