"""The training loop. Read :func:`train_step` first: it is the whole of fine-tuning.

    data   -> tokenized examples, batches of similar length
    model  -> the pretrained model (+ LoRA adapters if method = lora)
    step   -> train_step: forward, loss on the trained tokens, backward, clip, AdamW step,
              learning-rate schedule (grad_accum micro-batches per step)
    run    -> train: repeat the step; log a metrics row; now and then validate and
              checkpoint; stop when asked; at the end final/ (a folder from_pretrained
              opens) and status "finished".

Run it as a worker: ``python -m tunelab train config.yaml --run-dir runs/x``; with ``workers: N`` the
same :func:`train` runs in N processes of a data-parallel group (``tunelab.core.scale``, on Ray Train).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

from . import data, models, runs
from .config import RunConfig
from .errors import UserError
from .machine import Precision, auto_precision, device, pad_multiple, resolve_precision
from .models import PLAIN_HEAD, default_lora_targets
from .plan import lr_factor, lr_schedule_at, warmup_steps
from .registry import FailureLog, get_registry, one_line
from . import fused

OOM_LADDER = (
    "Ran out of memory. Change, in this order: "
    "1) batch_size (halve it, and double grad_accum to keep the effective batch); "
    "2) max_length (long examples cost memory in proportion); "
    "3) gradient_checkpointing: true (recompute activations, ~30% slower); "
    "4) method: lora (gradients and optimizer state for a tiny share of the weights); "
    "5) precision: bf16 or fp16 on a GPU (half the activation memory)."
)
NAN_HELP = (
    "The loss became {loss} at step {step}: training diverged. Likely causes: the learning rate is too "
    "high (try lr / 10), no gradient clipping (set max_grad_norm: 1.0), fp16 overflow (use bf16 or fp32), "
    "or broken examples (check the data with `python -m tunelab data check`)."
)



# -- setting up --------------------------------------------------------------------------------
def build_model(cfg: RunConfig, model=None, precision: str | None = None, device_type: str | None = None):
    """``(model, tokenizer)``: the pretrained model with LoRA adapters and checkpointing as configured.

    ``model`` (optional, with its tokenizer as ``(model, tokenizer)``) skips loading ``cfg.model``.
    The norms, MLPs and (bf16 on a CPU) attention run their leaner equivalents (:mod:`tunelab.core.fused`);
    ``precision`` is the resolved precision (default: ``cfg.precision`` resolved here) and
    ``device_type`` where the model will train (default: where it was loaded). What was fused is
    in ``model.tunelab_fused`` (the run's ``status.json`` records it).
    """
    model, tokenizer = model or models.load_model(cfg.model)
    model.train()
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})  # transformers 5 name
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora.target_modules or default_lora_targets(model.config.model_type)
        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=targets, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()  # frozen embeddings would cut the graph otherwise
    model.tunelab_fused = fused.fuse(model, precision or resolve_precision(cfg.precision), device_type)
    return model, tokenizer


def build_optimizer(model, cfg: RunConfig):
    """AdamW; no weight decay on biases and norm weights (1-D tensors), as is usual.

    ``fused=True``: one kernel updates every tensor (on CPU and CUDA), instead of a Python loop
    of five element-wise ops per tensor; the same maths.
    """
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                             fused=fused or None)


def build_scheduler(optimizer, cfg: RunConfig, total_steps: int):
    """The learning-rate schedule as a PyTorch scheduler: one ``step()`` per optimizer step."""
    import torch

    w = warmup_steps(cfg, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, w, cfg.scheduler))


def micro_batches(examples, cfg: RunConfig, pad_id: int, epoch: int, skip: int, rank: int = 0, world: int = 1,
                  pad_to: int = 1):
    """Yield ``(epoch, index, batch)`` forever, epoch after epoch, from a saved position; ``(epoch, index)``
    is where the stream goes on after this batch (what a checkpoint saves).

    The micro-batches form one stream, epochs running on into each other. A group of ``world`` processes
    takes it ``world`` at a time, rank r the r-th, so ``workers: 2, grad_accum: 1`` trains on exactly the
    batches of ``workers: 1, grad_accum: 2``, step for step, and every rank saves the same position.
    """
    def stream(epoch, skip):
        while True:
            order = data.length_grouped_batches([len(e["input_ids"]) for e in examples], cfg.batch_size, cfg.seed,
                                                epoch)
            for i in range(skip, len(order)):
                yield epoch, i, order[i]
            epoch, skip = epoch + 1, 0

    batches = stream(epoch, skip)
    while True:
        round_ = [next(batches) for _ in range(world)]
        _, _, idx = round_[rank]
        last_epoch, last_index, _ = round_[-1]
        yield last_epoch, last_index + 1, data.collate([examples[j] for j in idx], pad_id, pad_to, cfg.max_length)


# -- one optimizer step ------------------------------------------------------------------------
def trained_loss(model, batch: dict, n_tokens: int):
    """Cross-entropy summed over the trained tokens of ``batch``, divided by ``n_tokens``.

    Position t predicts token t + 1, so the labels shift by one. Only positions whose next
    token is trained (label != -100: the answer, not the prompt or padding) need logits: the
    hidden states there go through the output layer, a 49,152-wide matrix for SmolLM2, and
    the rest never do. Models whose head does more than a linear map (logit soft-capping),
    and multi-GPU runs (DDP must run the model's own forward), use the model's own loss:
    the same number, computed over every position.
    """
    import torch
    import torch.nn.functional as F

    parts = _body_and_head(model)
    if parts is None:
        return model(**batch, use_cache=False, num_items_in_batch=n_tokens).loss
    body, head = parts
    targets = batch["labels"][:, 1:]
    trained = targets != data.IGNORE_INDEX
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    hidden = hidden.last_hidden_state[:, :-1][trained]  # (trained tokens, hidden size)
    if torch.is_grad_enabled() and type(head) is torch.nn.Linear and head.bias is None:
        return linear_cross_entropy(hidden, head.weight, targets[trained]) / n_tokens
    return F.cross_entropy(head(hidden).float(), targets[trained], reduction="sum") / n_tokens


def linear_cross_entropy(hidden, weight, targets, chunk_elements: int = 2**25):
    """``cross_entropy(hidden @ weight.T, targets, reduction="sum")``, a few hundred rows at a time.

    The full logits (tokens x vocabulary, in fp32 for the softmax) and their gradient are the
    biggest tensors of a small model's step. Here each chunk's logits become their gradient
    (softmax minus one-hot) at once, and are gone before the next chunk: the same maths, a
    fraction of the memory, and no second pass over the logits in backward.
    """
    return _linear_cross_entropy_class().apply(hidden, weight, targets, max(1, chunk_elements // weight.shape[0]))


@functools.cache  # defined on first use: importing this module must not import torch
def _linear_cross_entropy_class():
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, targets, chunk):
            device = hidden.device.type
            # matmuls in autocast's dtype (the weight cast once), softmax and sums in fp32
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
            with torch.autocast(device, enabled=False):
                w, h = weight.to(dtype), hidden.to(dtype)
                loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
                grad_h = torch.empty_like(hidden)
                grad_w = None  # fp32, the first chunk's product, then a sum
                for s in range(0, h.shape[0], chunk):
                    hs, ts = h[s: s + chunk], targets[s: s + chunk]
                    # one fused, row-at-a-time kernel: each 49,152-wide row is read from memory once
                    logp = torch.log_softmax(hs @ w.T, dim=-1, dtype=torch.float32)
                    rows = torch.arange(len(ts), device=ts.device)
                    loss -= logp[rows, ts].sum()
                    probs = logp.exp_()  # softmax, in place
                    probs[rows, ts] -= 1  # d loss / d logits
                    probs = probs.to(dtype)
                    grad_h[s: s + chunk] = probs @ w
                    if ctx.needs_input_grad[1]:
                        part = probs.T @ hs
                        grad_w = part.float() if grad_w is None else grad_w.add_(part)
            ctx.save_for_backward(grad_h, grad_w)
            return loss

        @staticmethod
        def backward(ctx, grad_loss):
            grad_h, grad_w = ctx.saved_tensors
            return grad_h * grad_loss, None if grad_w is None else grad_w * grad_loss, None, None

    return LinearCrossEntropy


def _body_and_head(model):
    """(decoder stack, output layer) of a causal LM with a plain head, else None."""
    import torch

    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return None
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps it
    if getattr(causal_lm.config, "model_type", None) not in PLAIN_HEAD:
        return None
    return causal_lm.base_model, causal_lm.get_output_embeddings()


def train_step(model, micro_batches: list[dict], optimizer, scheduler, precision: Precision,
               max_grad_norm: float) -> dict:
    """One optimizer step over ``micro_batches`` (``grad_accum`` of them): what fine-tuning is.

    Returns the step's ``loss`` (mean per trained token), ``grad_norm`` (before clipping)
    and ``tokens`` (real, unpadded tokens seen).
    """
    import torch
    import torch.distributed as dist

    device = next(model.parameters()).device
    # Normalise by the trained tokens of the whole step (every micro-batch, every process), so each token
    # weighs the same however the examples fall into micro-batches; counted in host memory: no device wait.
    n_tokens = sum(int((b["labels"][:, 1:] != data.IGNORE_INDEX).sum()) for b in micro_batches)
    seen = sum(int(b["attention_mask"].sum()) for b in micro_batches)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        dist.all_reduce(total := torch.tensor(n_tokens, device=device))
        n_tokens = int(total)
    n_tokens = max(n_tokens, 1)

    loss_sum = torch.zeros((), device=device)
    for batch in micro_batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with precision.autocast():
            loss = trained_loss(model, batch, n_tokens)  # forward
        # backward; DDP averages gradients over processes, so scale back up to a sum over tokens
        precision.scaler.scale(loss * world).backward()
        loss_sum += loss.detach().float()  # stays on the device: no wait here

    params = [p for p in model.parameters() if p.grad is not None]
    precision.scaler.unscale_(optimizer)  # fp16: true gradients before measuring them
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if max_grad_norm > 0:  # clip: no step longer than max_grad_norm, however odd the batch
        torch.nn.utils.clip_grads_with_norm_(params, max_grad_norm, grad_norm)
    precision.scaler.step(optimizer)  # AdamW (fp16: skipped if the gradients overflowed)
    precision.scaler.update()
    scheduler.step()  # the next step's learning rate
    optimizer.zero_grad(set_to_none=True)
    if world > 1:  # the step's loss is over every process's tokens
        dist.all_reduce(loss_sum)
    # the step's one wait for the device: its loss and gradient norm, read together
    loss_value, norm_value = torch.stack([loss_sum, grad_norm.float()]).tolist()
    return {"loss": loss_value, "grad_norm": norm_value, "tokens": seen}


def evaluate_loss(model, examples, cfg: RunConfig, pad_id: int, precision: Precision) -> float:
    """Mean loss per trained token over the validation set (same precision as training)."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for idx in data.length_grouped_batches([len(e["input_ids"]) for e in examples], cfg.batch_size, 0):
            batch = {k: v.to(device) for k, v in data.collate([examples[j] for j in idx], pad_id).items()}
            n = int((batch["labels"][:, 1:] != data.IGNORE_INDEX).sum())
            if n:
                with precision.autocast():
                    total += trained_loss(model, batch, n).item() * n
                count += n
    model.train()
    return total / max(count, 1)


# -- checkpoints -------------------------------------------------------------------------------
def save_checkpoint(run_dir: Path, model, optimizer, scheduler, position: dict, keep: int = 1) -> Path:
    """Trainable weights, optimizer, scheduler, RNG and data position: everything resume needs.

    Every ``.pt`` file holds tensors and plain Python data only, so it loads with
    ``torch.load(weights_only=True)``: opening a checkpoint runs no code from it.
    """
    import torch
    from safetensors.torch import save_file

    folder = Path(run_dir) / "checkpoints" / f"step-{position['step']}"
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, tmp / "trainable.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    version, state, gauss = random.getstate()
    rng = {"python": [version, list(state), gauss], "torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    torch.save(rng, tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(position, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    runs.prune_checkpoints(run_dir, keep)  # full checkpoints are big: the newest `keep_checkpoints` stay
    return folder


def load_checkpoint(folder: Path, model, optimizer, scheduler) -> dict:
    """Restore what :func:`save_checkpoint` saved; returns the data position (``trainer_state.json``)."""
    import torch
    from safetensors.torch import load_file

    missing = set(n for n, p in model.named_parameters() if p.requires_grad)
    state = load_file(folder / "trainable.safetensors")
    model.load_state_dict(state, strict=False)
    if missing - set(state):
        raise UserError(f"{folder}: checkpoint does not match the model (were method or lora.* changed?)")
    try:
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
        rng = torch.load(folder / "rng.pt", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle refuses code objects with many error types
        raise UserError(f"{folder}: cannot read this checkpoint safely ({type(exc).__name__}); it was written "
                        "by another version or is damaged. Start a new run.") from None
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((folder / "trainer_state.json").read_text())


def save_final(run_dir: Path, model, tokenizer, cfg: RunConfig) -> Path:
    """``final/``: plain ``AutoModelForCausalLM.from_pretrained`` (LoRA: the adapter folder peft opens)."""
    final = Path(run_dir) / "final"
    tmp = final.with_name("final.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "tunelab.json").write_text(json.dumps({"base_model": cfg.model, "method": cfg.method}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


# -- stopping ----------------------------------------------------------------------------------
_signalled = False


def install_stop_signals() -> None:
    """SIGTERM (``stop``) and a first Ctrl-C ask for a checkpoint and a clean stop.

    The CLI calls this before its heavy imports, so a stop requested while the worker
    is still loading is not lost; a second Ctrl-C interrupts at once.
    """
    def on_signal(signum, _frame):
        global _signalled
        _signalled = True
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            print("\n[tunelab] stopping after this step (Ctrl-C again to abort)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


class StopFlag:
    """True once a stop signal arrived or a STOP file exists; checked after every optimizer step."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def __bool__(self):
        return _signalled or (self.run_dir / "STOP").exists()


def check_fresh(run_dir: Path) -> None:
    """Refuse to train from scratch into a folder that holds a trained model or checkpoints."""
    if (run_dir / "final").exists() or runs.checkpoints(run_dir):
        raise UserError(f"{run_dir} already holds a trained run (final/ or checkpoints/); use "
                        f"`python -m tunelab resume {run_dir}` to continue it, or a new --run-dir")


# -- one process or several: data parallelism ---------------------------------------------------
class Group:
    """This process's place in the run: alone, or one rank of a data-parallel group.

    A group is N processes, each with a full copy of the model, each taking every N-th micro-batch;
    after backward, DDP averages their gradients, so every copy takes the same optimizer step.
    The process group itself is set up by whoever started the processes (Ray Train's TorchTrainer,
    see ``tunelab.core.scale``; or ``torchrun``): here it is only read. Rank 0 writes the run's files.
    """

    def __init__(self):
        import torch.distributed as dist

        grouped = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if grouped else 0
        self.size = dist.get_world_size() if grouped else 1
        local_rank = int(os.environ.get("LOCAL_RANK", "0")) if grouped else None
        self.device = device(local_rank)
        self.is_main = self.rank == 0

    def wrap(self, model):
        """The model on this process's device; in a group, wrapped in DDP (gradients averaged)."""
        import torch

        model = model.to(self.device)
        if self.size == 1:
            return model
        ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    @staticmethod
    def unwrap(model):
        return getattr(model, "module", model)

    def combine(self, value: float, how: str) -> float:
        """``value`` combined over the group (``"max"`` or ``"sum"``): every rank gets the same answer."""
        if self.size == 1:
            return value
        import torch
        import torch.distributed as dist

        t = torch.tensor(value, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if how == "max" else dist.ReduceOp.SUM)
        return t.item()


# -- the run: the lifecycle around train_step ----------------------------------------------------
class _Hooks:
    """Calls the plugins' lifecycle hooks; a plugin that raises is logged on the run, not fatal."""

    def __init__(self, registry, run_dir: Path, run: dict, active: bool = True):
        self.registry, self.run_dir, self.run, self.errors = registry, run_dir, run, FailureLog()
        self.active = active  # rank 0 only: a group's other ranks would report every event again

    def __call__(self, name: str, **kwargs) -> None:
        if not self.active:
            return

        def on_error(plugin, exc):  # kept: each plugin's first few (an on_log raising every step is counted)
            message = f"plugin '{plugin}' raised in {name}: {one_line(exc)}"
            if self.errors.add(plugin, message):
                print(f"[tunelab] {message} (training continues)", file=sys.stderr, flush=True)
            runs.write_status(self.run_dir, plugin_errors=self.errors.messages())
        self.registry.call(name, on_error=on_error, run=self.run, **kwargs)


class _Session:
    """Everything one run holds while it trains (filled by :func:`_set_up`)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, echo, hooks: _Hooks, group: Group):
        self.cfg, self.run_dir, self.echo, self.hook, self.group = cfg, run_dir, echo, hooks, group
        self.stop = StopFlag(run_dir)
        self.position = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "elapsed_s": 0.0, "tokens": 0}


def train(cfg: RunConfig, run_dir, resume: bool = False, registry=None, echo=None) -> dict:
    """Train ``cfg`` into ``run_dir``. Returns the result dict also given to ``on_train_end``.

    ``echo(row)`` receives every metrics row (the CLI prints them as JSON lines).
    """
    run_dir = Path(run_dir)
    group = Group()
    if group.is_main:
        if not resume:
            check_fresh(run_dir)
        runs.create_run(cfg, run_dir=run_dir)
        runs.remove_partial_checkpoints(run_dir)  # a worker killed mid-save leaves step-N.tmp/
        runs.write_status(run_dir, state="running", pid=os.getpid(), error=None, started_at=runs.now(),
                          workers=group.size)
    run = {"run_dir": str(run_dir), "config": cfg.to_dict(), "total_steps": None, "start_step": 0}
    s = _Session(cfg, run_dir, echo, _Hooks(registry or get_registry(), run_dir, run, group.is_main), group)
    result = {"state": "failed", "step": 0, "error": None, "final_dir": None, "user_error": False}
    try:
        _set_up(s, resume)
        run.update(total_steps=s.total_steps, start_step=s.position["step"])
        s.hook("on_train_start")
        result["state"] = _loop(s)
        if result["state"] == "finished" and group.is_main:
            # the trained model, ready for from_pretrained; checkpoints are no longer needed
            result["final_dir"] = str(save_final(run_dir, group.unwrap(s.model), s.tokenizer, cfg))
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded; _failure says which re-raise
        result["error"], result["user_error"], fatal = _failure(exc)
        if fatal:
            raise
    finally:
        result["step"] = s.position["step"]
        if group.is_main:
            (run_dir / "STOP").unlink(missing_ok=True)
            runs.write_status(run_dir, state=result["state"], error=result["error"], step=result["step"],
                              finished_at=runs.now())
        s.hook("on_train_end", result=result)
    return result


def _set_up(s: _Session, resume: bool) -> None:
    """Data, model, optimizer, schedule, precision, and the saved position when resuming."""
    import torch

    cfg, group = s.cfg, s.group
    device_type = group.device.split(":")[0]
    precision = resolve_precision(cfg.precision, device_type)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    tokenizer = models.load_tokenizer(cfg.model)
    s.data = data.prepare(cfg.data.path, tokenizer, cfg.max_length, cfg.data.format or None, cfg.data.params,
                          cfg.data.val_fraction, cfg.seed, cfg.train_on_prompt, s.hook.registry)
    if cfg.workers != group.size:  # the steps are counted for the group the run asked for
        cfg = s.cfg = dataclasses.replace(cfg, workers=group.size)
    s.total_steps = cfg.total_steps(len(s.data.train))
    s.per_epoch = cfg.steps_per_epoch(len(s.data.train))
    reason = auto_precision(device_type)[1] if cfg.precision == "auto" else f"{precision}: set in the config"
    if group.is_main:
        runs.write_status(s.run_dir, total_steps=s.total_steps, data=s.data.summary(), precision=precision,
                          precision_reason=reason, device=group.device)

    model, s.tokenizer = build_model(cfg, precision=precision, device_type=device_type)
    if group.is_main:
        runs.write_status(s.run_dir, fused=model.tunelab_fused)
    s.model = group.wrap(model)
    s.optimizer = build_optimizer(s.model, cfg)  # after wrap: fused AdamW wants the final device
    s.scheduler = build_scheduler(s.optimizer, cfg, s.total_steps)
    s.precision = Precision(precision, group.device)
    s.pad_id = s.tokenizer.pad_token_id
    if resume and runs.latest_checkpoint(s.run_dir):  # every rank restores the same step
        s.position = load_checkpoint(runs.latest_checkpoint(s.run_dir), group.unwrap(s.model),
                                     s.optimizer, s.scheduler)
    if group.is_main:
        runs.truncate_metrics(s.run_dir, s.position["step"])  # rows past the checkpoint will be redone


def _loop(s: _Session) -> str:
    """Repeat :func:`train_step` until the last step or a stop; returns 'finished' or 'stopped'."""
    cfg, group, position = s.cfg, s.group, s.position
    batches = micro_batches(s.data.train, cfg, s.pad_id, position["epoch"], position["batch_in_epoch"],
                            group.rank, group.size, pad_multiple(group.device))
    started = time.time() - position["elapsed_s"]
    if s.stop and position["step"] < s.total_steps:  # asked to stop while loading: nothing new to save
        return "stopped"
    while position["step"] < s.total_steps:
        t0 = time.time()
        micro = [next(batches) for _ in range(cfg.grad_accum)]
        out = train_step(s.model, [b for _, _, b in micro], s.optimizer, s.scheduler, s.precision,
                         cfg.max_grad_norm)
        step = position["step"] + 1
        epoch_index, next_index, _ = micro[-1]
        position.update(step=step, epoch=epoch_index, batch_in_epoch=next_index,
                        elapsed_s=time.time() - started, tokens=position["tokens"] + out["tokens"])
        if not math.isfinite(out["loss"]):  # the same on every process: they stop together
            raise FloatingPointError(NAN_HELP.format(loss=out["loss"], step=step))
        if step % cfg.log_every == 0 or step == s.total_steps:
            _log(s, out, round(out["tokens"] / (time.time() - t0), 1))
        if s.data.val and ((cfg.eval_every and step % cfg.eval_every == 0) or step == s.total_steps):
            _validate(s, started)
        # every process must agree, or one would wait forever for the others in the next step
        stopping = group.combine(float(bool(s.stop)), "max") > 0 and step < s.total_steps
        if stopping or (cfg.save_every and step % cfg.save_every == 0 and step < s.total_steps):
            if group.is_main:
                save_checkpoint(s.run_dir, group.unwrap(s.model), s.optimizer, s.scheduler, dict(position),
                                keep=cfg.keep_checkpoints)
        if stopping:
            return "stopped"
    return "finished"


def _log(s: _Session, out: dict, tokens_per_s: float) -> None:
    """A training metrics row: to metrics.jsonl, ``echo``, the ``on_log`` hook and status.json."""
    step = s.position["step"]
    row = {"step": step, "epoch": round(step / s.per_epoch, 4), "loss": round(out["loss"], 5),
           "lr": lr_schedule_at(s.cfg, s.total_steps, step - 1), "grad_norm": round(out["grad_norm"], 5),
           "tokens_per_s": tokens_per_s, "elapsed_s": round(s.position["elapsed_s"], 2),
           "tokens": s.position["tokens"]}
    _emit(s, row)
    s.hook("on_log", metrics=row)
    if s.group.is_main:
        runs.write_status(s.run_dir, step=step, elapsed_s=row["elapsed_s"])


def _validate(s: _Session, started: float) -> None:
    """A validation row: mean loss per trained token on the held-out share, and its perplexity."""
    step = s.position["step"]
    eval_loss = evaluate_loss(s.model, s.data.val, s.cfg, s.pad_id, s.precision)
    row = {"step": step, "epoch": round(step / s.per_epoch, 4), "eval_loss": round(eval_loss, 5),
           "eval_ppl": round(math.exp(min(eval_loss, 50)), 3), "elapsed_s": round(time.time() - started, 2)}
    _emit(s, row)
    s.hook("on_evaluate", metrics=row)


def _emit(s: _Session, row: dict) -> None:
    if s.group.is_main:
        runs.append_metrics(s.run_dir, row)
        if s.echo:
            s.echo(row)


def _failure(exc: BaseException) -> tuple[str, bool, bool]:
    """``(error message, user's mistake?, re-raise?)`` for what ended a run.

    A user's mistake, divergence and running out of memory end the run with an explanation;
    anything else is a bug or an interrupt: recorded, then re-raised with its traceback.
    """
    import torch

    if isinstance(exc, UserError):
        return str(exc), True, False
    if isinstance(exc, FloatingPointError):
        return str(exc), False, False
    text = str(exc).lower()
    if isinstance(exc, torch.OutOfMemoryError) or (
            isinstance(exc, RuntimeError) and ("out of memory" in text or "not enough memory" in text)):
        return OOM_LADDER, False, False
    return f"{type(exc).__name__}: {exc}", False, True
