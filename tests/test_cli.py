"""``python -m tunelab``: plugins, data check and train's early refusals, run as a user would."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REAL_WORLD, REPO

BUILTIN_FORMATS = ["alpaca", "sharegpt", "messages", "csv", "text", "input_output"]


@pytest.fixture
def env(tmp_path):
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("TUNELAB_PLUGINS_DIR", "TUNELAB_LOAD_PLUGINS", "TUNELAB_STRICT_PLUGINS")}
    environment.update(HF_HUB_OFFLINE="1", TUNELAB_RUNS_DIR=str(tmp_path / "runs"))
    environment.setdefault("TUNELAB_HOME", os.environ["TUNELAB_HOME"])
    return environment


def cli(env, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "tunelab", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_user_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# -- plugins ----------------------------------------------------------------------------------
def test_plugins_json_schema(env, tmp_path):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "broken.py").write_text("import not_a_real_module_xyz\n")
    env["TUNELAB_PLUGINS_DIR"] = str(folder)
    result = cli(env, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert isinstance(listing, list)
    for p in listing:
        assert {"name", "version", "source", "status", "error", "hooks", "contributes"} <= set(p)
        assert p["source"] in ("builtin", "entrypoint", "dir")
        assert p["status"] in ("loaded", "failed", "disabled")
        assert set(p["contributes"]) == {"data_formats", "samplers", "evaluators", "backends"}
        assert all(isinstance(v, list) for v in p["contributes"].values())
        assert isinstance(p["hooks"], list)
    by_name = {p["name"]: p for p in listing}
    assert by_name["formats"]["contributes"]["data_formats"] == BUILTIN_FORMATS
    assert by_name["formats"]["status"] == "loaded" and by_name["formats"]["error"] is None
    assert by_name["broken"]["status"] == "failed" and "not_a_real_module_xyz" in by_name["broken"]["error"]


def test_plugins_table(env):
    result = cli(env, "plugins")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:4] == ["plugin", "source", "version", "status"]
    formats = next(r for r in rows if r.startswith("formats "))
    assert "builtin" in formats and "loaded" in formats
    assert "data_formats: alpaca, sharegpt, messages, csv, text, input_output" in formats


def test_plugins_builtins_only(env, tmp_path):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "extra.py").write_text("")
    env.update(TUNELAB_PLUGINS_DIR=str(folder), TUNELAB_LOAD_PLUGINS="")
    listing = json.loads(cli(env, "plugins", "--json").stdout)
    assert {p["name"]: p["status"] for p in listing}["extra"] == "disabled"


# -- data check -------------------------------------------------------------------------------
def test_data_check_good_file(env, chat_file):
    result = cli(env, "data", "check", chat_file, "--no-tokens")
    assert result.returncode == 0, result.stderr
    assert "24 records, format 'alpaca'" in result.stdout
    assert "duplicates: 0" in result.stdout and "empty examples: 0" in result.stdout
    assert "Traceback" not in result.stderr


def test_data_check_json(env, write):
    path = write("d.jsonl", '{"text": "one"}\n{"text": "two"}\n{"text": "one"}\n')
    result = cli(env, "data", "check", path, "--no-tokens", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["format"] == "text" and report["records"] == 3
    assert report["duplicates"] == [{"row": 3, "same_as": 1}] and report["errors"] == []


def test_data_check_csv_params_and_format(env, write):
    path = write("qa.csv", "question,answer\nWhat?,That.\n")
    ok = cli(env, "data", "check", path, "--no-tokens", "--param", "prompt_column=question",
             "--param", "response_column=answer", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["records"] == 1
    assert_user_error(cli(env, "data", "check", path, "--no-tokens"), "qa.csv", "row 1", "prompt_column")


def test_data_check_real_world(env):
    result = cli(env, "data", "check", REAL_WORLD / "alpaca_en_demo.json", "--json", "--no-tokens")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["records"] == 999 and report["format"] == "alpaca" and report["ok"]


def test_data_check_with_token_lengths(env, write):
    rows = [{"instruction": f"Question {i}?", "output": "Answer. " * (1 + 40 * (i == 3))} for i in range(5)]
    path = write("tok.json", json.dumps(rows))
    result = cli(env, "data", "check", path, "--max-length", "100", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    t = report["token_lengths"]
    assert 0 < t["min"] <= t["median"] <= t["p95"] <= t["max"] and len(t["values"]) == 5
    assert report["over_max_length"] == 1 and t["max"] > 100


MALFORMED = [
    ("arr.json", '[{"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}]', ["row 2", "line 2"]),
    ("lines.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": }\n', ["row 2"]),
    ("missing.json", '[{"instruction": "a", "output": "b"}, {"instruction": "c"}]', ["row 2", "'output'"]),
    ("type.json", '[{"instruction": "a", "output": 1.5}]', ["row 1", "'output'", "must be a string"]),
    ("role.jsonl", '{"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]}\n',
     ["row 1", "messages[1].role", "unknown role 'robot'"]),
    ("sg.json", '[{"conversations": [{"from": "human", "value": "hi"}, {"from": "alien", "value": "yo"}]}]',
     ["row 1", "conversations[1].from"]),
    ("noasst.jsonl", '{"messages": [{"role": "user", "content": "q"}]}\n', ["row 1", "no assistant turn"]),
    ("empty.json", "", ["empty"]),
    ("blank.jsonl", " \n\n", ["only whitespace"]),
    ("latin.json", b'[{"instruction": "caf\xe9", "output": "b"}]', ["line 1", "UTF-8"]),
    ("cols.csv", "question,answer\nhi,yo\n", ["row 1", "'prompt'"]),
    ("rows.csv", "prompt,response\n", ["no rows"]),
]


@pytest.mark.parametrize("name, content, fragments", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_data_check_malformed_exits_2_with_one_line(env, write, name, content, fragments):
    path = write(name, content)
    assert_user_error(cli(env, "data", "check", path, "--no-tokens"), name, *fragments)


def test_data_check_malformed_json_report(env, write):
    path = write("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    result = cli(env, "data", "check", path, "--no-tokens", "--json")
    assert_user_error(result, "bad.jsonl", "row 2")
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["errors"][0]["row"] == 2 and report["errors"][0]["field"] == "output"


def test_data_check_unknown_format_and_missing_file(env, chat_file, tmp_path):
    assert_user_error(cli(env, "data", "check", chat_file, "--format", "yaml", "--no-tokens"),
                      "unknown data format 'yaml'", "alpaca")
    assert_user_error(cli(env, "data", "check", tmp_path / "nope.json", "--no-tokens"), "nope.json", "no such file")


# -- train refuses bad configs before any model loads ------------------------------------------
@pytest.mark.parametrize("text, overrides, fragments", [
    ("learning_rate: 1e-4\n", [], ["unknown key 'learning_rate'", "lr"]),
    ("batch_size: many\n", [], ["batch_size must be a whole number"]),
    ("lr: 5\n", [], ["lr = 5.0 is out of range"]),
    ("method: qlora\n", [], ["method must be one of"]),
    ("lr: [1\n", [], ["invalid YAML", "line"]),
    ("lr: 1e-4\n", ["lora.r=0"], ["lora.r = 0 is out of range"]),
    ("lr: 1e-4\n", ["nope=1"], ["unknown key 'nope'"]),
    ("data:\n  path: does/not/exist.json\n", [], ["does/not/exist.json", "no such file"]),
])
def test_train_bad_config_exits_2_fast(env, tmp_path, text, overrides, fragments):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    args = ["train", config] + [a for o in overrides for a in ("--set", o)]
    result = cli(env, *args, timeout=60)
    assert_user_error(result, *fragments)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_train_refuses_a_missing_model_folder_before_making_a_run(env, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {tmp_path / 'no-such-model'}\ndata:\n  path: {REPO / 'data' / 'science_tutor_train.alpaca.json'}\n")
    runs_dir = tmp_path / "runs"
    result = cli(dict(env, TUNELAB_RUNS_DIR=str(runs_dir)), "train", config)
    assert_user_error(result, "c.yaml", "model", "does not exist")
    assert not runs_dir.exists() or not any(runs_dir.iterdir())  # nothing created, nothing marked failed
