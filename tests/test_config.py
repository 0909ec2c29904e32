"""RunConfig: defaults, validation, YAML round trip, --set overrides."""

import pytest
import yaml

from tunelab.core.config import CONFIG_DOCS, RunConfig, apply_overrides, defaults_table, load_config
from tunelab.core.errors import UserError


def test_defaults_are_valid_and_documented():
    cfg = RunConfig()
    cfg.validate()
    assert RunConfig.from_dict({}) == cfg and RunConfig.from_dict(None) == cfg
    table = defaults_table()
    assert [row["key"] for row in table] == list(CONFIG_DOCS)
    assert all(row["help"] for row in table)
    for row in table:  # every documented key exists on the dataclass
        cfg.get(row["key"])


def test_nested_and_flat_sections():
    cfg = RunConfig.from_dict({"data": {"path": "x.csv", "params": {"prompt_column": "q"}},
                               "lora": {"r": 4, "target_modules": ["q_proj"]}, "method": "lora"})
    assert cfg.data.path == "x.csv" and cfg.data.params == {"prompt_column": "q"}
    assert cfg.lora.r == 4 and cfg.lora.target_modules == ["q_proj"] and cfg.lora.alpha == 32


@pytest.mark.parametrize("raw, pattern", [
    ({"learning_rate": 1e-4}, r"unknown key 'learning_rate'; did you mean lr\?"),
    ({"epoch": 2}, r"unknown key 'epoch'; did you mean epochs\?"),
    ({"lora": {"rank": 8}}, r"unknown key 'lora.rank'; did you mean lora.r\?"),
    ({"colour": "blue"}, r"unknown key 'colour'; known keys: model, data.path"),
    ({"data": "train.json"}, r"'data' must be a section of keys \(data.path"),
])
def test_unknown_keys_are_refused_with_a_hint(raw, pattern):
    with pytest.raises(UserError, match=pattern):
        RunConfig.from_dict(raw, where="my.yaml")


@pytest.mark.parametrize("raw, pattern", [
    ({"batch_size": "four"}, r"my.yaml: batch_size must be a whole number, got 'four'"),
    ({"batch_size": 2.5}, r"batch_size must be a whole number"),
    ({"batch_size": True}, r"batch_size must be a whole number"),
    ({"lr": "fast"}, r"lr must be a number, got 'fast'"),
    ({"gradient_checkpointing": "sometimes"}, r"gradient_checkpointing must be true or false"),
    ({"lora": {"target_modules": 5}}, r"lora.target_modules must be a list"),
    ({"data": {"params": [1]}}, r"data.params must be a mapping"),
    ({"method": "qlora"}, r"method must be one of full, lora, got 'qlora'"),
    ({"scheduler": "step"}, r"scheduler must be one of linear, cosine, constant"),
    ({"precision": "int8"}, r"precision must be one of auto"),
    ({"lr": 2}, r"lr = 2.0 is out of range \[1e-08, 1.0\]"),
    ({"batch_size": 0}, r"batch_size = 0 is out of range"),
    ({"max_length": 4}, r"max_length = 4 is out of range"),
    ({"data": {"val_fraction": 0.9}}, r"data.val_fraction = 0.9 is out of range \[0.0, 0.5\]"),
    ({"lora": {"r": 0}}, r"lora.r = 0 is out of range"),
    ({"data": {"path": ""}}, r"data.path is empty"),
])
def test_bad_values_are_refused(raw, pattern):
    with pytest.raises(UserError, match=pattern):
        RunConfig.from_dict(raw, where="my.yaml")


def test_not_a_mapping():
    with pytest.raises(UserError, match="expected a mapping"):
        RunConfig.from_dict([1, 2])


def test_yaml_round_trip(tmp_path):
    cfg = RunConfig.from_dict({"model": "gpt2", "method": "lora", "lr": 2e-4, "data": {"path": "d.csv",
                               "params": {"prompt_column": "q"}}, "lora": {"target_modules": ["q_proj", "v_proj"]},
                               "gradient_checkpointing": True, "max_steps": 7})
    path = tmp_path / "run.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg and again.to_dict() == cfg.to_dict()
    assert yaml.safe_load(cfg.to_yaml())["lora"]["target_modules"] == ["q_proj", "v_proj"]


def test_yaml_values_written_by_hand(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-4\nmax_steps: 1e3\nlora:\n  target_modules:\nwarmup_ratio: 0\n")
    cfg = load_config(path)
    assert cfg.lr == 1e-4 and cfg.max_steps == 1000 and cfg.lora.target_modules == [] and cfg.warmup_ratio == 0.0
    assert isinstance(cfg.warmup_ratio, float)


def test_set_overrides():
    cfg = apply_overrides(RunConfig(), ["lr=1e-4", "lora.r=8", "gradient_checkpointing=true",
                                        "lora.target_modules=q_proj,v_proj", "data.path=other.json",
                                        "epochs=2", "method=lora", "data.params={prompt_column: q}"])
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float)
    assert cfg.lora.r == 8 and isinstance(cfg.lora.r, int)
    assert cfg.gradient_checkpointing is True
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.data.path == "other.json" and cfg.epochs == 2.0 and cfg.method == "lora"
    assert cfg.data.params == {"prompt_column": "q"}
    assert apply_overrides(RunConfig(), ["lora.target_modules=[q_proj, k_proj]"]).lora.target_modules == ["q_proj", "k_proj"]
    assert apply_overrides(RunConfig(), ["gradient_checkpointing=false"]).gradient_checkpointing is False


@pytest.mark.parametrize("item, pattern", [
    ("lr", r"--set lr: expected key=value"),
    ("lr=abc", r"--set lr: lr must be a number"),
    ("nope=1", r"--set nope: unknown key 'nope'"),
    ("lora.r=0", r"lora.r = 0 is out of range"),
    ("method=sideways", r"method must be one of"),
])
def test_bad_overrides(item, pattern):
    with pytest.raises(UserError, match=pattern):
        apply_overrides(RunConfig(), [item])


def test_load_config_applies_overrides_and_reports_files(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 3e-5\nbatch_size: 2\n")
    cfg = load_config(path, ["batch_size=8"])
    assert cfg.lr == 3e-5 and cfg.batch_size == 8
    with pytest.raises(UserError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("- just\n- a list\n")
    with pytest.raises(UserError, match="expected keys and values at the top level, got list"):
        load_config(path)
    path.write_text("")
    assert load_config(path) == RunConfig()


def test_invalid_yaml_gives_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("lr: 1e-4\nbatch_size: 4\nlora:\n  r: [8\n  alpha: 16\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert "broken.yaml" in message and "invalid YAML" in message
    assert "line 5" in message or "line 4" in message, message
    path.write_text("lr: 1e-4\n\tbatch_size: 4\n")
    with pytest.raises(UserError, match=r"broken.yaml, line 2: invalid YAML"):
        load_config(path)


def test_total_steps():
    cfg = RunConfig.from_dict({"batch_size": 4, "grad_accum": 2, "epochs": 2})
    assert cfg.total_steps(33) == 8  # ceil(33/4)=9 batches -> 4 steps an epoch
    assert RunConfig.from_dict({"max_steps": 5}).total_steps(1000) == 5
