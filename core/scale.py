"""Data parallelism: a run with ``workers: N`` trains as N processes of one group, on Ray Train.

Ray Train's ``TorchTrainer`` starts N worker processes (one per GPU on a GPU box, or CPU processes
with gloo where there is none), sets up their process group and runs :func:`_worker` in each: TuneLab's
own :func:`tunelab.core.train.train`, unchanged. Each rank has a copy of the model and takes every N-th
micro-batch; DDP averages the gradients; rank 0 writes the run's files (metrics, status, checkpoints,
``final/``) into the run folder, which on several machines is shared storage.

This process (``python -m tunelab train``, the run's worker as far as the run store knows: it holds
``worker.lock``) is the *driver*: it connects to Ray (the cluster a Ray Job runs on, or a private local
Ray on a laptop), refuses a group the cluster cannot hold, echoes rank 0's metric rows as JSON lines
on stdout (so a Ray Job's log carries them to the client's mirror, as for one process), turns SIGTERM
into the STOP file every rank reads, and says clearly when a worker died.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from . import runs, train
from .plan import check_resources
from .config import RunConfig
from .errors import UserError
from .paths import IMPORT_ROOT

ECHO_POLL_S = 0.5  # how often the driver looks for new metric rows
LOCAL_OBJECT_STORE = 128 * 2**20  # a private local Ray passes no data through its object store: keep it small


def on_ray_cluster() -> bool:
    """Whether this process runs on a Ray cluster (as a Ray Job's entrypoint), not on its own."""
    return bool(os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID"))


def _connect(workers: int) -> None:
    """Join the Ray cluster this process runs on (a Ray Job's), else start a private local Ray."""
    import ray

    if ray.is_initialized():
        return
    if on_ray_cluster():
        ray.init(log_to_driver=True)
        return
    # A laptop or the CPU box: a Ray of its own on 127.0.0.1 for this run, gone when the run ends. Enough
    # CPU slots for every rank (on 2 cores they take turns: data parallelism shown, not a speed-up).
    ray.init(address="local", num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False,
             object_store_memory=LOCAL_OBJECT_STORE, log_to_driver=True,
             runtime_env={"env_vars": {"PYTHONPATH": str(IMPORT_ROOT)}})


def _worker(loop_config: dict) -> None:
    """One rank: TuneLab's training loop inside the process group Ray Train set up."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # Ray forwards a rank's output to the driver's: no bars among the rows
    os.chdir(loop_config["cwd"])  # Ray starts workers elsewhere: relative data and model paths mean the driver's
    cfg = RunConfig.from_dict(loop_config["config"])
    result = train.train(cfg, loop_config["run_dir"], resume=loop_config["resume"])
    if result["state"] == "failed" and not result["user_error"]:
        raise RuntimeError(result["error"])  # the group fails together; the driver says which worker


class _Echo(threading.Thread):
    """Print rank 0's metric rows (from metrics.jsonl) as they land, until told to stop."""

    def __init__(self, run_dir: Path, echo, seen: int):
        super().__init__(daemon=True)
        self.run_dir, self.echo, self.seen, self.done = run_dir, echo, seen, threading.Event()

    def run(self) -> None:
        while not self.done.wait(ECHO_POLL_S):
            self.flush()
        self.flush()

    def flush(self) -> None:
        rows = runs.read_metrics(self.run_dir)
        for row in rows[self.seen:]:
            self.echo(row)
        self.seen = max(self.seen, len(rows))


def train_group(cfg: RunConfig, run_dir, resume: bool = False, echo=None) -> dict:
    """Train ``cfg`` with ``cfg.workers`` ranks; returns the result :func:`tunelab.core.train.train` would."""
    import ray
    from ray.train import FailureConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    run_dir = Path(run_dir).resolve()
    _connect(cfg.workers)
    resources = ray.cluster_resources()
    use_gpu = check_resources(cfg.workers, resources.get("GPU", 0.0), resources.get("CPU", 0.0))
    runs.write_status(run_dir, workers=cfg.workers, state="queued", error=None)
    if resume:  # rows past the checkpoint will be redone (rank 0 does the same; here before any echo)
        checkpoint = runs.latest_checkpoint(run_dir)
        runs.truncate_metrics(run_dir, int(checkpoint.name.split("-")[1]) if checkpoint else 0)
    ticker = _Echo(run_dir, echo or (lambda row: None), len(runs.read_metrics(run_dir)))
    previous = signal.signal(signal.SIGTERM, lambda *_: (run_dir / "STOP").write_text(runs.now()))
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"config": cfg.to_dict(), "run_dir": str(run_dir), "resume": resume, "cwd": os.getcwd()},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu),
        # Ray keeps its own small record of the group here; TuneLab's checkpoints are rank 0's, in the run folder
        run_config=RayRunConfig(name="ray-train", storage_path=str(run_dir),
                                failure_config=FailureConfig(max_failures=0)),
    )
    ticker.start()
    started = time.time()
    try:
        trainer.fit()
        failure = None
    except Exception as exc:  # noqa: BLE001 - a rank died or raised: reported below, with the way on
        failure = exc
    finally:
        ticker.done.set()
        ticker.join()
        signal.signal(signal.SIGTERM, previous)
    status = runs.read_status(run_dir)
    if failure is not None and status.get("state") not in ("failed", "stopped", "finished"):
        error = _died(failure, run_dir, time.time() - started)
        runs.write_status(run_dir, state="failed", error=error, finished_at=runs.now())
        status = runs.read_status(run_dir)
    return {"state": status["state"], "step": status.get("step") or 0, "error": status.get("error"),
            "user_error": False, "final_dir": str(run_dir / "final") if (run_dir / "final").is_dir() else None}


def _died(exc: BaseException, run_dir: Path, seconds: float) -> str:
    """One clear line for a group that ended because a worker died or raised."""
    text = " ".join(str(exc).split())
    cause = text[-300:] if text else type(exc).__name__
    checkpoint = runs.latest_checkpoint(run_dir)
    where = (f"`python -m tunelab resume {run_dir}` continues from {checkpoint.name}" if checkpoint else
             f"no checkpoint was saved (set save_every to keep some), so `python -m tunelab resume {run_dir}` "
             "starts again from step 0")
    print(f"[tunelab] the worker group failed after {seconds:.0f} s: {type(exc).__name__}: {text}",
          file=sys.stderr, flush=True)
    return f"a training worker died or failed ({type(exc).__name__}: {cause}); {where}."
