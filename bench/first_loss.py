"""From Start to the first loss row: the worker's start-up, timed as the Fine-tune page sees it.

    python bench/first_loss.py [--config configs/lesson.yaml] [--repeats 2]

Starts the default lesson's run the way the Start button does (``tunelab.core.workers.start``), polls the
run folder, and reports the seconds until the worker is training (``status.json`` has the data
summary: imports, tokenizer and data done) and until the first loss row lands in
``metrics.jsonl``; then stops the run. Twice over: with a fresh worker process (the CLI's way,
and the dashboard's with ``TUNELAB_STANDBY=0``) and with the standby worker the dashboard starts
ahead (``tunelab.core.standby``; waited for until ready, as it is by the time a learner presses Start).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def once(cfg, root: Path, warm: bool) -> dict:
    from tunelab.core import runs, standby, workers

    if warm:
        os.environ["TUNELAB_STANDBY"] = "1"
        standby.prestart()
        deadline = time.perf_counter() + 120
        while not standby.ready():
            if time.perf_counter() > deadline:
                raise SystemExit("the standby worker did not get ready in 120 s (see `python -m tunelab standby`)")
            time.sleep(0.1)
    else:
        os.environ["TUNELAB_STANDBY"] = "0"
        standby._discard()
    started = time.perf_counter()
    run_dir = workers.start(cfg, "first-loss", root=root)
    marks = {}
    while time.perf_counter() - started < 300:
        if "data" not in marks and "data" in runs.read_status(run_dir):
            marks["data"] = time.perf_counter() - started
        if any("loss" in r for r in runs.read_metrics(run_dir)):
            marks["loss"] = time.perf_counter() - started
            break
        if runs.read_status(run_dir)["state"] in ("failed", "finished", "stopped"):
            raise SystemExit(f"the worker ended early:\n{(run_dir / 'log.txt').read_text()[-2000:]}")
        time.sleep(0.05)
    workers.request_stop(run_dir)
    while time.perf_counter() - started < 400 and runs.read_status(run_dir)["state"] in runs.ACTIVE:
        time.sleep(0.2)
    return marks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "lesson.yaml"))
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from tunelab.core import models
    from tunelab.core.config import load_config

    models.ensure_embedded()  # converted once beforehand, as `make run` does
    os.chdir(REPO)  # the config's data path is relative to the repository
    cfg = load_config(args.config)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for warm, label in ((False, "a fresh worker process"), (True, "the standby worker (the dashboard's)")):
            marks = [once(cfg, Path(tmp), warm) for _ in range(args.repeats)]
            rows.append((label, statistics.median(m["data"] for m in marks),
                         statistics.median(m["loss"] for m in marks)))
    from tunelab.core import standby

    standby._discard()
    print(f"From `workers.start` (what Start does) to, median of {args.repeats} starts of `{Path(args.config).name}`:\n")
    print("| worker | data prepared (imports, tokenizer, data) | first loss row (model loaded, first step done) |")
    print("|---|---|---|")
    for label, data, loss in rows:
        print(f"| {label} | {data:.1f} s | {loss:.1f} s |")


if __name__ == "__main__":
    main()
