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
