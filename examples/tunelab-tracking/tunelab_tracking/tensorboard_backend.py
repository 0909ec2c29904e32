"""TensorBoard: event files written by PyTorch's own ``SummaryWriter``.

TuneLab trains with PyTorch, so torch is always there where these hooks run; the writer
needs the ``tensorboard`` package beside it. View with ``tensorboard --logdir <folder>``.
"""

from __future__ import annotations

from pathlib import Path

from .hooks import flatten

FLUSH_SECS = 10  # the writer's default is 120 s: too long to watch a live run


def markdown_table(flat: dict[str, str]) -> str:
    """A two-column markdown table (TensorBoard's Text tab renders markdown)."""
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {key} | {str(value).replace('|', '&#124;')} |" for key, value in flat.items()]
    return "\n".join(lines)


class TensorBoardBackend:
    name = "tensorboard"

    def __init__(self, logdir: Path):
        self.logdir = Path(logdir)
        self.writer = None

    def start(self, run: dict) -> str:
        from torch.utils.tensorboard import SummaryWriter

        start_step = int(run.get("start_step") or 0)
        # On resume TuneLab trains again the steps after the checkpoint (and drops them from
        # metrics.jsonl); purge_step makes TensorBoard drop the old points past it too.
        self.writer = SummaryWriter(str(self.logdir), purge_step=start_step + 1 if start_step else None,
                                    flush_secs=FLUSH_SECS)
        if not start_step:
            self.writer.add_text("config", markdown_table(flatten(run.get("config") or {})), 0)
        return f"event files in {self.logdir} (view: tensorboard --logdir {self.logdir})"

    def state(self) -> dict:
        return {"logdir": str(self.logdir)}

    def log(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def end(self, result: dict) -> None:
        outcome = f"**{result.get('state')}** at step {result.get('step')}"
        if result.get("error"):
            outcome += f"\n\n{result['error']}"
        self.writer.add_text("result", outcome, int(result.get("step") or 0))
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()  # flushes the queue to disk
