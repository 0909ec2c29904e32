"""Generation through sampler plugins, and the next-token distributions the Generate lesson draws."""

import copy
import math
from types import SimpleNamespace

import pluggy
import pytest
import torch
from transformers import LogitsProcessor

from tunelab.core import generate as gen
from tunelab.core.errors import UserError
from tunelab.core.registry import PluginError, Registry, validate_contribution

hookimpl = pluggy.HookimplMarker("tunelab")
BUILTIN = ["greedy", "temperature", "top_k", "top_p", "min_p", "beam"]


class EndTurnAfter(LogitsProcessor):
    """Forces the end-of-turn token once ``n`` answer tokens exist: a tiny random model never stops by itself."""

    def __init__(self, n, end_id):
        self.n, self.end_id, self.start = n, end_id, None

    def __call__(self, input_ids, scores):
        if self.start is None:
            self.start = input_ids.shape[1]
        if input_ids.shape[1] - self.start >= self.n:
            scores = torch.full_like(scores, -math.inf)
            scores[:, self.end_id] = 0.0
        return scores


class StopAfterPlugin:
    """A third-party plugin contributing a sampler with its own logits processor."""

    def __init__(self, end_id):
        self.end_id = end_id

    @hookimpl
    def register_samplers(self, register):
        register(SimpleNamespace(
            name="stop_after", description="Greedy, but ends the turn after n tokens.",
            params=[{"name": "n", "type": "int", "default": 3, "min": 1, "max": 50, "help": "answer length"}],
            generation_kwargs=lambda n: {"do_sample": False},
            logits_processors=lambda n: [EndTurnAfter(n, self.end_id)],
        ))


def full(dist_fn, tokenizer, **kw):
    """The distribution over the whole vocabulary (top = vocab size)."""
    return dist_fn(top=len(tokenizer), **kw)


def entropy(probs):
    return -sum(p * math.log(p) for p in probs if p > 0)


# -- the sampler plugins --------------------------------------------------------------------

def test_builtin_samplers_registered_with_documented_params(registry):
    samplers = registry.items("samplers")
    assert set(BUILTIN) <= set(samplers)
    for name in BUILTIN:
        validate_contribution("samplers", samplers[name])
        assert all(len(p["help"]) > 40 for p in samplers[name].params), name


def test_sampler_kwargs(registry):
    kwargs = {n: gen.sampler_settings(n, registry=registry)[0] for n in BUILTIN}
    assert kwargs["greedy"]["do_sample"] is False and kwargs["greedy"]["num_beams"] == 1
    assert kwargs["temperature"]["do_sample"] is True and kwargs["temperature"]["temperature"] == 0.7
    assert kwargs["top_k"]["top_k"] == 40 and kwargs["top_p"]["top_p"] == 0.9 and kwargs["min_p"]["min_p"] == 0.05
    assert kwargs["beam"]["num_beams"] == 4 and kwargs["beam"]["do_sample"] is False
    # transformers' hidden default top_k=50 must not sneak into plain temperature sampling.
    assert kwargs["temperature"]["top_k"] == 0 and kwargs["temperature"]["top_p"] == 1.0
    assert gen.sampler_settings("top_k", {"top_k": "7"}, registry=registry)[0]["top_k"] == 7  # CLI strings coerced


def test_unknown_sampler_or_bad_param_is_a_user_error(tiny, registry):
    model, tokenizer = tiny
    with pytest.raises(UserError, match="unknown sampler 'nucleus'"):
        gen.generate(model, tokenizer, "hi", "nucleus", registry=registry)
    with pytest.raises(UserError, match="out of range"):
        gen.generate(model, tokenizer, "hi", "temperature", {"temperature": 9}, registry=registry)
    with pytest.raises(UserError, match="unknown parameter"):
        gen.generate(model, tokenizer, "hi", "greedy", {"top_k": 3}, registry=registry)


# -- prompts and stopping -------------------------------------------------------------------

def test_build_prompt_ends_with_assistant_header(tokenizer):
    ids = gen.build_prompt(tokenizer, "What is 2+2?", system="Be brief.")
    text = tokenizer.decode(ids[0])
    assert ids.shape[0] == 1
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert text.endswith("What is 2+2?<|im_end|>\n<|im_start|>assistant\n")


def test_stop_ids_and_pad_are_explicit(tiny, registry):
    model, tokenizer = tiny
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    args = gen.generate_arguments(model, tokenizer, "hi", registry=registry)
    assert args["eos_token_id"] == [im_end] and args["pad_token_id"] == tokenizer.pad_token_id
    assert args["attention_mask"].shape == args["input_ids"].shape and bool(args["attention_mask"].all())

    # A base-style tokenizer: EOS is the end of a document, and there is no pad token.
    base_style = copy.deepcopy(tokenizer)
    base_style.eos_token = "<|endoftext|>"
    base_style.pad_token = None
    args = gen.generate_arguments(model, base_style, "hi", registry=registry)
    eos = base_style.convert_tokens_to_ids("<|endoftext|>")
    assert args["eos_token_id"] == [eos, im_end]  # stops at the end of the turn too
    assert args["pad_token_id"] == eos  # pad = eos when there is none; the mask above keeps the prompt intact


def test_pad_equal_to_eos_does_not_hide_prompt_tokens(tiny, registry):
    """With pad = eos = <|im_end|>, the <|im_end|> tokens inside the prompt must still be attended to."""
    model, tokenizer = tiny
    args = gen.generate_arguments(model, tokenizer, "hi", registry=registry)
    assert tokenizer.pad_token_id in args["input_ids"][0].tolist()  # the prompt holds pad = eos ids
    pad_as_mask = (args["input_ids"] != tokenizer.pad_token_id).long()  # what "infer the mask from pad" gives
    with torch.no_grad():
        ours = model(input_ids=args["input_ids"], attention_mask=args["attention_mask"]).logits[0, -1]
        wrong = model(input_ids=args["input_ids"], attention_mask=pad_as_mask).logits[0, -1]
    # The mask matters: so generate_arguments passes the all-ones one explicitly.
    assert bool(args["attention_mask"].all())
    assert not torch.allclose(ours, wrong)


def test_generation_stops_at_end_of_turn_with_a_third_party_sampler(tiny):
    model, tokenizer = tiny
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    registry = Registry(load_external=False, extra_plugins=[(StopAfterPlugin(im_end), "stop_after_plugin")])
    assert registry.owner("samplers", "stop_after") == "stop_after_plugin"

    args = gen.generate_arguments(model, tokenizer, "hi", "stop_after", {"n": 3}, max_new_tokens=40,
                                  registry=registry)
    new = model.generate(**args)[0, args["input_ids"].shape[1]:].tolist()
    assert len(new) == 4 and new[-1] == im_end  # three answer tokens, then the end of turn: no rambling

    answer = gen.generate(model, tokenizer, "hi", "stop_after", {"n": 3}, max_new_tokens=40, registry=registry)
    assert "<|im_end|>" not in answer
    assert answer == tokenizer.decode(new[:3], skip_special_tokens=True)


# -- determinism and streaming --------------------------------------------------------------

def test_greedy_is_deterministic(tiny, registry):
    model, tokenizer = tiny
    a = gen.generate(model, tokenizer, "Tell me a story.", max_new_tokens=8, seed=0, registry=registry)
    b = gen.generate(model, tokenizer, "Tell me a story.", max_new_tokens=8, seed=123, registry=registry)
    assert a == b and a


def test_sampling_is_reproducible_with_a_seed(tiny, registry):
    model, tokenizer = tiny
    run = lambda seed: gen.generate(model, tokenizer, "hi", "temperature", {"temperature": 1.5},  # noqa: E731
                                    max_new_tokens=8, seed=seed, registry=registry)
    assert run(1) == run(1)
    assert len({run(1), run(2), run(3)}) > 1


def test_stream_yields_the_same_text(tiny, registry):
    model, tokenizer = tiny
    whole = gen.generate(model, tokenizer, "hi", max_new_tokens=8, registry=registry)
    pieces = list(gen.generate(model, tokenizer, "hi", max_new_tokens=8, stream=True, registry=registry))
    assert "".join(pieces) == whole
    beam = gen.generate(model, tokenizer, "hi", "beam", {"num_beams": 2}, max_new_tokens=4, registry=registry)
    assert list(gen.generate(model, tokenizer, "hi", "beam", {"num_beams": 2}, max_new_tokens=4, stream=True,
                             registry=registry)) == [beam]


def test_stream_reraises_errors_from_the_generation_thread(tiny):
    model, tokenizer = tiny

    class Boom(LogitsProcessor):
        def __call__(self, input_ids, scores):
            raise RuntimeError("boom")

    class Plugin:
        @hookimpl
        def register_samplers(self, register):
            register(SimpleNamespace(name="boom", description="raises", params=[],
                                     generation_kwargs=lambda: {}, logits_processors=lambda: [Boom()]))

    registry = Registry(load_external=False, extra_plugins=[(Plugin(), "boom_plugin")])
    # raised inside transformers, in the generation thread: re-raised in the reader's, naming the plugin
    with pytest.raises(PluginError, match=r"plugin 'boom_plugin' failed in its sampler 'boom' .*RuntimeError: boom"):
        list(gen.generate(model, tokenizer, "hi", "boom", max_new_tokens=4, stream=True, registry=registry))


# -- next-token distributions ---------------------------------------------------------------

def test_distribution_shape_and_sums(tiny, registry):
    model, tokenizer = tiny
    d = gen.next_token_distribution(model, tokenizer, "hi", "temperature", top=10, registry=registry)
    assert len(d["tokens"]) == len(d["ids"]) == len(d["before"]) == len(d["after"]) == 10
    assert d["before"] == sorted(d["before"], reverse=True)
    assert sum(d["before"]) + d["other_before"] == pytest.approx(1.0, abs=1e-5)
    assert sum(d["after"]) + d["other_after"] == pytest.approx(1.0, abs=1e-5)
    assert d["kept"] == len(tokenizer)  # temperature cuts nothing


def test_distribution_with_a_partial_answer(tiny, registry):
    model, tokenizer = tiny
    a = gen.next_token_distribution(model, tokenizer, "hi", registry=registry)
    b = gen.next_token_distribution(model, tokenizer, "hi", prefix="Hello", registry=registry)
    assert a["before"] != b["before"]


def test_greedy_after_is_one_hot_on_the_argmax(tiny, registry):
    model, tokenizer = tiny
    d = gen.next_token_distribution(model, tokenizer, "hi", "greedy", registry=registry)
    assert d["greedy"] and d["after"][0] == 1.0 and sum(d["after"]) == 1.0 and d["kept"] == 1


def test_beam_after_is_the_plain_distribution(tiny, registry):
    model, tokenizer = tiny
    d = gen.next_token_distribution(model, tokenizer, "hi", "beam", registry=registry)
    assert d["after"] == pytest.approx(d["before"], rel=1e-5)


def test_top_k_keeps_exactly_k(tiny, registry):
    model, tokenizer = tiny
    d = gen.next_token_distribution(model, tokenizer, "hi", "top_k", {"top_k": 5}, registry=registry)
    assert [p > 0 for p in d["after"]] == [True] * 5 + [False] * 10
    assert d["kept"] == 5 and sum(d["after"]) == pytest.approx(1.0, abs=1e-5)


def test_top_p_keeps_the_smallest_set_reaching_p(tiny, registry):
    model, tokenizer = tiny
    p = 0.5
    d = full(lambda **kw: gen.next_token_distribution(model, tokenizer, "hi", "top_p", {"top_p": p},
                                                      registry=registry, **kw), tokenizer)
    kept = d["kept"]
    assert 1 < kept < len(tokenizer)
    assert all(a > 0 for a in d["after"][:kept]) and not any(d["after"][kept:])
    # A token survives when the tokens more likely than it hold less than p of the probability.
    above = 0.0
    for prob in d["before"][:kept]:
        assert above < p + 1e-4
        above += prob
    assert above >= p - 1e-4


def test_min_p_cuts_relative_to_the_favourite(tiny, registry):
    model, tokenizer = tiny
    d = full(lambda **kw: gen.next_token_distribution(model, tokenizer, "hi", "min_p", {"min_p": 0.9},
                                                      registry=registry, **kw), tokenizer)
    best = d["before"][0]
    for before, after in zip(d["before"], d["after"]):
        assert (after > 0) == (before >= 0.9 * best - 1e-9)


def test_temperature_sharpens_and_flattens(tiny, registry):
    model, tokenizer = tiny

    def after(t):
        d = full(lambda **kw: gen.next_token_distribution(model, tokenizer, "hi", "temperature",
                                                          {"temperature": t}, registry=registry, **kw), tokenizer)
        return d

    cold, hot = after(0.5), after(1.5)
    assert entropy(cold["after"]) < entropy(cold["before"]) < entropy(hot["after"])
    assert cold["after"][0] > cold["before"][0] > hot["after"][0]


@pytest.mark.parametrize("sampler,params", [("top_k", {"top_k": 5, "temperature": 0.7}),
                                            ("top_p", {"top_p": 0.3, "repetition_penalty": 1.3}),
                                            ("min_p", {"min_p": 0.5, "temperature": 0.3})])
def test_the_chart_shows_what_generate_samples_from(tiny, registry, sampler, params):
    """The lesson's 'after' bars equal the scores model.generate really draws the first token from."""
    model, tokenizer = tiny
    d = gen.next_token_distribution(model, tokenizer, "hi", sampler, params, registry=registry)
    args = gen.generate_arguments(model, tokenizer, "hi", sampler, params, max_new_tokens=1, registry=registry)
    out = model.generate(**args, output_scores=True, return_dict_in_generate=True)
    real = out.scores[0].float().softmax(-1)[0]
    assert real[d["ids"]].tolist() == pytest.approx(d["after"], abs=1e-6)


def test_readable_tokens(tiny, registry):
    assert gen.readable_token(" the\n") == "␣the⏎"
    model, tokenizer = tiny
    d = gen.next_token_distribution(model, tokenizer, "hi", top=50, registry=registry)
    assert not any(" " in t or "\n" in t for t in d["tokens"])
