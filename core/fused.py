"""Leaner versions of a decoder layer's small operations, with the same maths: :func:`fuse`.

A small model's training step on a CPU spends much of its memory, and a good share of its
time, outside the matrix multiplies: on the tensors the element-wise operations keep for
backward. Three changes, each made only where it is proven to compute what the model did:

- **RMSNorm** as one autograd function that keeps its input and ``1/rms`` (transformers'
  version keeps three tensors). Under autocast the decoder layers' two norms return the
  16-bit tensor the next projections would each have cast it to anyway, so q, k and v
  (and gate and up) share one copy instead of keeping one each.
- **SwiGLU** (``silu(gate) * up``) as one function that keeps ``gate`` and ``up`` and
  recomputes the sigmoid in backward (instead of keeping ``silu(gate)`` as well).
- **Attention on a CPU under bf16 autocast** runs in fp32: torch's CPU flash-attention
  backward is about three times slower in bf16 than in fp32 on the same shapes
  (``python bench/levers.py`` shows the step with and without).

A module is changed only if its class is one whose maths is known (:data:`KNOWN_NORMS`,
:data:`KNOWN_MLPS`: Llama, Mistral, Qwen2/3, SmolLM3, Phi-3), its forward takes the one input
and nothing else, and a probe on a random input gives the same output as its own forward; a
probe that fails leaves the module as it is. Other architectures train unchanged. The weights
and ``save_pretrained`` are untouched: only how the forward and backward run. This is the
approach of Liger Kernel's fused RMSNorm and SwiGLU, in plain PyTorch.

One difference in rounding: under autocast, the gradients the projections send back to their
shared 16-bit input are summed in 16 bits (each projection's own cast summed them in fp32); the
tests hold the fused model's loss and gradients to the plain model's within bf16's precision.
"""

from __future__ import annotations

import functools
import types

FP32_ATTENTION = "tunelab_fp32_sdpa"
LAYER_NORMS = ("input_layernorm", "post_attention_layernorm")  # in these classes each feeds projections only
KNOWN_NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "SmolLM3RMSNorm", "Phi3RMSNorm"}
KNOWN_MLPS = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "SmolLM3MLP"}
# the architectures whose norms and MLPs are the classes above: the memory estimate models them fused
FUSED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "smollm3")


def fuse(model, precision: str, device_type: str | None = None) -> list[str]:
    """Fuse ``model``'s norms and SwiGLU MLPs in place; returns what changed, e.g. ``["rmsnorm x61", ...]``.

    ``precision`` is the resolved one (fp32, bf16 or fp16) and ``device_type`` where the model will
    train (default: where its weights are now): fp32 attention is chosen for bf16 on a CPU only.
    """
    import torch

    done = {"rmsnorm": 0, "swiglu": 0}
    with torch.random.fork_rng(devices=[]):  # a probe through LoRA dropout must not move the training RNG
        changed = _fuse_modules(model, done)
    device_type = device_type or next(model.parameters()).device.type
    if precision == "bf16" and device_type == "cpu" and _uses_sdpa(model):
        _register_fp32_attention()
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.set_attn_implementation(FP32_ATTENTION)
        changed.append("attention in fp32")
    return changed


def _fuse_modules(model, done: dict) -> list[str]:
    for name, module in model.named_modules():
        if _is_rmsnorm(module):
            module.forward = types.MethodType(
                functools.partial(_rmsnorm_forward, cast=name.rsplit(".", 1)[-1] in LAYER_NORMS), module)
            done["rmsnorm"] += 1
        elif _is_swiglu(module):
            module.forward = types.MethodType(_swiglu_mlp_forward, module)
            done["swiglu"] += 1
    return [f"{k} x{v}" for k, v in done.items() if v]


def _one_input(module) -> bool:
    """Whether the module's forward takes exactly one argument (a gated norm's ``gate`` is a second)."""
    import inspect

    try:
        params = list(inspect.signature(type(module).forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return False
    return len(params) == 1 and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD)


# -- RMSNorm -------------------------------------------------------------------------------------
def _rmsnorm_forward(self, hidden_states, cast: bool = False):
    import torch

    device = hidden_states.device.type
    out_dtype = torch.get_autocast_dtype(device) if cast and torch.is_autocast_enabled(device) else None
    return _rmsnorm_class().apply(hidden_states, self.weight, self.variance_epsilon, out_dtype)


@functools.cache  # defined on first use: importing this module must not import torch
def _rmsnorm_class():
    import torch

    class RMSNorm(torch.autograd.Function):
        """``weight * (x / rms(x))``, the normalisation in fp32, as transformers' Llama does it."""

        @staticmethod
        def forward(ctx, x, weight, eps, out_dtype):
            with torch.autocast(x.device.type, enabled=False):
                xf = _at_least_fp32(x)
                rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
                out = weight * (xf * rstd).to(x.dtype)
            ctx.save_for_backward(x, weight, rstd)
            return out if out_dtype is None else out.to(out_dtype)

        @staticmethod
        def backward(ctx, grad):
            x, weight, rstd = ctx.saved_tensors
            g, n = _at_least_fp32(grad), _at_least_fp32(x) * rstd
            grad_w = None
            if ctx.needs_input_grad[1]:
                grad_w = (g * n).reshape(-1, n.shape[-1]).sum(0).to(weight.dtype)
            gn = g * _at_least_fp32(weight)
            grad_x = rstd * (gn - n * (gn * n).mean(-1, keepdim=True))
            return grad_x.to(x.dtype), grad_w, None, None

    return RMSNorm


def _is_rmsnorm(module) -> bool:
    """An RMSNorm computing ``weight * x / rms(x)`` (checked on a probe)."""
    import torch

    weight, eps = getattr(module, "weight", None), getattr(module, "variance_epsilon", None)
    if type(module).__name__ not in KNOWN_NORMS or not _one_input(module):
        return False
    if not isinstance(weight, torch.nn.Parameter) or weight.dim() != 1 or not isinstance(eps, float):
        return False
    try:
        probe = _probe(weight, weight.shape[0])
        with torch.no_grad():
            want = module(probe)
            got = _rmsnorm_class().apply(probe, weight, eps, None)
        return want.shape == got.shape and want.dtype == got.dtype and torch.allclose(want, got, rtol=1e-4, atol=1e-5)
    except Exception:  # noqa: BLE001 - a module the probe cannot run is left as it is
        return False


# -- SwiGLU --------------------------------------------------------------------------------------
def _swiglu_mlp_forward(self, x):
    return self.down_proj(_swiglu_class().apply(self.gate_proj(x), self.up_proj(x)))


@functools.cache
def _swiglu_class():
    import torch
    import torch.nn.functional as F

    class SwiGLU(torch.autograd.Function):
        """``silu(gate) * up``; backward recomputes ``sigmoid(gate)`` rather than keeping ``silu(gate)``."""

        @staticmethod
        def forward(ctx, gate, up):
            ctx.save_for_backward(gate, up)
            return F.silu(gate) * up

        @staticmethod
        def backward(ctx, grad):
            gate, up = ctx.saved_tensors
            grad_up = grad * F.silu(gate)
            # silu's own backward kernel: d silu(x) / dx = s + x s (1 - s), s = sigmoid(x), in one pass
            grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
            return grad_gate, grad_up

    return SwiGLU


def _is_swiglu(module) -> bool:
    """A gated MLP ``down(silu(gate(x)) * up(x))`` (checked on a probe)."""
    import torch

    if type(module).__name__ not in KNOWN_MLPS or not _one_input(module):
        return False
    if not all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return False
    try:
        weight = next(module.parameters())
        probe = _probe(weight, module.gate_proj.in_features)
        with torch.no_grad():
            if not torch.allclose(module.act_fn(probe), torch.nn.functional.silu(probe)):
                return False  # another activation (GELU, ...)
            want, got = module(probe), _swiglu_mlp_forward(module, probe)
        return torch.allclose(want, got, rtol=1e-4, atol=1e-5)
    except Exception:  # noqa: BLE001 - a module the probe cannot run is left as it is
        return False


def _at_least_fp32(t):
    """``t`` in fp32 if it is in 16 bits (fp64 stays fp64)."""
    import torch

    return t.to(torch.promote_types(t.dtype, torch.float32))


def _probe(like, width: int):
    """A random (2, 3, width) input from a generator of its own: the training RNG is not consumed."""
    import torch

    generator = torch.Generator(like.device).manual_seed(0)
    return torch.randn(2, 3, width, generator=generator, device=like.device).to(like.dtype)


# -- attention -----------------------------------------------------------------------------------
def _uses_sdpa(model) -> bool:
    return getattr(model.config, "_attn_implementation", None) in ("sdpa", FP32_ATTENTION)


@functools.cache
def _register_fp32_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(FP32_ATTENTION, fp32_attention)


def fp32_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                   is_causal=None, **kwargs):
    """transformers' SDPA attention on fp32 copies of q, k and v; the output back in their dtype.

    A training forward (as long as its keys, no cache, no position bias) calls torch's SDPA with
    ``enable_gqa``, so the 3 key/value heads of SmolLM2 are not copied out to its 9 query heads
    (transformers does copy them when there is a padding mask): 9% faster here, and those copies
    are not kept for backward. Anything else goes through transformers' own function.
    """
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    device = query.device.type
    plain = (kwargs.get("position_bias") is None and kwargs.get("cache") is None and kwargs.get("softcap") is None
             and not kwargs.get("output_attentions") and query.shape[2] == key.shape[2] > 1)
    with torch.autocast(device, enabled=False):
        q, k, v = query.float(), key.float(), value.float()
        if not plain:
            out, weights = sdpa_attention_forward(module, q, k, v, attention_mask, dropout=dropout, scaling=scaling,
                                                  is_causal=is_causal, **kwargs)
            return out.to(query.dtype), weights
        causal = attention_mask is None and (is_causal if is_causal is not None else getattr(module, "is_causal", True))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
                                             is_causal=bool(causal), enable_gqa=q.shape[1] != k.shape[1])
    return out.transpose(1, 2).contiguous().to(query.dtype), None
