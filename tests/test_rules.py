"""The rules the pages used to re-derive, now one function each in core, reached through the facade:
split sizes, changed keys, the plan summary (steps, schedule, time), before/after comparison and
ranking, which data files the dashboard may read, and upload expiry."""

import os
import time

import pytest

from tunelab.core.config import RunConfig, changed_keys, split_sizes
from tunelab.core.backends.local import LocalEngine
from tunelab.core.errors import UserError


@pytest.mark.parametrize("n, fraction, expected", [
    (300, 0.1, (270, 30)), (24, 0.25, (18, 6)), (10, 0.01, (9, 1)),  # at least one when asked for any
    (2, 0.5, (1, 1)), (1, 0.5, (1, 0)), (0, 0.1, (0, 0)), (5, 0.0, (5, 0)), (3, 0.9, (1, 2)),
])
def test_split_sizes(n, fraction, expected):
    assert split_sizes(n, fraction) == expected
    assert RunConfig.from_dict({"data": {"val_fraction": min(fraction, 0.5)}}).split_sizes(n) == \
        split_sizes(n, min(fraction, 0.5))


def test_prepare_splits_as_the_pages_count(chat_file, tokenizer):
    from tunelab.core.data import prepare

    for fraction in (0.1, 0.25, 0.5):
        prepared = prepare(chat_file, tokenizer, 64, val_fraction=fraction)
        assert (len(prepared.train), len(prepared.val)) == split_sizes(24, fraction)


def test_changed_keys_are_dotted_and_only_the_changed_ones():
    cfg = RunConfig.from_dict({"lr": 3e-4, "lora": {"r": 8}, "data": {"params": {"column": "q"}}})
    assert changed_keys(cfg) == {"lr": 3e-4, "lora.r": 8, "data.params": {"column": "q"}}
    assert changed_keys(RunConfig()) == {}


def test_plan_summary_counts_steps_schedule_and_time():
    engine = LocalEngine()
    s = engine.plan_summary({}, 300, 50, 1000.0)
    # 300 records, 10 % held out: 270 / batch 8 = 34 steps x 2 epochs = 68 steps, 8 x 50 tokens each at 1000/s
    assert (s["n_train"], s["n_val"], s["total_steps"], s["effective_batch"]) == (270, 30, 68, 8)
    assert len(s["lr_schedule"]) == 68 and s["warmup_steps"] == 4
    assert max(s["lr_schedule"]) == pytest.approx(1e-4)
    assert s["seconds"] == pytest.approx(68 * 8 * 50 / 1000)
    assert engine.plan_summary({}, 300)["seconds"] is None  # no measured speed: unknown, not a guess
    s = engine.plan_summary({"lora": {"target_modules": ["q_proj", "v_proj"]}, "data": {"params": {"a": 1}},
                             "max_steps": 5}, 10)
    assert s["total_steps"] == 5
    assert s["cli_sets"] == ["lora.target_modules=q_proj,v_proj", "max_steps=5"]  # data.params: files only
    with pytest.raises(UserError, match="lr"):
        engine.plan_summary({"lr": 5}, 10)


def test_loop_source_is_the_training_step():
    loop = LocalEngine().loop_source()
    assert loop["name"] in ("core.train.train_step", "core.train.train")
    assert loop["source"].startswith(f"def {loop['name'].rsplit('.', 1)[1]}(") and "backward" in loop["source"]


REPORT = {
    "metrics": {"perplexity": {"base": {"perplexity": 10.0}, "tuned": {"perplexity": 5.0},
                               "delta": {"perplexity": -5.0}},
                "rouge_l": {"base": {"rouge_l": 0.0}, "tuned": {"rouge_l": 0.2}, "delta": {"rouge_l": 0.2}},
                "broken": {"base": {"error": "boom"}, "tuned": {"error": "boom"}, "delta": {}}},
    "base": {"samples": [{"question": f"q{i}", "reference": "r", "answer": "b",
                          "scores": {"rouge_l": 0.5, "perplexity": 9.0}} for i in range(4)]},
    "tuned": {"evaluators": {"perplexity": {"higher_is_better": False}, "rouge_l": {"higher_is_better": True}},
              "samples": [{"question": f"q{i}", "reference": "r", "answer": "t",
                           "scores": {"rouge_l": s, "perplexity": p}}
                          for i, (s, p) in enumerate([(0.9, 3.0), (0.1, 12.0), (0.5, 9.0), (0.7, float("nan"))])]},
}


def test_summary_rows_say_better_or_worse_in_each_evaluators_direction():
    from tunelab.core.evaluate import summary_rows

    rows = {r["evaluator"]: r for r in summary_rows(REPORT)}
    assert set(rows) == {"perplexity", "rouge_l"}  # the failed evaluator has nothing to compare
    assert rows["perplexity"]["verdict"] == "better" and rows["perplexity"]["relative_change"] == -0.5
    assert rows["rouge_l"]["verdict"] == "better" and rows["rouge_l"]["relative_change"] is None  # base 0


def test_rank_samples_best_and_worst():
    from tunelab.core.evaluate import rank_samples, rankable, with_comparison

    assert rankable(REPORT) == ["perplexity", "rouge_l"]
    by_rouge = rank_samples(REPORT, "rouge_l")
    assert [e["question"] for e in by_rouge["best"]] == ["q0", "q3"]  # +0.4, +0.2
    assert [e["question"] for e in by_rouge["worst"]] == ["q1", "q2"]  # -0.4 first
    by_ppl = rank_samples(REPORT, "perplexity")  # lower is better; the NaN sample is left out
    assert [e["question"] for e in by_ppl["best"]] == ["q0"] and by_ppl["worst"][0]["question"] == "q1"
    assert by_ppl["best"][0]["change"] == -6.0
    full = with_comparison(REPORT)
    assert set(full["ranking"]) == {"perplexity", "rouge_l"} and full["summary"] and with_comparison(None) is None


@pytest.fixture
def uploads(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_UPLOADS_DIR", str(tmp_path / "uploads"))
    return tmp_path / "uploads"


def test_allowed_data_is_the_bundled_sets_and_own_uploads(uploads, tmp_path):
    from tunelab.core.paths import REPO_ROOT as REPO
    from tunelab.core.uploads import allowed_data

    engine = LocalEngine()
    assert allowed_data("data/science_tutor_heldout.alpaca.json") == REPO / "data" / "science_tutor_heldout.alpaca.json"
    assert allowed_data("data/real-world/alpaca_en_demo.json").is_file()
    mine = engine.save_upload("my data.json", b'[{"instruction": "a", "output": "b"}]')
    assert engine.allowed_data(mine, [mine]) == mine
    elsewhere = tmp_path / "secret.json"
    elsewhere.write_text("[]")
    for path in (str(elsewhere), "core/engine.py", "data/../core/engine.py", "/etc/passwd", "data/nope.json"):
        with pytest.raises(UserError, match="reads only the data sets that ship with it") as exc:
            allowed_data(path, [mine])
        assert path in str(exc.value)
    with pytest.raises(UserError, match="upload"):
        allowed_data(mine, [])  # someone else's upload
    os.unlink(mine)
    with pytest.raises(UserError, match="gone"):
        allowed_data(mine, [mine])
    with pytest.raises(UserError, match="No data file"):
        allowed_data("  ", [])


def test_uploads_get_safe_names_and_old_ones_expire(uploads, monkeypatch):
    from tunelab.core.uploads import save_upload

    first = save_upload("../../etc/pass wd.JSON", b"[1]")
    assert first.parent == uploads and first.name.startswith("pass_wd-") and first.suffix == ".json"
    assert save_upload("other.json", b"[1]").read_bytes() == b"[1]"
    old = time.time() - 30 * 3600
    os.utime(first, (old, old))
    monkeypatch.setenv("TUNELAB_UPLOAD_TTL_H", "24")
    newest = save_upload("new.csv", b"a,b\n")
    assert not first.exists() and newest.exists()
    assert sorted(p.suffix for p in uploads.iterdir()) == [".csv", ".json"]  # other.json is young: kept
    with pytest.raises(UserError, match="empty"):
        save_upload("empty.json", b"")
