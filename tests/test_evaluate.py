"""Evaluator plugins on hand-made samples, perplexity on a tiny model, and base-vs-tuned reports."""

import json
import math
from types import SimpleNamespace

import pluggy
import pytest
import torch

from tunelab.core import evaluate as ev
from tunelab.core.errors import UserError
from tunelab.core.registry import Registry, validate_contribution
from tunelab.plugins import evaluators as builtin

hookimpl = pluggy.HookimplMarker("tunelab")
BUILTIN = ["perplexity", "exact_match", "rouge_l", "keyword_coverage"]


def sample(answer, reference, prompt="Question?"):
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reference}]
    return {"prompt": messages[:1], "reference": reference, "answer": answer, "messages": messages}


def run(registry, name, samples, context=None, **params):
    return registry.get("evaluators", name).evaluate(samples, context or {}, **params)


class BrokenPlugin:
    @hookimpl
    def register_evaluators(self, register):
        def evaluate(samples, context):
            raise ZeroDivisionError("no answers to divide by")

        register(SimpleNamespace(name="broken", description="always raises", params=[], higher_is_better=True,
                                 evaluate=evaluate))


# -- the plugins ----------------------------------------------------------------------------

def test_builtin_evaluators_registered(registry):
    evaluators = registry.items("evaluators")
    assert set(BUILTIN) <= set(evaluators)
    for name in BUILTIN:
        validate_contribution("evaluators", evaluators[name])
        assert "caveat" in evaluators[name].description.lower() or name == "exact_match"
    assert evaluators["perplexity"].higher_is_better is False
    assert all(evaluators[n].higher_is_better for n in BUILTIN[1:])


def test_exact_match_normalises_case_punctuation_and_spaces(registry):
    out = run(registry, "exact_match", [sample("  Paris.", "paris"), sample("Paris is", "Paris"),
                                        sample("It's 42!", "its 42")])
    assert out["per_sample"] == [1.0, 0.0, 0.0]  # "it's" -> "it s", not "its": punctuation splits words
    assert out["exact_match"] == pytest.approx(1 / 3)


def test_rouge_l_known_values(registry):
    assert builtin.lcs_length("a b c d e".split(), "a c e x".split()) == 3
    assert builtin.rouge_l_f1("The cat sat.", "the cat sat") == 1.0
    assert builtin.rouge_l_f1("dogs bark loudly", "the cat sat") == 0.0
    # LCS of [the cat on a mat] and [the cat sat on the mat] is "the cat on mat": 4 words.
    # precision 4/5, recall 4/6, F1 = 2 * 0.8 * 0.667 / 1.467 = 8/11.
    assert builtin.rouge_l_f1("the cat on a mat", "the cat sat on the mat") == pytest.approx(8 / 11)
    assert builtin.rouge_l_f1("", "") == 1.0 and builtin.rouge_l_f1("", "word") == 0.0
    out = run(registry, "rouge_l", [sample("a b", "a b"), sample("x", "y")])
    assert out == {"rouge_l": 0.5, "per_sample": [1.0, 0.0]}


def test_keyword_coverage(registry):
    reference = "The mitochondria produces energy for the cell"
    assert builtin.keywords(reference) == ["mitochondria", "produces", "energy", "cell"]
    s = sample("Energy comes from the mitochondria.", reference)
    assert run(registry, "keyword_coverage", [s]) == {"keyword_coverage": 0.5, "per_sample": [0.5]}
    assert run(registry, "keyword_coverage", [s], max_keywords=2)["keyword_coverage"] == 0.5  # 1 of 2
    assert run(registry, "keyword_coverage", [s], max_keywords=1)["keyword_coverage"] == 1.0
    # A reference with no content words cannot be scored: NaN, left out of the average.
    out = run(registry, "keyword_coverage", [s, sample("yes", "Yes, it is.")])
    assert out["keyword_coverage"] == 0.5 and math.isnan(out["per_sample"][1])


def simple_encode(tokenizer):
    """Prompt tokens masked (-100), answer tokens and the end of turn trained: as core.data does."""

    def encode(messages):
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, return_dict=True)
        answer = tokenizer(messages[-1]["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        ids = prompt["input_ids"] + answer
        return {"input_ids": ids, "labels": [-100] * len(prompt["input_ids"]) + answer}

    return encode


def test_perplexity_is_exp_of_the_token_weighted_mean_loss(tiny, registry):
    model, tokenizer = tiny
    samples = [sample("", "Paris is the capital of France."), sample("", "Four.", prompt="What is 2+2?")]
    encode = simple_encode(tokenizer)
    out = run(registry, "perplexity", samples, {"model": model, "tokenizer": tokenizer, "max_length": 512,
                                                "encode": encode})
    # Independently: transformers' own masked loss (mean over answer tokens) per sample, weighted by tokens.
    losses, counts = [], []
    for s in samples:
        enc = encode(s["messages"])
        with torch.no_grad():
            losses.append(model(input_ids=torch.tensor([enc["input_ids"]]),
                                labels=torch.tensor([enc["labels"]])).loss.item())
        counts.append(sum(label != -100 for label in enc["labels"]))
    expected = math.exp(sum(l * c for l, c in zip(losses, counts)) / sum(counts))
    assert math.isfinite(out["perplexity"]) and out["perplexity"] > 1
    assert out["perplexity"] == pytest.approx(expected, rel=1e-4)
    assert out["per_sample"] == pytest.approx([math.exp(l) for l in losses], rel=1e-4)
    assert out["loss"] == pytest.approx(math.log(expected), rel=1e-4)


def test_perplexity_without_an_encoder_says_so(registry):
    with pytest.raises(ValueError, match="encode"):
        run(registry, "perplexity", [sample("", "x")], {"model": torch.nn.Linear(1, 1)})


# -- evaluate_model, compare, reports -------------------------------------------------------

def test_evaluate_model_scores_answers_and_survives_a_broken_evaluator(tiny):
    model, tokenizer = tiny
    registry = Registry(load_external=False, extra_plugins=[(BrokenPlugin(), "broken_plugin")])
    samples = [sample(None, "Paris is the capital of France."), sample(None, "Four.", prompt="What is 2+2?")]
    calls = []
    report = ev.evaluate_model(model, tokenizer, samples, evaluators=BUILTIN + ["broken"], max_new_tokens=4,
                               batch_size=1, progress=lambda i, n: calls.append((i, n)), registry=registry)
    assert calls == [(1, 2), (2, 2)]
    assert report["metrics"]["broken"]["error"].startswith(
        "plugin 'broken_plugin' failed in its evaluator 'broken' (evaluate): ZeroDivisionError: no answers to divide by")
    assert report["metrics"]["perplexity"]["perplexity"] > 1  # core.data's encoder, masked as in training
    assert 0 <= report["metrics"]["rouge_l"]["rouge_l"] <= 1
    assert report["evaluators"]["perplexity"]["higher_is_better"] is False
    first = report["samples"][0]
    assert first["question"] == "Question?" and first["reference"] == "Paris is the capital of France."
    assert isinstance(first["answer"], str) and set(first["scores"]) == set(BUILTIN)
    assert report["settings"]["sampler"] == "greedy"


def test_unknown_evaluator_or_bad_param_is_a_user_error(tiny, registry):
    model, tokenizer = tiny
    with pytest.raises(UserError, match="unknown evaluator 'bleu'"):
        ev.evaluate_model(model, tokenizer, [sample(None, "x")], evaluators=["bleu"], registry=registry)
    with pytest.raises(UserError, match="max_keywords"):
        ev.evaluate_model(model, tokenizer, [sample(None, "x")], evaluators=["keyword_coverage"],
                          evaluator_params={"keyword_coverage": {"max_keywords": 0}}, registry=registry)


def test_compare_and_report_round_trip(tiny, registry, tmp_path):
    model, tokenizer = tiny
    samples = [sample(None, "Paris."), sample(None, "Yes, it is.")]
    calls = []
    result = ev.compare((model, tokenizer), (model, tokenizer), samples, evaluators=["rouge_l", "keyword_coverage"],
                        max_new_tokens=3, batch_size=1, progress=lambda i, n: calls.append((i, n)),
                        registry=registry)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [s["answer"] for s in result["base"]["samples"]] == [s["answer"] for s in result["tuned"]["samples"]]
    assert result["metrics"]["rouge_l"]["delta"] == {"rouge_l": 0.0}
    assert result["metrics"]["rouge_l"]["base"] == result["base"]["metrics"]["rouge_l"]

    path = ev.save_report(tmp_path / "run", result)
    assert path == tmp_path / "run" / "eval" / "report.json"
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    loaded = ev.load_report(tmp_path / "run")
    assert loaded["base"]["samples"][1]["scores"]["keyword_coverage"] is None  # NaN written as null
    assert loaded["tuned"]["metrics"] == json.loads(json.dumps(ev._finite(result["tuned"]["metrics"])))
    assert ev.load_report(tmp_path / "nothing") is None


def test_load_samples_splits_prompt_and_reference(tmp_path, registry):
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "4"}]},
            {"messages": [{"role": "user", "content": "Capital of France?"},
                          {"role": "assistant", "content": "Paris"}]}]
    path = tmp_path / "held_out.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    samples = ev.load_samples(path, registry=registry)
    assert len(samples) == 2
    assert [m["content"] for m in samples[0]["prompt"]] == ["Be brief.", "Hi", "Hello!", "2+2?"]
    assert samples[0]["reference"] == "4" and samples[0]["messages"] == rows[0]["messages"]
    assert len(ev.load_samples(path, limit=1, registry=registry)) == 1


def test_load_samples_refuses_raw_text(tmp_path, registry):
    path = tmp_path / "notes.txt"
    path.write_text("Just some prose.\n\nAnother paragraph.")
    with pytest.raises(UserError, match="assistant answer"):
        ev.load_samples(path, registry=registry)


def test_evaluate_run_compares_base_and_final_and_saves_the_report(tiny_model, tmp_path):
    import shutil

    from tunelab.core import runs
    from tunelab.core.config import RunConfig

    data = tmp_path / "held_out.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                       {"role": "assistant", "content": a}]})
                              for q, a in [("Capital of France?", "Paris"), ("2+2?", "Four")]))
    cfg = RunConfig.from_dict({"model": tiny_model, "data": {"path": str(data)}, "max_length": 64})
    run_dir = runs.create_run(cfg, run_dir=tmp_path / "run")
    with pytest.raises(UserError, match="no final/ model yet"):
        ev.evaluate_run(run_dir)
    shutil.copytree(tiny_model, run_dir / "final")
    report = ev.evaluate_run(run_dir, evaluators=["exact_match", "perplexity"], max_new_tokens=3, limit=1)
    assert report["data"] == {"path": str(data), "training_file": True, "samples": 1}
    assert report["metrics"]["perplexity"]["delta"]["perplexity"] == pytest.approx(0.0)  # same weights
    assert ev.load_report(run_dir)["metrics"]["exact_match"]["base"] == report["base"]["metrics"]["exact_match"]


def test_house_style_needs_every_heading_in_order():
    from tunelab.plugins.evaluators import house_style

    good = ("**Definition:** A lever is a rigid bar.\n\n**How it works:** It turns on a pivot.\n\n"
            "**Everyday example:** A seesaw.\n\n**Key terms:** pivot, load, effort")
    missing = "**Definition:** A lever is a bar.\n\n**Key terms:** pivot"
    shuffled = "**How it works:** x\n**Definition:** y\n**Everyday example:** z\n**Key terms:** w"
    samples = [{"answer": a, "reference": ""} for a in (good, missing, shuffled, "")]
    result = house_style(samples, {})
    assert result["per_sample"] == [1.0, 0.0, 0.0, 0.0]
    assert result["house_style"] == 0.25
    assert house_style(samples[1:2], {}, headings="Definition, Key terms")["house_style"] == 1.0


def test_batched_generation_matches_one_prompt_at_a_time(tiny):
    from tunelab.core.generate import generate, generate_batch

    model, tokenizer = tiny
    prompts = ["Hi", "What is the capital of France, and why is it there?", "Explain rain."]
    single = [generate(model, tokenizer, p, max_new_tokens=6) for p in prompts]
    calls = []
    batched = generate_batch(model, tokenizer, prompts, max_new_tokens=6, batch_size=2,
                             progress=lambda i, n: calls.append((i, n)))
    assert batched == single  # left padding and the attention mask change nothing
    assert calls == [(2, 3), (3, 3)]


class AutocastProbe:
    """An evaluator that reports the autocast it was called under."""

    @hookimpl
    def register_evaluators(self, register):
        def evaluate(samples, context):
            on = torch.is_autocast_enabled("cpu")
            seen.append((on, torch.get_autocast_dtype("cpu") if on else None, context["precision"]))
            return {"calls": 1.0}

        register(SimpleNamespace(name="autocast_probe", description="", params=[], higher_is_better=True,
                                 evaluate=evaluate))


seen = []


@pytest.mark.parametrize("precision,autocast", [("fp32", None), ("bf16", torch.bfloat16)])
def test_evaluators_run_under_the_evaluations_precision(tiny, precision, autocast):
    from tunelab.core.machine import resolve_precision

    model, tokenizer = tiny
    registry = Registry(load_external=False, extra_plugins=[(AutocastProbe(), "probe")])
    seen.clear()
    report = ev.evaluate_model(model, tokenizer, [sample(None, "Four.")], evaluators=["autocast_probe", "perplexity"],
                               max_new_tokens=2, registry=registry, precision=precision)
    assert seen == [(autocast is not None, autocast, precision)]
    assert report["settings"]["precision"] == precision
    assert math.isfinite(report["metrics"]["perplexity"]["perplexity"])
    auto = ev.evaluate_model(model, tokenizer, [sample(None, "Four.")], evaluators=["autocast_probe"],
                             max_new_tokens=2, registry=registry)
    assert auto["settings"]["precision"] == resolve_precision("auto", "cpu")
