"""The engine end to end on the real embedded model (SmolLM2-135M), for a handful of steps."""

from pathlib import Path

import pytest

from tunelab.core import evaluate, models, runs, train
from tunelab.core.config import RunConfig
from tunelab.core.generate import generate

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_embedded_model_trains_reopens_and_is_evaluated(tmp_path, embedded_dir):
    cfg = RunConfig.from_dict({
        "model": "embedded", "data": {"path": str(REPO / "data" / "science_tutor_train.alpaca.json"),
                                      "val_fraction": 0.05},
        "max_length": 96, "max_steps": 3, "batch_size": 2, "eval_every": 2, "lr": 1e-4})
    result = train.train(cfg, tmp_path / "run")
    assert result["state"] == "finished", result["error"]
    rows = runs.read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in rows if "eval_loss" in r] == [2, 3]
    assert all(0 < r["loss"] < 10 for r in rows if "loss" in r)  # a pretrained model starts far below ln(49152)
    assert not (tmp_path / "run" / "checkpoints").exists()  # checkpoints go once final/ is saved

    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = tmp_path / "run" / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    answer = generate(model, tokenizer, "What is a lever?", max_new_tokens=12)
    assert answer.strip() and "<|im_end|>" not in answer

    samples = evaluate.load_samples(REPO / "data" / "science_tutor_heldout.alpaca.json", limit=2)
    report = evaluate.compare(models.load_model("embedded"), (model, tokenizer), samples,
                              evaluators=["perplexity", "house_style"], max_new_tokens=8, max_length=96)
    assert report["metrics"]["perplexity"]["base"]["perplexity"] > 1
    assert report["metrics"]["perplexity"]["tuned"]["perplexity"] > 1
