"""What a run's loss curves show, in facts a lesson can put into words.

Pure functions of metric rows (plain dicts, as ``metrics.jsonl`` holds them): no torch, no run folder.
The Fine-tune page, the experiment verdict and the lesson report all read their rules from here.
"""

from __future__ import annotations


def ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased so the start is not pulled to 0.

    ``weight`` 0 = no smoothing, 0.99 = very smooth.
    """
    out, last, n = [], 0.0, 0
    for v in values:
        n += 1
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight ** n) if weight < 1 else v)
    return out


def curve_signals(rows: list[dict], smoothing: float = 0.6) -> dict | None:
    """What a run's curves show so far, as facts the Fine-tune lesson puts into words.

    ``overfitting``: validation loss has turned up while the smoothed training loss still falls;
    ``flat``: after 10+ steps the smoothed loss moved less than 1%; ``spikes``: steps whose loss
    jumped well above the smoothed curve. None until there are three training rows.
    """
    trained = [r for r in rows if r.get("loss") is not None]
    if len(trained) < 3:
        return None
    loss = [r["loss"] for r in trained]
    val = [r["eval_loss"] for r in rows if r.get("eval_loss") is not None]
    smooth = ema(loss, smoothing)
    return {
        "overfitting": len(val) >= 2 and val[-1] > min(val) * 1.01 and smooth[-1] < smooth[len(smooth) // 2],
        "flat": len(loss) >= 10 and abs(smooth[-1] - smooth[2]) < 0.01 * abs(smooth[2]),
        "spikes": [r["step"] for r, s in zip(trained, smooth) if r["loss"] > 1.5 * s and r["loss"] - s > 0.5],
        "smoothed": (smooth[0], smooth[-1]),
        "validation": (val[0], val[-1]) if len(val) >= 2 else None,
    }


# -- what one run's curve did, and what an experiment's runs show side by side -------------------
# The verdict's rules. Every threshold is relative (a share of the loss level), so the rules read a
# loss of 0.5 and a loss of 8 alike, and every rule reads a smoothed curve or a noise estimate, never
# one raw step to decide (a sentence may quote the raw peak the chart shows). Tested on synthetic curves in
# tests/test_curves.py.
SMOOTHING = 0.6        # the EMA weight the rules read curves with (curve_signals' and the chart's default)
MIN_ROWS = 5           # fewer training rows than this: too short to tell (a smoothed curve needs a few steps)
DIVERGE_RISE = 0.20    # diverged: the smoothed loss rose 20% above its lowest value so far, and at least
DIVERGE_NOISE = 2.0    # twice the curve's noise (see _noise). A healthy run of the default lesson has ~6% noise
                       # (measured), ~3% once smoothed, so a 20% rise is far outside it; a noisier curve needs a
                       # larger rise (its smoothed lowest point dips further by chance). A non-finite loss
                       # always counts as diverged
FLAT_CHANGE = 0.03     # barely moved: start to end, the smoothed loss changed less than 3%
PLATEAU_CHANGE = 0.02  # levelled off: over the last third of the steps it changed less than 2%
NOISY = 0.10           # noisy: step-to-step noise (see _noise) above 10% of the loss level
TOO_SLOW_SHARE = 0.5   # too slow: fell less than half as much as the best run did in the same steps
CLOSE_MIN = 0.01       # two end losses closer than 1% (or the runs' smoothed noise, if larger) are a tie


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf")


def _noise(values: list[float]) -> float | None:
    """Step-to-step noise as a share of the loss level, a robust standard deviation of the residuals.

    Each point's residual is its distance from the straight line through its two neighbours, relative to
    that line, so a steady trend, falling or not, adds nothing; for white noise of std s it has std
    s*sqrt(1.5). The median absolute residual (x 1.4826, the normal distribution's factor) stands for the
    std, so one spike, which moves only its own and its neighbours' residuals, barely moves the estimate."""
    rel = []
    for a, b, c in zip(values, values[1:], values[2:]):
        mid = (a + c) / 2
        if mid > 0:
            rel.append(abs(b - mid) / mid)
    if not rel:
        return None
    rel.sort()
    median = rel[len(rel) // 2] if len(rel) % 2 else (rel[len(rel) // 2 - 1] + rel[len(rel) // 2]) / 2
    return median * 1.4826 / 1.5 ** 0.5


def _nonfinite_at(status: dict | None, rows: list[dict]) -> int | None:
    """The step whose loss was NaN or infinite: from a row that holds one, or from the status of a run
    the training loop ended because its loss stopped being finite (state failed, the error says it
    diverged, ``step`` is that step; the loop writes no metrics row for it)."""
    for r in rows:
        if "loss" in r and r["loss"] is not None and not _finite(r["loss"]):
            return r.get("step")
    if status and status.get("state") == "failed" and "diverged" in str(status.get("error") or "").lower():
        return status.get("step") or (rows[-1]["step"] + 1 if rows else 1)
    return None


def describe_curve(rows: list[dict], status: dict | None = None, smoothing: float = SMOOTHING) -> dict:
    """The facts of one run's curves, for a verdict to compare and a lesson to put into words.

    ``rows``: the run's metrics rows (training rows carry ``loss``, validation rows ``eval_loss``);
    ``status``: its status.json, optional (how a loss that became NaN is known: the loop stops there).

    Returns ``steps`` (training rows), ``last_step``; ``start``/``end``: the smoothed training loss at the
    first and last row (the first row is the loss before any update); ``change``: (end - start) / start;
    ``val_end``: the last validation loss (None without one); ``diverged`` with ``diverged_at`` (the step
    the smoothed loss first rose ``DIVERGE_RISE`` above its lowest so far, or ``DIVERGE_NOISE`` times the
    noise if that is more, or the non-finite step),
    ``rise`` (how far the raw loss then peaked above that lowest smoothed value, a share) and ``peak``,
    ``nonfinite``; ``barely_moved``; ``plateau`` (levelled off over the last third); ``noise`` (see
    :func:`_noise`) and ``noisy``; ``too_short`` (fewer than ``MIN_ROWS`` training rows: nothing but a
    non-finite loss is judged then); ``score`` and ``score_kind``: what a comparison ranks by (the last
    validation loss, else ``end``).
    """
    trained = [r for r in rows if r.get("loss") is not None]
    bad_step = _nonfinite_at(status, trained)
    finite = [r for r in trained if _finite(r["loss"])]
    if bad_step is not None:
        finite = [r for r in finite if r.get("step", 0) < bad_step]
    loss = [float(r["loss"]) for r in finite]
    val = [r["eval_loss"] for r in rows if r.get("eval_loss") is not None and _finite(r["eval_loss"])]
    out = {"steps": len(trained), "last_step": trained[-1].get("step") if trained else None,
           "start": None, "end": None, "change": None, "val_end": val[-1] if val else None,
           "diverged": bad_step is not None, "diverged_at": bad_step, "rise": None, "peak": None,
           "nonfinite": bad_step is not None, "barely_moved": False, "plateau": False,
           "noise": _noise(loss), "noisy": False, "too_short": len(trained) < MIN_ROWS,
           "score": None, "score_kind": None}
    if not loss:
        return out
    smooth = ema(loss, smoothing)
    start, end = smooth[0], smooth[-1]
    out.update(start=start, end=end, change=(end - start) / start if start else 0.0)
    if bad_step is None and not out["too_short"]:
        lowest, threshold = smooth[0], max(DIVERGE_RISE, DIVERGE_NOISE * (out["noise"] or 0.0))
        for i, s in enumerate(smooth):
            if lowest > 0 and s > lowest * (1 + threshold):
                j = i  # the raw peak of this climb: up to where the smoothed curve turns down again
                while j + 1 < len(smooth) and smooth[j + 1] >= smooth[j]:
                    j += 1
                peak = max(loss[max(0, i - 1):j + 1])
                out.update(diverged=True, diverged_at=finite[i].get("step"), peak=peak, rise=(peak - lowest) / lowest)
                break
            lowest = min(lowest, s)
    if not out["too_short"] and not out["diverged"]:  # a divergence's own jump would read as noise
        out["noisy"] = out["noise"] is not None and out["noise"] > NOISY
        out["barely_moved"] = abs(out["change"]) < FLAT_CHANGE
        third = len(smooth) // 3
        if third >= 3 and smooth[-third - 1] > 0:
            out["plateau"] = abs(smooth[-1] - smooth[-third - 1]) / smooth[-third - 1] < PLATEAU_CHANGE
    if not out["nonfinite"]:
        out["score"], out["score_kind"] = (out["val_end"], "validation") if val else (end, "training")
    return out


def _pct(share: float) -> str:
    """-0.031 -> '−3%' (a real minus sign), 0.4 -> '+40%'."""
    text = f"{share * 100:+.0f}%"
    return text.replace("-", "\u2212")


def experiment_verdict(runs: list[dict]) -> dict:
    """The verdict of an experiment, in words, from its runs' curves (same seed, data and steps).

    ``runs``: ``[{"label": "1e-4", "rows": [...], "status": {...} (optional)}]``, in the order the
    learner chose the values. Rules, in order:

    - a run with no training rows yet is "not run yet" and takes no part;
    - **too short to tell**: fewer than ``MIN_ROWS`` training rows;
    - **diverged**: a non-finite loss, or the smoothed loss rose ``DIVERGE_RISE`` (or ``DIVERGE_NOISE``
      times the curve's noise, if more) above its lowest so far; the sentence gives the step and how far
      the raw loss rose;
    - **best**: the lowest final *validation* loss when every judged run has one, else the lowest smoothed
      final training loss; non-finite runs cannot be best. When other runs ended within the tie band of
      it (``CLOSE_MIN``, or for training loss the smoothed noise of the runs if larger) there is no best:
      the sentence says they ended about the same;
    - **too slow**: a run that did not diverge and fell less than ``TOO_SLOW_SHARE`` of the best run's
      fall, or barely moved (less than ``FLAT_CHANGE``) while the best fell;
    - every other run gets its change; a noisy curve (``NOISY``) is said so.

    Returns ``sentences`` (clauses: diverged, best or tie, the others, too slow, too short, not run),
    ``text`` (them joined into one sentence), ``best`` (a label or None), ``tied``, ``diverged``,
    ``too_slow``, ``too_short``, ``per_run`` (label -> :func:`describe_curve`'s facts) and ``score_kind``.
    """
    per_run = {r["label"]: describe_curve(r.get("rows") or [], r.get("status")) for r in runs}
    labels = [r["label"] for r in runs]
    started = [lb for lb in labels if per_run[lb]["steps"] or per_run[lb]["nonfinite"]]
    pending = [lb for lb in labels if lb not in started]
    too_short = [lb for lb in started if per_run[lb]["too_short"] and not per_run[lb]["nonfinite"]]
    v = {"best": None, "tied": [], "diverged": [lb for lb in started if per_run[lb]["diverged"]], "too_slow": [],
         "too_short": too_short, "pending": pending, "per_run": per_run, "ref": None}
    v["judged"] = [lb for lb in started if lb not in too_short and per_run[lb]["score"] is not None]
    v["score_kind"] = ("validation" if v["judged"] and all(per_run[lb]["val_end"] is not None for lb in v["judged"])
                       else "training")
    _rank(v)
    sentences = _sentences(v)
    text = "; ".join(sentences) + "." if sentences else ""
    return {"sentences": sentences, "text": text, **{k: v[k] for k in (
        "best", "tied", "diverged", "too_slow", "too_short", "pending", "per_run", "score_kind")}}


def _score(v: dict, label: str) -> float:
    f = v["per_run"][label]
    return f["val_end"] if v["score_kind"] == "validation" else f["end"]


def _rank(v: dict) -> None:
    """Fill in ``best`` or ``tied``, ``ref`` (the run the others' fall is compared with) and ``too_slow``."""
    per_run, judged = v["per_run"], v["judged"]
    if not judged:
        return
    leader = min(judged, key=lambda lb: _score(v, lb))
    band = CLOSE_MIN
    if v["score_kind"] == "training":  # a smoothed end moves with the noise, ~sqrt((1-w)/(1+w)) of it
        band = max([band] + [per_run[lb]["noise"] * ((1 - SMOOTHING) / (1 + SMOOTHING)) ** 0.5
                             for lb in judged if per_run[lb]["noise"] is not None])
    tied = [lb for lb in judged if _score(v, lb) <= _score(v, leader) * (1 + band)]
    if len(tied) == 1:
        v["best"] = leader
    else:
        v["tied"] = tied
    v["ref"] = ref = leader
    fall = {lb: -per_run[lb]["change"] for lb in judged}
    if fall[ref] > FLAT_CHANGE:
        v["too_slow"] = [lb for lb in judged if lb not in v["diverged"] and lb != ref and lb not in v["tied"]
                         and (fall[lb] < TOO_SLOW_SHARE * fall[ref] or per_run[lb]["barely_moved"])]


def _sentences(v: dict) -> list[str]:
    """The verdict's clauses: diverged, best or tie, the others, too slow, too short, not run yet."""
    per_run, best, tied, ref = v["per_run"], v["best"], v["tied"], v["ref"]

    def ended(lb):
        f = per_run[lb]
        return f"{f['val_end']:.2f} validation loss" if v["score_kind"] == "validation" else f"{f['end']:.2f}"

    def noisy(lb):
        f = per_run[lb]
        return f", a noisy curve (\u00b1{f['noise'] * 100:.0f}% step to step)" if f["noisy"] else ""

    out = []
    for lb in v["diverged"]:
        f = per_run[lb]
        why = "the loss became NaN or infinite" if f["nonfinite"] else f"loss rose {f['rise'] * 100:.0f}%"
        out.append(f"{lb} diverged at step {f['diverged_at']} ({why})")
    if best is not None:
        also = ", despite the jump" if best in v["diverged"] else ""
        out.append(f"{best} ended lowest ({ended(best)}{noisy(best)}){also}")
    elif tied:
        out.append(f"{_join(tied)} ended about the same ({', '.join(ended(lb) for lb in tied)}): "
                   "within the noise, this setting made little difference")
        out += [f"{lb}'s curve is noisy (\u00b1{per_run[lb]['noise'] * 100:.0f}% step to step)"
                for lb in tied if per_run[lb]["noisy"]]
    for lb in v["judged"]:
        if lb not in v["diverged"] and lb != best and lb not in tied and lb not in v["too_slow"]:
            out.append(f"{lb} fell {_pct(per_run[lb]['change'])} (ended {ended(lb)}{noisy(lb)})")
    for lb in v["too_slow"]:
        f = per_run[lb]
        if f["barely_moved"]:
            out.append(f"{lb} barely moved ({_pct(f['change'])}{noisy(lb)})")
        else:
            out.append(f"{lb} learned slowly ({_pct(f['change'])} against {_pct(per_run[ref]['change'])} "
                       f"for {ref}{noisy(lb)})")
    out += [f"{lb}: too short to tell ({per_run[lb]['steps']} of at least {MIN_ROWS} steps)" for lb in v["too_short"]]
    out += [f"{lb} has not run yet" for lb in v["pending"]]
    return out


def _join(labels: list[str]) -> str:
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]
