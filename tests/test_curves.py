"""The experiment verdict's rules (core/curves.py) on synthetic curves whose answer is known, and on the
curves of three real 10-step runs of the embedded model. Pure functions: no torch, no run folder."""

import math
import random

import pytest

from tunelab.core import curves
from tunelab.core.curves import describe_curve, experiment_verdict

# Three real runs: the embedded model, the default plan (full fine-tuning, batch 8, seed 0) with
# max_steps 10, learning rates 1e-3, 1e-4 and 1e-5, measured on the 2-core CPU; the last number is
# each run's validation loss at step 10. The same seed and data, so the first loss is the same.
REAL = {
    "1e-3": ([2.7337, 3.86673, 2.80371, 2.37392, 2.16675, 2.28708, 2.05678, 2.20219, 2.17386, 2.21026], 1.9982),
    "1e-4": ([2.7337, 2.35735, 2.3028, 2.06209, 1.95892, 2.08464, 1.86869, 1.9962, 1.95093, 1.96021], 1.82294),
    "1e-5": ([2.7337, 2.50689, 2.59677, 2.45089, 2.4371, 2.59502, 2.36661, 2.57566, 2.44013, 2.51834], 2.36289),
}


def rows(losses, val=None, start=1):
    out = [{"step": start + i, "loss": v} for i, v in enumerate(losses)]
    if val is not None:
        out.append({"step": start + len(losses) - 1, "eval_loss": val})
    return out


def falling(n, noise=0.0, seed=0, floor=1.8, height=1.0, tau=4.0):
    """A healthy curve: an exponential fall to ``floor`` times multiplicative noise of std ``noise``."""
    rng = random.Random(seed)
    return [(floor + height * math.exp(-i / tau)) * (1 + rng.gauss(0, noise)) for i in range(n)]


def test_a_falling_curve_is_described_by_its_smoothed_start_end_and_change():
    f = describe_curve(rows(falling(12)))
    assert f["steps"] == 12 and f["last_step"] == 12
    assert f["start"] == pytest.approx(2.8)  # the first smoothed value is the first loss
    smooth = curves.ema(falling(12), curves.SMOOTHING)
    assert f["end"] == pytest.approx(smooth[-1]) and f["change"] == pytest.approx(smooth[-1] / 2.8 - 1)
    assert not f["diverged"] and not f["barely_moved"] and not f["noisy"] and not f["too_short"]
    assert f["noise"] == pytest.approx(0.0, abs=0.02)  # a smooth trend is no noise
    assert f["score_kind"] == "training" and f["score"] == f["end"] and f["val_end"] is None


def test_a_diverging_curve_names_the_step_and_how_far_the_loss_rose():
    loss = [3.0, 2.7, 2.5, 2.4, 2.35, 2.6, 3.1, 3.9, 5.0, 6.5]
    f = describe_curve(rows(loss))
    assert f["diverged"] and not f["nonfinite"]
    smooth = curves.ema(loss, curves.SMOOTHING)
    first = next(i for i, s in enumerate(smooth) if s > min(smooth[:i] or [s]) * 1.2)
    assert f["diverged_at"] == first + 1
    assert f["peak"] == 6.5  # the raw peak of the climb
    assert f["rise"] == pytest.approx((6.5 - min(smooth[:first])) / min(smooth[:first]))
    v = experiment_verdict([{"label": "3e-3", "rows": rows(loss)}, {"label": "1e-4", "rows": rows(falling(10))}])
    assert v["diverged"] == ["3e-3"] and v["best"] == "1e-4"
    assert v["sentences"][0] == f"3e-3 diverged at step {first + 1} (loss rose {f['rise'] * 100:.0f}%)"


def test_a_one_step_jump_of_forty_percent_is_divergence_but_ordinary_noise_is_not():
    f = describe_curve(rows(REAL["1e-3"][0]))
    assert f["diverged"] and f["diverged_at"] == 2 and round(f["rise"] * 100) == 41
    for label in ("1e-4", "1e-5"):
        assert not describe_curve(rows(REAL[label][0]))["diverged"]
    # healthy curves with a lesson's batch-to-batch noise (~5%) never read as diverged
    for seed in range(50):
        assert not describe_curve(rows(falling(10, noise=0.05, seed=seed)))["diverged"], seed


def test_a_nan_loss_is_divergence_from_a_row_or_from_the_status_the_loop_leaves():
    f = describe_curve(rows([2.7, 2.5, 2.9, float("nan"), 2.0]))
    assert f["diverged"] and f["nonfinite"] and f["diverged_at"] == 4 and f["score"] is None
    assert f["end"] == pytest.approx(curves.ema([2.7, 2.5, 2.9], curves.SMOOTHING)[-1])  # up to the NaN
    inf = describe_curve(rows([2.7, float("inf")]))
    assert inf["diverged"] and inf["diverged_at"] == 2  # even when too short to tell anything else
    # the training loop stops at a non-finite loss without writing its row: status.json says so
    status = {"state": "failed", "step": 3, "error": "The loss became nan at step 3: training diverged. ..."}
    f = describe_curve(rows([2.7, 2.4]), status)
    assert f["diverged"] and f["nonfinite"] and f["diverged_at"] == 3
    v = experiment_verdict([{"label": "1e-1", "rows": rows([2.7, 2.4]), "status": status},
                            {"label": "1e-4", "rows": rows(falling(8))}])
    assert v["diverged"] == ["1e-1"] and v["best"] == "1e-4" and "1e-1" not in v["too_short"]
    assert v["sentences"][0] == "1e-1 diverged at step 3 (the loss became NaN or infinite)"
    # a run stopped or failed for another reason is not called diverged
    other = {"state": "failed", "step": 3, "error": "Ran out of memory. Change, in this order: ..."}
    assert not describe_curve(rows(falling(6)), other)["diverged"]


def test_a_plateau_barely_moves_and_is_too_slow_beside_a_run_that_learns():
    flat = [2.0 * (1 + 0.004 * ((-1) ** i)) for i in range(12)]
    f = describe_curve(rows(flat))
    assert f["barely_moved"] and f["plateau"] and not f["diverged"] and not f["noisy"]
    assert abs(f["change"]) < curves.FLAT_CHANGE
    v = experiment_verdict([{"label": "1e-6", "rows": rows(flat)},
                            {"label": "1e-4", "rows": rows(falling(12, height=0.8))}])
    assert v["too_slow"] == ["1e-6"] and v["best"] == "1e-4"
    assert v["sentences"][-1].startswith("1e-6 barely moved (")
    # a run that fell, but less than half as far as the best, learned slowly
    slow = [2.8 * (1 - 0.12 * (1 - math.exp(-i / 4))) for i in range(12)]  # falls ~10%
    fast = [2.8 * (1 - 0.40 * (1 - math.exp(-i / 4))) for i in range(12)]  # falls ~35%
    v = experiment_verdict([{"label": "1e-5", "rows": rows(slow)}, {"label": "1e-4", "rows": rows(fast)}])
    assert v["too_slow"] == ["1e-5"]
    assert v["sentences"][-1].startswith("1e-5 learned slowly (\u2212") and "for 1e-4" in v["sentences"][-1]
    # more than half as far is not too slow
    middling = [2.8 * (1 - 0.25 * (1 - math.exp(-i / 4))) for i in range(12)]  # falls ~22%
    v = experiment_verdict([{"label": "a", "rows": rows(middling)}, {"label": "b", "rows": rows(fast)}])
    assert v["too_slow"] == [] and v["best"] == "b" and v["sentences"][1].startswith("a fell \u2212")


def test_a_noisy_curve_is_called_noisy_and_not_diverged():
    noisy = falling(16, noise=0.15, seed=3)
    f = describe_curve(rows(noisy))
    assert f["noisy"] and f["noise"] > curves.NOISY and not f["diverged"]
    v = experiment_verdict([{"label": "2", "rows": rows(noisy)}, {"label": "8", "rows": rows(falling(16, noise=0.02))}])
    assert "2" not in v["diverged"]
    assert v["tied"] == ["2", "8"]  # 1.76 against 1.83: closer than a 15% noise lets one tell apart
    assert "2's curve is noisy (\u00b1" in v["text"] and "8's curve" not in v["text"]
    v = experiment_verdict([{"label": "2", "rows": rows(noisy)}, {"label": "8", "rows": rows(falling(16, floor=1.2))}])
    assert v["best"] == "8" and any(s.startswith("2 fell") and "a noisy curve (\u00b1" in s for s in v["sentences"])
    # the noise estimate is robust: one spike barely moves it, a steady trend adds nothing
    assert curves._noise(REAL["1e-3"][0]) < 0.12
    assert curves._noise([3.0 - 0.1 * i for i in range(10)]) == pytest.approx(0.0, abs=1e-9)
    # a noisier curve needs a larger rise to count as diverged (its smoothed low point dips by chance)
    assert max(curves.DIVERGE_RISE, curves.DIVERGE_NOISE * f["noise"]) > curves.DIVERGE_RISE


def test_too_short_to_tell():
    f = describe_curve(rows([2.7, 3.5, 4.5]))  # rising, but three steps are too few to judge
    assert f["too_short"] and not f["diverged"] and not f["barely_moved"]
    v = experiment_verdict([{"label": "1e-3", "rows": rows([2.7, 3.5, 4.5])},
                            {"label": "1e-4", "rows": rows([2.7, 2.5])}])
    assert v["best"] is None and v["too_short"] == ["1e-3", "1e-4"] and v["diverged"] == []
    assert v["text"] == ("1e-3: too short to tell (3 of at least 5 steps); "
                         "1e-4: too short to tell (2 of at least 5 steps).")


def test_best_is_judged_by_validation_loss_when_every_run_has_one():
    # "a" ends lower on training loss but higher on validation: overfitting; "b" generalises better
    a, b = rows(falling(10, floor=1.5), val=2.1), rows(falling(10, floor=1.7), val=1.9)
    v = experiment_verdict([{"label": "a", "rows": a}, {"label": "b", "rows": b}])
    assert v["best"] == "b" and v["score_kind"] == "validation"
    assert v["sentences"][0] == "b ended lowest (1.90 validation loss)"
    # a run without a validation loss (stopped before its last step): every run is judged by training loss
    v = experiment_verdict([{"label": "a", "rows": a}, {"label": "b", "rows": rows(falling(10, floor=1.7))}])
    assert v["best"] == "a" and v["score_kind"] == "training"


def test_runs_ending_within_the_noise_are_a_tie_not_a_best():
    v = experiment_verdict([{"label": "4", "rows": rows(falling(10), val=1.900)},
                            {"label": "16", "rows": rows(falling(10), val=1.905)},
                            {"label": "64", "rows": rows(falling(10), val=2.2)}])
    assert v["best"] is None and v["tied"] == ["4", "16"]
    assert v["sentences"][0].startswith("4 and 16 ended about the same (1.90 validation loss, 1.91 validation loss)")


def test_the_verdict_on_three_real_learning_rates_names_the_diverging_the_best_and_the_too_slow():
    v = experiment_verdict([{"label": k, "rows": rows(loss, val)} for k, (loss, val) in REAL.items()])
    assert v["diverged"] == ["1e-3"] and v["best"] == "1e-4" and v["too_slow"] == ["1e-5"]
    assert v["text"] == ("1e-3 diverged at step 2 (loss rose 41%); 1e-4 ended lowest (1.82 validation loss); "
                         "1e-5 learned slowly (\u22129% against \u221228% for 1e-4).")
    # the same runs cut at 6 steps, without their validation: still the same three findings
    v = experiment_verdict([{"label": k, "rows": rows(loss[:6])} for k, (loss, _) in REAL.items()])
    assert (v["diverged"], v["best"], v["too_slow"]) == (["1e-3"], "1e-4", ["1e-5"])


def test_runs_not_started_yet_take_no_part():
    v = experiment_verdict([{"label": "1e-4", "rows": rows(falling(8))}, {"label": "1e-3", "rows": []}])
    assert v["pending"] == ["1e-3"] and v["best"] == "1e-4" and v["sentences"][-1] == "1e-3 has not run yet"
    assert experiment_verdict([])["text"] == ""
    empty = describe_curve([])
    assert empty["start"] is None and empty["too_short"] and not empty["diverged"]


def test_verdict_rules_are_relative_to_the_loss_level():
    # the same shapes at a tenth of the loss give the same findings
    scaled = {k: ([x / 10 for x in loss], val / 10) for k, (loss, val) in REAL.items()}
    v = experiment_verdict([{"label": k, "rows": rows(loss, val)} for k, (loss, val) in scaled.items()])
    assert (v["diverged"], v["best"], v["too_slow"]) == (["1e-3"], "1e-4", ["1e-5"])
