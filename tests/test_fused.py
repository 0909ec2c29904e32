"""core.fused: the leaner norms, MLPs and attention compute what the model computed, gradients included."""

import json

import pytest
import torch

from tunelab.core import fused, models


def _fresh(tiny_model):
    return models.load_model(tiny_model)[0].train()


def _loss_and_grads(model, batch, precision):
    from tunelab.core import train

    model.zero_grad(set_to_none=True)
    with train.Precision(precision, "cpu").autocast():
        loss = model(**batch, use_cache=False).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture
def batch(tokenizer):
    from tunelab.core import data

    examples = [data.encode_messages([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                     tokenizer, 64)
                for q, a in [("Why is the sky blue?", "Rayleigh scattering of sunlight."),
                             ("What is a cell?", "The smallest unit of life, bounded by a membrane; longer.")]]
    return data.collate(examples, tokenizer.pad_token_id)


@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-5), ("bf16", 3e-2)])
def test_fused_model_gives_the_same_loss_and_gradients(tiny_model, batch, precision, tolerance):
    plain, tuned = _fresh(tiny_model), _fresh(tiny_model)
    changed = fused.fuse(tuned, precision)
    assert "rmsnorm x5" in changed and "swiglu x2" in changed  # 2 layers x 2 norms + the final norm
    assert ("attention in fp32" in changed) == (precision == "bf16")
    want_loss, want = _loss_and_grads(plain, batch, precision)
    got_loss, got = _loss_and_grads(tuned, batch, precision)
    assert got_loss == pytest.approx(want_loss, rel=tolerance)
    assert want.keys() == got.keys() and len(got) > 10
    for name in want:
        scale = want[name].abs().max().item() + 1e-6
        assert (got[name] - want[name]).abs().max().item() <= tolerance * scale, name


def test_fused_rmsnorm_and_swiglu_gradients_are_exact_in_fp64():
    rms, glu = fused._rmsnorm_class(), fused._swiglu_class()
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: rms.apply(x, w, 1e-6, None), (x, w))
    gate = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    up = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(glu.apply, (gate, up))


def test_a_norm_with_other_maths_is_left_alone(tiny_model):
    class GemmaLikeRMSNorm(torch.nn.Module):  # Gemma scales by (1 + weight)
        def __init__(self):
            super().__init__()
            self.weight, self.variance_epsilon = torch.nn.Parameter(torch.randn(64)), 1e-6

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon) * (1 + self.weight)

    model = _fresh(tiny_model)
    model.model.norm = GemmaLikeRMSNorm()
    changed = fused.fuse(model, "fp32")
    assert "rmsnorm x4" in changed
    assert "forward" not in vars(model.model.norm)


def test_a_fused_run_saves_a_model_any_transformers_opens(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    model = _fresh(tiny_model)
    fused.fuse(model, "bf16")
    model.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert fused.FP32_ATTENTION not in json.dumps(saved)
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")


def test_fusing_does_not_touch_the_training_random_numbers(tiny_model):
    torch.manual_seed(0)
    fused.fuse(_fresh(tiny_model), "fp32")
    after = torch.rand(1)
    torch.manual_seed(0)
    _fresh(tiny_model)
    assert torch.equal(after, torch.rand(1))


@pytest.mark.parametrize("masked", [True, False])
def test_fp32_attention_is_transformers_sdpa_with_and_without_a_padding_mask(masked):
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True)
    q, k, v = torch.randn(2, 6, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    mask = None
    if masked:  # the second row is padded after 3 tokens
        mask = torch.ones(5, 5, dtype=torch.bool).tril()[None, None].repeat(2, 1, 1, 1)
        mask[1, :, :, 3:] = False
    want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=8 ** -0.5)
    got, _ = fused.fp32_attention(module, q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, scaling=8 ** -0.5)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    ours, _ = fused.fp32_attention(module, q, k, v, mask, scaling=8 ** -0.5)
    assert torch.allclose(ours, want, atol=1e-6)


def test_unknown_gated_or_failing_modules_are_left_alone_and_do_not_crash(tiny_model):
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    class GatedRMSNorm(LlamaRMSNorm):  # Mamba-style: a second input, so not the maths fuse knows
        def forward(self, hidden_states, gate=None):
            return super().forward(hidden_states)

    GatedRMSNorm.__name__ = "LlamaRMSNorm"  # even under a known name

    class BrokenMLP(LlamaMLP):
        def forward(self, x):
            raise RuntimeError("this module cannot run a probe")

    BrokenMLP.__name__ = "LlamaMLP"
    model = _fresh(tiny_model)
    layer = model.model.layers[0]
    layer.input_layernorm = GatedRMSNorm(64)
    layer.mlp = BrokenMLP(model.config)
    changed = fused.fuse(model, "fp32")
    assert "rmsnorm x4" in changed and "swiglu x1" in changed
    assert "forward" not in vars(layer.input_layernorm) and "forward" not in vars(layer.mlp)


def test_attention_follows_the_device_the_model_will_train_on(tiny_model):
    assert "attention in fp32" not in fused.fuse(_fresh(tiny_model), "bf16", device_type="cuda")
    assert "attention in fp32" in fused.fuse(_fresh(tiny_model), "bf16", device_type="cpu")
