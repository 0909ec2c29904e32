"""The training loop. Read it top to bottom: it is the whole of fine-tuning.

    data   -> tokenized examples, batches of similar length
    model  -> the pretrained model (+ LoRA adapters if method = lora)
    loop   -> for each optimizer step: grad_accum micro-batches, forward, loss,
              backward; clip; AdamW step; learning-rate schedule; log a metrics row;
              now and then validate and checkpoint; stop when asked.
    end    -> final/ (a folder from_pretrained opens) and status "finished".

Run it as a worker: ``python -m core train config.yaml --run-dir runs/x``
(``accelerate launch -m core train ...`` on several GPUs).
"""

from __future__ import annotations

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
from .registry import get_registry

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
    "or broken examples (check the data with `python -m core data check`)."
)


# -- the learning-rate schedule -------------------------------------------------------------
def lr_factor(step: int, total_steps: int, warmup_steps: int, scheduler: str) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based): linear warm-up, then decay."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if scheduler == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)  # linear


def warmup_steps(cfg: RunConfig, total_steps: int) -> int:
    return math.ceil(cfg.warmup_ratio * total_steps)


def lr_schedule_at(cfg: RunConfig, total_steps: int, step: int) -> float:
    """The lr used by optimizer step ``step`` (0-based), as logged in ``metrics.jsonl``."""
    return cfg.lr * lr_factor(step, total_steps, warmup_steps(cfg, total_steps), cfg.scheduler)


def lr_schedule(cfg: RunConfig, total_steps: int) -> list[float]:
    """The learning rate used at each optimizer step: what the Set-up page charts."""
    return [lr_schedule_at(cfg, total_steps, s) for s in range(total_steps)]


# -- setting up --------------------------------------------------------------------------------
def resolve_precision(precision: str) -> str:
    """'auto' -> fp32 on CPU, bf16 on GPUs that support it, fp16 (with a grad scaler) otherwise."""
    import torch

    from .memory import resolve_precision as resolve_auto

    resolved = resolve_auto(precision)
    if resolved == "fp16" and not torch.cuda.is_available():
        raise UserError("precision fp16 needs a GPU (CPU kernels for fp16 training are missing); use fp32 or bf16")
    return resolved


def estimate_seconds(cfg: RunConfig, n_train: int, median_tokens: float, tokens_per_s: float) -> float:
    """Training time from a measured speed: steps x examples per step x tokens per example / speed."""
    return cfg.total_steps(n_train) * cfg.batch_size * cfg.grad_accum * median_tokens / tokens_per_s


def build_model(cfg: RunConfig):
    """The pretrained model, with LoRA adapters and gradient checkpointing as configured."""
    model, tokenizer = models.load_model(cfg.model)
    model.train()
    if cfg.gradient_checkpointing:
        model.config.use_cache = False  # the cache is useless in training and clashes with checkpointing
        model.activation_checkpointing_enable({"use_reentrant": False})  # transformers 5 name
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        from .memory import default_lora_targets

        targets = cfg.lora.target_modules or default_lora_targets(model.config.model_type)
        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=targets, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()  # frozen embeddings would cut the graph otherwise
    return model, tokenizer


def build_optimizer(model, cfg: RunConfig):
    """AdamW; no weight decay on biases and norm weights (1-D tensors), as is usual."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)


def micro_batches(examples, cfg: RunConfig, pad_id: int, epoch: int, skip: int, rank: int = 0, world: int = 1):
    """Yield ``(epoch, index_in_epoch, batch)`` forever, epoch after epoch, from a saved position."""
    while True:
        order = data.length_grouped_batches([len(e["input_ids"]) for e in examples], cfg.batch_size, cfg.seed, epoch)
        for i, idx in enumerate(order):
            if i >= skip and i % world == rank:  # each process of a multi-GPU run takes its share
                yield epoch, i, data.collate([examples[j] for j in idx], pad_id)
        epoch, skip = epoch + 1, 0


def evaluate_loss(model, examples, cfg: RunConfig, pad_id: int, device) -> float:
    """Mean loss per trained token over the validation set."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for idx in data.length_grouped_batches([len(e["input_ids"]) for e in examples], cfg.batch_size, 0):
            batch = {k: v.to(device) for k, v in data.collate([examples[j] for j in idx], pad_id).items()}
            n = int((batch["labels"][:, 1:] != data.IGNORE_INDEX).sum())
            if n:
                total += model(**batch, num_items_in_batch=n).loss.item() * n
                count += n
    model.train()
    return total / max(count, 1)


# -- checkpoints -------------------------------------------------------------------------------
def save_checkpoint(run_dir: Path, model, optimizer, scheduler, position: dict) -> Path:
    """Trainable weights, optimizer, scheduler, RNG and data position: everything resume needs."""
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
    rng = {"python": random.getstate(), "torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    torch.save(rng, tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(position, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    for old in runs.checkpoints(run_dir):  # full checkpoints are big: keep the one just saved only
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def load_checkpoint(folder: Path, model, optimizer, scheduler) -> dict:
    import torch
    from safetensors.torch import load_file

    missing = set(n for n, p in model.named_parameters() if p.requires_grad)
    state = load_file(folder / "trainable.safetensors")
    model.load_state_dict(state, strict=False)
    if missing - set(state):
        raise UserError(f"{folder}: checkpoint does not match the model (were method or lora.* changed?)")
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
    rng = torch.load(folder / "rng.pt", weights_only=False)
    random.setstate(rng["python"])
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


# -- the loop ----------------------------------------------------------------------------------
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
                        f"`python -m core resume {run_dir}` to continue it, or a new --run-dir")


def train(cfg: RunConfig, run_dir, resume: bool = False, registry=None, echo=None) -> dict:
    """Train ``cfg`` into ``run_dir``. Returns the result dict also given to ``on_train_end``.

    ``echo(row)`` receives every metrics row (the CLI prints them as JSON lines).
    """
    import torch
    from accelerate import Accelerator

    run_dir = Path(run_dir)
    registry = registry or get_registry()
    if not resume:
        check_fresh(run_dir)
    runs.create_run(cfg, run_dir=run_dir)
    runs.remove_partial_checkpoints(run_dir)  # a worker killed mid-save leaves step-N.tmp/
    runs.write_status(run_dir, state="running", pid=os.getpid(), error=None, started_at=runs.now())
    run = {"run_dir": str(run_dir), "config": cfg.to_dict(), "total_steps": None, "start_step": 0}
    plugin_errors = []

    def hook(name, **kwargs):
        def on_error(plugin, exc):
            message = f"plugin '{plugin}' raised in {name}: {type(exc).__name__}: {exc}"
            plugin_errors.append(message)
            print(f"[tunelab] {message} (training continues)", file=sys.stderr, flush=True)
            runs.write_status(run_dir, plugin_errors=plugin_errors[-20:])
        registry.call(name, on_error=on_error, run=run, **kwargs)

    result = {"state": "failed", "step": 0, "error": None, "final_dir": None, "user_error": False}
    step = 0
    stop = StopFlag(run_dir)
    try:
        precision = resolve_precision(cfg.precision)
        accelerator = Accelerator(mixed_precision={"fp32": "no"}.get(precision, precision))
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)

        # 1. data
        tokenizer = models.load_tokenizer(cfg.model)
        prepared = data.prepare(cfg.data.path, tokenizer, cfg.max_length, cfg.data.format or None,
                                cfg.data.params, cfg.data.val_fraction, cfg.seed, cfg.train_on_prompt, registry)
        total_steps = cfg.total_steps(len(prepared.train))
        per_epoch = cfg.steps_per_epoch(len(prepared.train))
        run["total_steps"] = total_steps
        runs.write_status(run_dir, total_steps=total_steps, data=prepared.summary(), precision=precision)

        # 2. model, optimizer, schedule
        model, tokenizer = build_model(cfg)
        optimizer = build_optimizer(model, cfg)
        w = warmup_steps(cfg, total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, total_steps, w, cfg.scheduler))
        model, optimizer = accelerator.prepare(model, optimizer)
        pad_id = tokenizer.pad_token_id

        position = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "elapsed_s": 0.0, "tokens": 0}
        if resume and runs.latest_checkpoint(run_dir):
            position = load_checkpoint(runs.latest_checkpoint(run_dir), accelerator.unwrap_model(model),
                                       optimizer, scheduler)
        if accelerator.is_main_process:
            runs.truncate_metrics(run_dir, position["step"])  # rows past the checkpoint will be redone
        run["start_step"] = position["step"]
        hook("on_train_start")

        # 3. the loop
        batches = micro_batches(prepared.train, cfg, pad_id, position["epoch"], position["batch_in_epoch"],
                                accelerator.process_index, accelerator.num_processes)
        step, started = position["step"], time.time() - position["elapsed_s"]
        if stop and step < total_steps:  # asked to stop while loading: nothing new to save
            result["state"] = "stopped"
        while step < total_steps and result["state"] != "stopped":
            t0 = time.time()
            micro = [next(batches) for _ in range(cfg.grad_accum)]
            # Normalise by the trained tokens of the whole accumulated batch (not per micro-batch),
            # so every token weighs the same however the examples fall into micro-batches.
            n_tokens = sum(int((b["labels"][:, 1:] != data.IGNORE_INDEX).sum()) for _, _, b in micro)
            n_tokens = int(accelerator.reduce(torch.tensor(n_tokens, device=accelerator.device), "sum"))
            loss_sum, seen = 0.0, 0
            for _, _, batch in micro:
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                with accelerator.autocast():
                    loss = model(**batch, num_items_in_batch=max(n_tokens, 1)).loss
                # DDP averages gradients over processes; scale back up to a sum over all tokens
                accelerator.backward(loss * accelerator.num_processes)
                loss_sum += loss.item()
                seen += int(batch["attention_mask"].sum())
            if cfg.max_grad_norm > 0:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            else:
                grad_norm = torch.norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            epoch_index, batch_index, _ = micro[-1]
            position.update(step=step, epoch=epoch_index, batch_in_epoch=batch_index + 1,
                            elapsed_s=time.time() - started, tokens=position["tokens"] + seen)

            if not math.isfinite(_any_process(accelerator, loss_sum, "sum")):
                raise FloatingPointError(NAN_HELP.format(loss=loss_sum, step=step))
            if step % cfg.log_every == 0 or step == total_steps:
                row = {"step": step, "epoch": round(step / per_epoch, 4), "loss": round(loss_sum, 5),
                       "lr": lr_schedule_at(cfg, total_steps, step - 1), "grad_norm": round(float(grad_norm), 5),
                       "tokens_per_s": round(seen / (time.time() - t0), 1),
                       "elapsed_s": round(position["elapsed_s"], 2), "tokens": position["tokens"]}
                _emit(run_dir, row, accelerator, echo)
                hook("on_log", metrics=row)
                if accelerator.is_main_process:
                    runs.write_status(run_dir, step=step, elapsed_s=row["elapsed_s"])
            if prepared.val and ((cfg.eval_every and step % cfg.eval_every == 0) or step == total_steps):
                eval_loss = evaluate_loss(model, prepared.val, cfg, pad_id, accelerator.device)
                row = {"step": step, "epoch": round(step / per_epoch, 4), "eval_loss": round(eval_loss, 5),
                       "eval_ppl": round(math.exp(min(eval_loss, 50)), 3),
                       "elapsed_s": round(time.time() - started, 2)}
                _emit(run_dir, row, accelerator, echo)
                hook("on_evaluate", metrics=row)
            # every process must agree, or one would wait forever for the others in the next step
            stopping = _any_process(accelerator, float(bool(stop)), "max") > 0 and step < total_steps
            if stopping or (cfg.save_every and step % cfg.save_every == 0 and step < total_steps):
                _checkpoint(run_dir, accelerator, model, optimizer, scheduler, position)
            if stopping:
                result["state"] = "stopped"
        if result["state"] != "stopped":
            # 4. the end: the trained model, ready for from_pretrained; checkpoints are no longer needed
            if accelerator.is_main_process:
                result["final_dir"] = str(save_final(run_dir, accelerator.unwrap_model(model), tokenizer, cfg))
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            result["state"] = "finished"
    except UserError as exc:
        result["error"] = str(exc)
        result["user_error"] = True
    except FloatingPointError as exc:
        result["error"] = str(exc)
    except torch.OutOfMemoryError:
        result["error"] = OOM_LADDER
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower() or "not enough memory" in str(exc).lower():
            result["error"] = OOM_LADDER
        else:
            result["error"] = f"{type(exc).__name__}: {exc}"
            raise
    except BaseException as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        result["step"] = step
        (run_dir / "STOP").unlink(missing_ok=True)
        runs.write_status(run_dir, state=result["state"], error=result["error"], step=result["step"],
                          finished_at=runs.now())
        hook("on_train_end", result=result)
    return result


def _any_process(accelerator, value: float, how: str) -> float:
    """``value`` combined over all processes of a multi-GPU run (itself on one process)."""
    if accelerator.num_processes == 1:
        return value
    import torch

    return accelerator.reduce(torch.tensor(value, device=accelerator.device), how).item()


def _emit(run_dir: Path, row: dict, accelerator, echo) -> None:
    if accelerator.is_main_process:
        runs.append_metrics(run_dir, row)
        if echo:
            echo(row)


def _checkpoint(run_dir, accelerator, model, optimizer, scheduler, position) -> None:
    if accelerator.is_main_process:
        save_checkpoint(run_dir, accelerator.unwrap_model(model), optimizer, scheduler, dict(position))
