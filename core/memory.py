"""How much memory does fine-tuning need? An estimate from the config alone.

The measurement of a real step is :mod:`tunelab.core.measure`; the machine's memory is :mod:`tunelab.core.machine`.

Training memory has five parts (all in bytes; P = parameters, T = trainable parameters):

- **weights**: P x 4 in fp32. In mixed precision (``bf16``/``fp16``, the way accelerate and the
  training engine do it: fp32 weights, ``torch.autocast`` for the maths) the fp32 weights stay --
  they are the *master copy* the optimizer updates -- and autocast adds a 16-bit copy of every
  matrix-multiply weight for the forward and backward passes: P x 4 + P_matmul x 2. Only pure
  16-bit training (``master_weights=False``: the model loaded as bf16 and trained as is) halves
  the weights to P x 2, at the cost of updates too small for bf16 getting lost.
- **gradients**: one per trainable parameter, in the weights' dtype: T x 4 (T x 2 pure 16-bit).
- **optimizer**: AdamW keeps two running averages (m and v) per trainable parameter: T x 8, in
  fp32 (T x 4 in pure 16-bit, where PyTorch keeps them in the parameter's dtype). Plain SGD: 0.
  With LoRA, T is the adapters only, which is where LoRA's saving comes from.
- **activations**: what the forward pass saves for the backward pass; see :func:`activation_bytes`.
  It grows with batch x length, which is why those are the first knobs to turn.
- **logits**: batch x length x vocabulary scores, kept in fp32 for the loss: the logits, the
  log-softmax the loss saves, and their gradient in the backward pass. With a 49k vocabulary this
  is as big as several layers' activations -- in a plain Trainer. TuneLab's engine computes them a
  chunk of rows at a time at the trained positions only (:func:`logits_bytes`), and its fused norms
  and MLPs keep less for backward (:func:`activation_bytes`): the estimate models the engine that runs.

``total`` is the *peak* of a steady-state training step, not the plain sum: gradients are
created while the backward pass frees activations, so the two are never all alive at once. The
peak is weights + optimizer state + the larger of (activations + logits + a share of the
gradients, during backward) and (gradients + the optimizer's temporaries, during its step).
The coefficients below were measured by counting the tensors autograd saves (with
``torch.autograd.graph.saved_tensors_hooks``) on transformers 5.23 / torch 2.13, and checked
against :func:`tunelab.core.measure.measure_step` (within ~5% of live tensor bytes; on CPU the allocator's
fragmentation adds 5-30% on top, which the 75% "tight" margin of :func:`verdict` is for).
"""

from __future__ import annotations

import copy

from .fused import FUSED_MODEL_TYPES
from .machine import PRECISIONS, device, fmt_bytes, resolve_precision
from .models import PLAIN_HEAD, _adapter_base, default_lora_targets, resolve

GPT2_LIKE = ("gpt2", "gpt_bigcode", "gpt_neo")


# -- the model's shape, without its weights --------------------------------------------------

def _config(model_or_config):
    """A transformers config from a model, a config, its ``to_dict()``, or a name (as ``load_model``)."""
    if isinstance(model_or_config, dict):  # an estimate's "config": rebuilt to re-estimate
        from transformers import AutoConfig

        return AutoConfig.for_model(**model_or_config)
    if hasattr(model_or_config, "config") and not isinstance(model_or_config, str):
        return model_or_config.config
    if isinstance(model_or_config, str):
        from transformers import AutoConfig

        where = resolve(model_or_config)
        return AutoConfig.from_pretrained(_adapter_base(where) or where)
    return model_or_config


def _shape(config) -> dict:
    """Sizes the formulas need, under the names Llama and GPT-2 configs use."""
    g = lambda *names, default=None: next((getattr(config, n) for n in names if getattr(config, n, None)), default)  # noqa: E731
    h = g("hidden_size", "n_embd", "d_model")
    heads = g("num_attention_heads", "n_head")
    head_dim = g("head_dim", default=h // heads)
    return {"model_type": getattr(config, "model_type", ""), "hidden": h,
            "intermediate": g("intermediate_size", "n_inner", "ffn_dim", default=4 * h),
            "heads": heads, "kv": g("num_key_value_heads", default=heads) * head_dim,
            "layers": g("num_hidden_layers", "n_layer"), "vocab": config.vocab_size,
            "attention": getattr(config, "_attn_implementation", None) or "sdpa"}


def _linear_shapes(config) -> tuple[int, int, dict[str, list[tuple[int, int]]]]:
    """(parameters, matmul-weight parameters, {module suffix: [(in, out), ...]}) from the config.

    The model is built on PyTorch's ``meta`` device: every tensor has a shape but no storage, so
    this is exact for any architecture and costs no memory.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    seen, total, matmul, linears = set(), 0, 0, {}
    for p in model.parameters():
        if id(p) not in seen:  # tied embeddings count once
            seen.add(id(p))
            total += p.numel()
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind in ("Linear", "Conv1D"):
            w = module.weight
            fan_in, fan_out = (w.shape[1], w.shape[0]) if kind == "Linear" else (w.shape[0], w.shape[1])
            linears.setdefault(name.rsplit(".", 1)[-1], []).append((fan_in, fan_out))
            matmul += w.numel()
    return total, matmul, linears


def lora_parameters(linears: dict, targets, r: int) -> int:
    """LoRA adds A (r x in) and B (out x r) beside each targeted weight: r x (in + out) each."""
    return sum(r * (i + o) for name in targets for i, o in linears.get(name, []))


# -- activations ---------------------------------------------------------------------------

def activation_bytes(shape: dict, batch_size: int, max_length: int, mode: str, method: str = "full",
                     targets=(), lora_r: int = 16, lora_dropout: float = 0.05,
                     gradient_checkpointing: bool = False, fused: bool = False, fp32_attention: bool = False) -> int:
    """Bytes the forward pass saves for backward, for all layers.

    Per layer and per token, with h = hidden size, k = key/value width (kv heads x head dim),
    i = intermediate size, a = heads, s = sequence length (bytes; mode fp32 / mixed / pure16):

    Llama-style layer (RMSNorm, rotary, SDPA attention, gated SiLU MLP):
        fp32:  32h + 8k + 16i   = 4 bytes x (8 hidden-sized tensors: norm inputs and outputs, q and
                                  its rotary copy, attention output...; 2 k/v-sized; 4 MLP-sized:
                                  gate, up, silu(gate), their product)
        mixed: 30h + 4k + 8i    (matmul outputs in 16-bit; norms, rotary and residuals stay fp32)
        pure:  20h + 4k + 8i    (RMSNorm upcasts to fp32 inside)
      SDPA (the default) runs flash/memory-efficient kernels, on CPU too, which keep only a
      log-sum-exp per head (4a bytes) -- no s x s score matrix. ``eager`` attention stores the
      attention probabilities: + 4as bytes (fp32), + 6as (mixed: fp32 softmax plus a 16-bit copy).
      This is Korthikanti et al.'s ``sbh(34 + 5as/h)`` adapted: no dropout, a gated MLP, and the
      5as/h term gone with SDPA.
    GPT-2 layer (LayerNorm, GELU, dropout, attention scores kept):
        fp32: 40h + 20i + 12as;  mixed: 30h + 10i + 12as;  pure: half of fp32.

    LoRA freezes the base weights, so a frozen projection no longer saves its input for a weight
    gradient: minus 2h elements (the norms' outputs), and minus h + i more when the MLP is not
    adapted. Each adapter saves its r-wide ``A`` output, and with dropout > 0 its dropped-out input
    (about 7 bytes per input feature in fp32, 4 in mixed precision) -- so LoRA with dropout can save
    *more* activations than full fine-tuning: its saving is in gradients and optimizer state.

    ``fused``: the training engine's own layers (:mod:`tunelab.core.fused`'s RMSNorm and SwiGLU, for the
    architectures in ``tunelab.core.fused.FUSED_MODEL_TYPES``) keep less: fp32 24h + 8k + 12i; mixed 16h + 4k +
    6i, or 22h + 8k + 6i with ``fp32_attention`` (bf16 on a CPU, where attention runs in fp32). These
    coefficients were counted the same way (bytes saved per token and layer, fitted over four shapes
    with residuals under 2 bytes).

    Gradient checkpointing keeps only each layer's input (h x 4 bytes per token, the fp32 residual
    stream) and recomputes one layer at a time in backward: L x 4h + one layer's activations.
    """
    h, k, i, a, s = shape["hidden"], shape["kv"], shape["intermediate"], shape["heads"], max_length
    tokens, layers = batch_size * max_length, shape["layers"]
    element = {"fp32": 4, "mixed": 2, "pure": 2}[mode]
    if shape["model_type"] in GPT2_LIKE:
        per = {"fp32": 40 * h + 20 * i, "mixed": 30 * h + 10 * i, "pure": 20 * h + 10 * i}[mode]
        per += 12 * a * s  # scores, probabilities, dropped-out probabilities
    else:
        if fused and mode != "pure":
            # core.fused's RMSNorm and SwiGLU (counted as above): fp32 24h + 8k + 12i; mixed 16h + 4k + 6i,
            # or 22h + 8k + 6i where attention runs in fp32 (bf16 on a CPU: q, k, v and its output in fp32)
            per = 24 * h + 8 * k + 12 * i if mode == "fp32" else (22 * h + 8 * k if fp32_attention else 16 * h + 4 * k) + 6 * i
        else:
            per = {"fp32": 32 * h + 8 * k + 16 * i, "mixed": 30 * h + 4 * k + 8 * i, "pure": 20 * h + 4 * k + 8 * i}[mode]
        per += 4 * a if shape["attention"] != "eager" else (4 if mode == "fp32" else 6) * a * s
    if method == "lora":
        mlp_adapted = any(t in targets for t in ("down_proj", "fc2", "w2", "mlp.c_proj", "dense_4h_to_h"))
        per -= {"fp32": 8, "mixed": 6, "pure": 4}[mode] * h  # frozen norm weights: their outputs are not saved
        if not mlp_adapted:
            per -= {"fp32": 4, "mixed": 4, "pure": 2}[mode] * (h + i)
        fan_ins = [fi for name, shapes in shape.get("linears", {}).items() if name in targets for fi, _ in shapes]
        per += sum(lora_r * element + (7 if mode == "fp32" else 4) * fi * (lora_dropout > 0) for fi in fan_ins) // max(layers, 1)
    per_layer = per * tokens
    if gradient_checkpointing:
        return int(layers * 4 * h * tokens + per_layer)
    return int(layers * per_layer)


def logits_bytes(shape: dict, tokens: int, mode: str, method: str = "full", chunked: bool = False,
                 chunk_elements: int = 2**25) -> int:
    """Bytes of the loss's output-layer work at its peak.

    transformers' loss (``chunked=False``): tokens x vocabulary fp32 logits, the saved log-softmax and
    (under autocast) the 16-bit logits, alive at the end of the forward pass; backward adds the
    gradient of each, one after the other: tokens x vocab x (12, + 2 in mixed precision).

    The engine's loss (``tunelab.core.train.linear_cross_entropy``, ``chunked=True``) makes the logits a chunk
    of rows at a time and turns each into its gradient at once: one chunk's logits (the matmul's output,
    the fp32 log-softmax and the 16-bit gradient), the output layer's 16-bit weight copy, and the
    gradient of the hidden states (fp32) kept for backward. Every position is
    counted as trained: an upper bound when prompts are masked.
    """
    h, vocab = shape["hidden"], shape["vocab"]
    if not chunked:
        return tokens * vocab * (4 * 3 + (2 if mode == "mixed" else 0))
    element = 4 if mode == "fp32" else 2
    rows = min(tokens, max(1, chunk_elements // vocab))
    chunk = rows * vocab * (4 + 2 * element)
    weight = vocab * h * (2 if mode == "mixed" else 0)  # its fp32 gradient is the embedding gradient, counted apart
    return int(chunk + weight + tokens * h * 4)


# -- the estimate --------------------------------------------------------------------------

def _mode(precision: str, master_weights: bool) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (or 'auto'), got {precision!r}")
    return "fp32" if precision == "fp32" else ("mixed" if master_weights else "pure")


def estimate(model_or_config, method: str = "full", precision: str = "fp32", batch_size: int = 4,
             max_length: int = 256, gradient_checkpointing: bool = False, lora_r: int = 16,
             lora_target_modules=None, optimizer: str = "adamw", lora_dropout: float = 0.05,
             master_weights: bool = True, device_type: str | None = None, workers: int = 1,
             engine: bool = True) -> dict:
    """Estimate training memory in bytes, from a config alone (a model, its ``.config``, or a name).

    Returns ``weights``, ``gradients``, ``optimizer``, ``activations``, ``logits``, ``total`` (the
    peak; see the module docstring), ``parameters``, ``trainable_parameters`` and the inputs.
    ``master_weights=True`` is mixed precision as accelerate does it (fp32 weights as the master
    copy, 16-bit maths); ``False`` is pure 16-bit training. Ignored for fp32.

    ``engine=True`` estimates the step TuneLab's engine runs (``tunelab.core.train``) on ``device_type``
    (default: where this machine trains, ``tunelab.core.machine.device``): the fused norms and MLPs, attention
    in fp32 for bf16 on a CPU, and the loss's logits a chunk at a time at the trained positions (one
    process; a ``workers`` group's DDP runs the model's own loss over full logits). ``engine=False``
    estimates transformers' own layers and loss, as a plain Trainer runs them.
    """
    if method not in ("full", "lora"):
        raise ValueError(f"method must be 'full' or 'lora', got {method!r}")
    if optimizer not in ("adamw", "sgd"):
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")
    if precision == "auto":  # explicit values stay: a CPU machine may plan a GPU's fp16 run
        precision = resolve_precision(precision)
    mode = _mode(precision, master_weights)
    config = _config(model_or_config)
    shape = _shape(config)
    params, matmul, linears = _linear_shapes(config)
    targets = list(lora_target_modules or default_lora_targets(shape["model_type"]))
    if method == "lora":
        # peft matches a target against the end of a module's name; here, against the last part.
        missing = [t for t in targets if t.rsplit(".", 1)[-1] not in linears]
        if missing:
            raise ValueError(f"LoRA target module(s) {', '.join(missing)} not in this model; "
                             f"its linear layers are: {', '.join(sorted(linears))}")
        targets = [t.rsplit(".", 1)[-1] for t in targets]
        trainable = lora_parameters(linears, targets, lora_r)
    else:
        trainable = params
    shape["linears"] = linears

    master = 4 if mode != "pure" else 2
    weights = params * master + (matmul * 2 if mode == "mixed" else 0)  # + autocast's 16-bit copies
    if method == "lora":
        weights += trainable * 4  # adapters are fp32 (peft upcasts them)
    gradients = trainable * (4 if mode != "pure" or method == "lora" else 2)
    states = 0 if optimizer == "sgd" else trainable * (8 if mode != "pure" or method == "lora" else 4)
    device_type = device_type or device().split(":")[0]
    fused = engine and shape["model_type"] in FUSED_MODEL_TYPES
    fp32_attention = fused and precision == "bf16" and device_type == "cpu" and shape["attention"] == "sdpa"
    chunked = engine and workers == 1 and shape["model_type"] in PLAIN_HEAD
    activations = activation_bytes(shape, batch_size, max_length, mode, method, targets, lora_r,
                                   lora_dropout, gradient_checkpointing, fused, fp32_attention)
    logits = logits_bytes(shape, batch_size * max_length, mode, method, chunked)

    # The peak: gradients appear while activations are freed, so not everything is alive at once.
    # During backward: activations + logits + the embedding gradient (the first big one, since
    # the output layer is tied to it). During the optimizer step: all gradients + temporaries.
    embed_grad = shape["vocab"] * shape["hidden"] * 4 if method == "full" else 0
    backward_peak = activations + logits + embed_grad
    step_peak = gradients + (trainable * 4 if optimizer == "adamw" else 0)  # AdamW's per-step temporaries
    total = weights + states + max(backward_peak, step_peak)
    return {"weights": int(weights), "gradients": int(gradients), "optimizer": int(states),
            "activations": int(activations), "logits": int(logits), "total": int(total),
            "parameters": int(params), "trainable_parameters": int(trainable),
            "method": method, "precision": precision, "batch_size": batch_size, "max_length": max_length,
            "gradient_checkpointing": gradient_checkpointing, "lora_r": lora_r,
            "lora_target_modules": targets if method == "lora" else [], "lora_dropout": lora_dropout,
            "optimizer_name": optimizer, "master_weights": master_weights,
            "model_type": shape["model_type"], "config": config.to_dict(), "device_type": device_type,
            "engine": {"fused": fused, "fp32_attention": fp32_attention, "chunked_logits": chunked}}


def estimate_run(cfg) -> dict:
    """The memory a run of ``cfg`` (a :class:`~core.config.RunConfig`) needs at its peak: :func:`estimate`
    with every setting of the run that changes it (method, precision as the run resolves it here, batch,
    length, checkpointing, the LoRA rank, targets and dropout).

    The one owner of "what a run needs": the Memory page, the queue's admission and the CLI all ask here.
    """
    return estimate(cfg.model, method=cfg.method, precision=resolve_precision(cfg.precision),
                    batch_size=cfg.batch_size, max_length=cfg.max_length,
                    gradient_checkpointing=cfg.gradient_checkpointing, lora_r=cfg.lora.r,
                    lora_target_modules=cfg.lora.target_modules or None, lora_dropout=cfg.lora.dropout,
                    workers=cfg.workers)


def verdict(total_bytes: int, available_bytes: int) -> str:
    """``fits`` below 75% of what is available, ``tight`` up to 100%, else ``won't fit``.

    Why 75%: the allocator's fragmentation, the CUDA context (~0.5 GiB) or the rest of the
    process (Python, tokenizer, data) need room the estimate does not count.
    """
    if total_bytes > available_bytes:
        return "won't fit"
    return "tight" if total_bytes > 0.75 * available_bytes else "fits"


def oom_advice(estimate_dict: dict, available_bytes: int) -> list[str]:
    """The out-of-memory ladder, in the order to try it, each step with what it saves *here*.

    1. smaller batch (keep the effective batch with grad_accum), 2. shorter max_length,
    3. gradient checkpointing, 4. LoRA, 5. lower precision. Each saving is computed by
    re-estimating with that one change. Returns [] when the estimate already fits.
    """
    e = estimate_dict
    if e["total"] <= 0.75 * available_bytes:
        return []
    keys = ("method", "precision", "batch_size", "max_length", "gradient_checkpointing", "lora_r",
            "lora_target_modules", "lora_dropout", "master_weights")
    base = {k: e[k] for k in keys}
    base["optimizer"] = e["optimizer_name"]

    def saving(**change) -> int:
        return e["total"] - estimate(e["config"], **{**base, **change})["total"]

    advice = []
    b = e["batch_size"]
    if b > 1:
        nb = max(1, b // 2)
        advice.append(f"Halve the batch size to {nb} and set grad_accum to {b // nb}x yours, so the effective "
                      f"batch stays the same: saves {fmt_bytes(saving(batch_size=nb))}.")
    if e["max_length"] > 64:
        nl = max(64, e["max_length"] // 2)
        advice.append(f"Cut max_length to {nl} tokens (longer examples get truncated): "
                      f"saves {fmt_bytes(saving(max_length=nl))}.")
    if not e["gradient_checkpointing"]:
        advice.append("Turn on gradient checkpointing (recompute activations in backward, ~30% slower): "
                      f"saves {fmt_bytes(saving(gradient_checkpointing=True))}.")
    if e["method"] == "full":
        advice.append("Train LoRA adapters instead of every weight (no gradients or optimizer state for the "
                      f"frozen base): saves {fmt_bytes(saving(method='lora', lora_target_modules=None))}.")
    if e["precision"] == "fp32":
        s = saving(precision="bf16")
        if s > 0:
            advice.append(f"Use bf16 mixed precision on a GPU that supports it (fp16 otherwise): saves {fmt_bytes(s)}.")
        s = saving(precision="bf16", master_weights=False)
        if s > 0:
            advice.append(f"Or load the model in bf16 and train it in pure bf16 (no fp32 master copy; small updates "
                          f"can get lost): saves {fmt_bytes(s)}.")
    return [line for line in advice if "saves -" not in line and "saves 0 B" not in line]
