"""GGUF export: written, read back by transformers' GGUF loader, refused on bad input, never half-written."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO
from tunelab.core import export, runs
from tunelab.core.__main__ import main
from tunelab.core.config import RunConfig
from tunelab.core.errors import UserError

SENTENCES = ["Water expands when it freezes, so ice is less dense and floats on lakes in winter.",
             "You are a patient science tutor. Answer in short, clear steps, with one example.",
             "Why does ice float? What would happen if it sank? Fish live below the ice."]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A tiny random Llama with a 400-token byte-level BPE vocabulary: exports and reads back in a second."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    from tunelab.core.models import CHATML_TEMPLATE

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(SENTENCES * 20, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tokenizer.chat_template = CHATML_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    folder = tmp_path_factory.mktemp("small") / "model"
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # sharp attention: at init it is near-uniform, blind to how q and k are laid out
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(25)
            layer.self_attn.k_proj.weight.mul_(25)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def finished_run(model_dir, root, name="lesson-run", state="finished"):
    """A run folder as training leaves it: config, status, and ``final/`` (the model folder copied)."""
    run_dir = runs.create_run(RunConfig.from_dict({"model": str(model_dir)}), run_dir=root / name)
    shutil.copytree(model_dir, run_dir / "final")
    runs.write_status(run_dir, state=state, step=2, total_steps=2, pid=None)
    return run_dir


def ggufs(folder):
    """Every GGUF (finished or partial) in ``folder``."""
    return sorted(p.name for p in folder.glob("*.gguf")) if folder.exists() else []


def one_error_line(capsys, rc, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])
    return err[0]


# -- the real vocabulary: f16 and q8_0 of the tiny Llama with SmolLM2's tokenizer -----------------

def test_f16_and_q8_0_read_back_with_the_same_next_tokens(tiny_model, tmp_path):
    from gguf import GGUFReader

    run_dir = finished_run(tiny_model, tmp_path / "runs")
    seen = {t: [] for t in export.TYPES}
    results = {t: export.export_run(run_dir, tmp_path / t, t, {"name": "greedy", "params": {}},
                                    progress=lambda f, m, t=t: seen[t].append(f)) for t in export.TYPES}
    for qtype, result in results.items():
        check = result["verification"]
        assert check["passed"] and check["tokens_match"]
        assert check["perplexity_increase"] <= export.PERPLEXITY_BOUNDS[qtype] and check["positions"] > 80
        assert check["logit_error"] <= export.LOGIT_ERROR_BOUNDS[qtype]
        assert check["decided_agreement"] in (None, 1.0)  # no rounding this small flips a clear choice
        assert "<|im_start|>user\nWhy does ice float on water?<|im_end|>" in check["prompt"]
        assert ggufs(tmp_path / qtype) == ["lesson-run.gguf"]  # no partial file left beside it
        assert sorted(p.name for p in (tmp_path / qtype).iterdir()) == ["Modelfile", "README.md", "lesson-run.gguf"]
        json.dumps(result)  # plain data, for the CLI's --json and the dashboard
    assert all(fs == sorted(fs) and fs[-1] == 1.0 for fs in seen.values())
    f16, q8 = results["f16"]["sizes"]["gguf"], results["q8_0"]["sizes"]["gguf"]
    assert 0.5 < q8 / f16 < 0.7  # 8.5 bits a weight against 16, plus the tokenizer
    assert abs(results["f16"]["estimated_bytes"] - f16) < 0.05 * f16

    reader = GGUFReader(results["q8_0"]["paths"]["gguf"])
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "llama" and field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "gpt-2" and len(field("tokenizer.ggml.tokens")) == 49152
    assert field("tokenizer.ggml.eos_token_id") == 2 and field("tokenizer.ggml.add_bos_token") is False
    assert "<|im_start|>" in field("tokenizer.chat_template")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert "output.weight" not in types  # tied embeddings: llama.cpp reuses token_embd
    assert types["token_embd.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"


def test_modelfile_has_chatml_template_stop_and_sampler(tiny_model, tmp_path):
    run_dir = finished_run(tiny_model, tmp_path / "runs")
    export.export_run(run_dir, tmp_path / "out", "q8_0", {"name": "top_k", "params": {"top_k": "20"}})
    text = (tmp_path / "out" / "Modelfile").read_text()
    assert text.splitlines()[1] == "FROM ./lesson-run.gguf"
    assert 'TEMPLATE """{{- range $i, $_ := .Messages }}' in text and 'PARAMETER stop "<|im_end|>"' in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    for line in ("PARAMETER top_k 20", "PARAMETER temperature 1", "PARAMETER top_p 1", "PARAMETER min_p 0"):
        assert line in text.splitlines()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| method | full |" in card and "q8_0" in card and "ollama create lesson-run -f Modelfile" in card


# -- the whole path on a small vocabulary ------------------------------------------------------------

def test_cli_export_writes_files_and_reports_agreement(small_model, tmp_path):
    run_dir = finished_run(small_model, tmp_path / "runs", "cli-run")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "tunelab", "export", str(run_dir), "--out", str(tmp_path / "out"),
                           "--type", "q8_0", "--json"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["paths"]["gguf"] == str(tmp_path / "out" / "cli-run.gguf")
    assert result["verification"]["passed"] and result["type"] == "q8_0"
    assert "Traceback" not in done.stderr


def test_wrong_tensor_layout_fails_the_check_and_keeps_nothing(small_model, tmp_path, monkeypatch, capsys):
    """Without llama.cpp's q/k row order the read-back predicts other tokens: the check must see it."""
    run_dir = finished_run(small_model, tmp_path / "runs")
    monkeypatch.setattr(export, "_permute", lambda weights, n_head, n_head_kv: weights)
    rc = main(["export", str(run_dir), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "does not read back as the same model" in err[0], err
    assert "a tensor layout slip" in err[0]  # the logits moved: the perplexity of a random model barely does
    assert ggufs(tmp_path / "out") == [] and not (tmp_path / "out" / "Modelfile").exists()


def test_interrupted_write_leaves_no_file_under_the_final_name(small_model, tmp_path, monkeypatch):
    run_dir = finished_run(small_model, tmp_path / "runs")

    def half_then_crash(path, *args, **kwargs):
        path.write_bytes(b"GGUF" + b"\0" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_write_gguf", half_then_crash)
    with pytest.raises(OSError):
        export.export_run(run_dir, tmp_path / "out")
    assert ggufs(tmp_path / "out") == []
    # a killed export (no finally) leaves its partial file: the next export clears it, not a live one's
    dead, alive = (tmp_path / "out" / f".lesson-run.{pid}.partial.gguf" for pid in (2**22 + 1, os.getppid()))
    dead.write_bytes(b"GGUF")
    alive.write_bytes(b"GGUF")
    with pytest.raises(OSError):
        export.export_run(run_dir, tmp_path / "out")
    assert not dead.exists() and alive.exists()  # another export may still be writing that one


def test_lora_run_is_merged_into_its_base_and_its_adapter_zipped(small_model, chat_file, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.core import train

    cfg = RunConfig.from_dict({"model": small_model, "method": "lora", "lora": {"r": 4, "alpha": 16},
                               "data": {"path": str(chat_file), "val_fraction": 0.0}, "max_length": 64,
                               "max_steps": 4, "batch_size": 4, "lr": 5e-2, "eval_every": 0, "warmup_ratio": 0.0})
    run_dir = tmp_path / "runs" / "lora-run"
    assert train.train(cfg, run_dir)["state"] == "finished"
    result = export.export_run(run_dir, tmp_path / "out", "f16")
    assert result["merged_lora"] and result["verification"]["passed"]
    with zipfile.ZipFile(result["paths"]["lora_adapter_zip"]) as z:
        assert "adapter_config.json" in z.namelist() and "adapter_model.safetensors" in z.namelist()
    # the GGUF holds the merged weights, not the base's: its logits differ from the base model's
    ids = torch.tensor([[1, 40, 41, 42, 43, 2]])
    out = tmp_path / "out"
    merged = AutoModelForCausalLM.from_pretrained(out, gguf_file="lora-run.gguf", dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(small_model)
    with torch.no_grad():
        assert (merged(input_ids=ids).logits - base(input_ids=ids).logits).abs().max() > 1e-3



@pytest.mark.parametrize("arch", ["qwen2", "llama-untied"])
def test_qwen2_with_biases_and_untied_llama_read_back(arch, small_model, tmp_path):
    """Qwen2: q/k/v biases, no q/k permutation; an untied Llama: its own output.weight."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

    tokenizer = AutoTokenizer.from_pretrained(small_model)
    shape = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1,
                 eos_token_id=2)
    config = Qwen2Config(**shape, tie_word_embeddings=True) if arch == "qwen2" else \
        LlamaConfig(**shape, tie_word_embeddings=False)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(25)
            layer.self_attn.k_proj.weight.mul_(25)
            if arch == "qwen2":
                layer.self_attn.q_proj.bias.normal_(0, 1)
                layer.self_attn.v_proj.bias.normal_(0, 1)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    run_dir = finished_run(tmp_path / "model", tmp_path / "runs", arch)
    result = export.export_run(run_dir, tmp_path / "out", "f16")
    assert result["verification"]["passed"] and result["architecture"] == arch.split("-")[0]
    assert result["verification"]["max_logit_diff"] < 0.01  # f16 rounding only: a layout slip shows here first
    names = {t.name for t in GGUFReader(result["paths"]["gguf"]).tensors}
    assert ("blk.0.attn_q.bias" in names) == (arch == "qwen2")
    assert ("output.weight" in names) == (arch == "llama-untied")


# -- bad input: exit 2, one line, nothing written ---------------------------------------------------

def test_missing_and_unfinished_runs_are_refused(small_model, tmp_path, capsys):
    rc = main(["export", str(tmp_path / "runs" / "nope"), "--out", str(tmp_path / "out")])
    one_error_line(capsys, rc, "nope does not exist")
    stopped = finished_run(small_model, tmp_path / "runs", "stopped-run", state="stopped")
    rc = main(["export", str(stopped), "--out", str(tmp_path / "out")])
    one_error_line(capsys, rc, "stopped-run is stopped, not finished", "python -m tunelab resume")
    gone = finished_run(small_model, tmp_path / "runs", "gone-run")
    shutil.rmtree(gone / "final")
    rc = main(["export", str(gone), "--out", str(tmp_path / "out")])
    one_error_line(capsys, rc, "has no final/ folder")
    (tmp_path / "runs" / "not-a-run").mkdir()
    rc = main(["export", str(tmp_path / "runs" / "not-a-run"), "--out", str(tmp_path / "out")])
    one_error_line(capsys, rc, "not a run folder")
    assert ggufs(tmp_path / "out") == []


def test_unwritable_out_and_bad_options_are_refused(small_model, tmp_path, capsys):
    run_dir = finished_run(small_model, tmp_path / "runs")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc = main(["export", str(run_dir), "--out", str(blocker)])
    one_error_line(capsys, rc, "is a file")
    rc = main(["export", str(run_dir), "--out", str(blocker / "sub")])  # a folder cannot be made under a file
    one_error_line(capsys, rc, "is not writable")
    rc = main(["export", str(run_dir), "--out", str(tmp_path / "out"), "--type", "q4_k"])
    one_error_line(capsys, rc, "--type q4_k", "f16, q8_0")
    rc = main(["export", str(run_dir), "--out", str(tmp_path / "out"), "--sampler", "no-such-sampler"])
    one_error_line(capsys, rc, "no-such-sampler")
    assert ggufs(tmp_path / "out") == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_out_folder_is_refused(small_model, tmp_path, capsys):
    run_dir = finished_run(small_model, tmp_path / "runs")
    (tmp_path / "ro").mkdir(mode=0o500)
    rc = main(["export", str(run_dir), "--out", str(tmp_path / "ro")])
    one_error_line(capsys, rc, "is not writable")


def test_too_little_disk_is_refused_before_any_work(small_model, tmp_path, monkeypatch, capsys):
    run_dir = finished_run(small_model, tmp_path / "runs")
    real = shutil.disk_usage
    monkeypatch.setattr(export.shutil, "disk_usage", lambda p: real(p)._replace(free=100_000))
    monkeypatch.setattr(export, "_load_merged", lambda *a: pytest.fail("loaded the model before checking disk"))
    rc = main(["export", str(run_dir), "--out", str(tmp_path / "out")])
    one_error_line(capsys, rc, "not enough free disk", "97.7 KiB is free")
    assert ggufs(tmp_path / "out") == []


def test_unsupported_architecture_is_refused_naming_the_supported_ones(tmp_path, tokenizer, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=64,
                                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
                    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    run_dir = finished_run(folder, tmp_path / "runs", "gpt2-run")
    capsys.readouterr()  # save_pretrained's own progress bar
    rc = main(["export", str(run_dir), "--out", str(tmp_path / "out")])
    line = one_error_line(capsys, rc, "GPT2LMHeadModel", "LlamaForCausalLM", "Qwen2ForCausalLM")
    assert "SmolLM2" in line
    assert ggufs(tmp_path / "out") == []


# -- Modelfile pieces ----------------------------------------------------------------------------

def params(name, **values):
    settings = export._sampler_settings({"name": name, "params": values})
    return export.ollama_parameters(settings, {"name": name, "params": values})


def test_samplers_become_ollama_parameters():
    assert params("greedy")[0] == ["PARAMETER temperature 0"]
    assert params("greedy", repetition_penalty=1.2)[0] == ["PARAMETER temperature 0", "PARAMETER repeat_penalty 1.2",
                                                          "PARAMETER repeat_last_n -1"]
    assert params("min_p", min_p=0.1)[0] == ["PARAMETER temperature 1", "PARAMETER top_k 0", "PARAMETER top_p 1",
                                             "PARAMETER min_p 0.1"]
    lines, notes = params("beam", num_beams=3)
    assert lines == ["PARAMETER temperature 0"] and any("no beam search" in n for n in notes)
    assert export.ollama_parameters(None, None)[0] == []
    with pytest.raises(UserError):
        export._sampler_settings({"params": {}})


def test_only_a_chatml_template_gets_a_go_template(tokenizer):
    import copy

    smol = export.ollama_template(tokenizer)
    assert smol["kind"] == "chatml" and smol["system"].startswith("You are a helpful AI assistant named SmolLM")
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
                           "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                           "{% endif %}")
    assert export.ollama_template(plain) == {"kind": "chatml", "template": export.CHATML_GO_TEMPLATE, "system": None}
    llama3 = copy.deepcopy(tokenizer)
    llama3.chat_template = ("{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
                            "m['content'] + '<|eot_id|>' }}{% endfor %}")
    other = export.ollama_template(llama3)
    assert other["kind"] == "gguf" and other["template"] is None
    assert "TEMPLATE" not in export.modelfile_text("m", other, None, None)


GO_RENDER = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct{ Role, Content string }

func main() {
	var messages []Message
	json.NewDecoder(os.Stdin).Decode(&messages)
	t := template.Must(template.New("m").Parse(os.Args[1]))
	t.Execute(os.Stdout, map[string]any{"Messages": messages})
}
"""


@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go to run Ollama's template language")
def test_go_template_renders_what_the_jinja_template_renders(tokenizer, tmp_path):
    """Ollama's TEMPLATE, run by Go's text/template as Ollama runs it, gives the Jinja chat template's text."""
    (tmp_path / "render.go").write_text(GO_RENDER)
    system = {"role": "system", "content": "Be brief."}
    chats = [[{"role": "user", "content": "Hi"}],
             [system, {"role": "user", "content": "Why is the sky blue?"}],
             [system, {"role": "user", "content": "A?"}, {"role": "assistant", "content": "B."},
              {"role": "user", "content": "C?"}]]
    default = {"role": "system", "content": export.ollama_template(tokenizer)["system"]}
    for chat in chats:
        full = chat if chat[0]["role"] == "system" else [default] + chat  # Ollama puts SYSTEM first when none
        want = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        got = subprocess.run(["go", "run", str(tmp_path / "render.go"), export.CHATML_GO_TEMPLATE],
                             input=json.dumps([{"Role": m["role"], "Content": m["content"]} for m in full]),
                             capture_output=True, text=True, timeout=120)
        assert got.returncode == 0, got.stderr
        assert got.stdout == want, (got.stdout, want)


# -- the dashboard page ---------------------------------------------------------------------------

def test_page_exports_with_progress_and_offers_files_and_commands(small_model, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    finished_run(small_model, tmp_path / "runs", "page-run")
    monkeypatch.setenv("TUNELAB_RUNS_DIR", str(tmp_path / "runs"))
    # Run as streamlit_app.py runs a page: from the repository root, where `plugins` is the plugins
    # package (from dashboard/, `import plugins` would find the Plugins page).
    at = AppTest.from_string(f"import runpy, sys\nsys.path.insert(0, {str(REPO)!r})\n"
                             f"runpy.run_path({str(REPO / 'dashboard' / 'export.py')!r})\n", default_timeout=120)
    at.session_state["gen_answers"] = {"prompt": "Hi", "sampler": "top_k", "params": {"top_k": 20}, "seed": 0}
    at.run()
    assert not at.exception and at.title[0].value == "Use your model elsewhere"
    at.radio(key="export.type").set_value("q8_0")
    at.button(key="export.go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert abs(float(metrics["Perplexity against final/"].rstrip("%"))) < 3  # within what q8_0 may cost
    code = "\n".join(c.value for c in at.code)
    assert "ollama create page-run -f Modelfile" in code and "llama-cli -m page-run.gguf -cnv" in code
    assert "PARAMETER top_k 20" in code  # the Generate page's sampler, in the Modelfile shown
    downloads = [d for d in at.get("download_button")]
    assert len(downloads) == 2  # GGUF and Modelfile (a full run: no adapter zip)
    assert (tmp_path / "runs" / "page-run" / "export" / "q8_0" / "page-run.gguf").is_file()


# -- the lesson model: what q8_0 costs, measured --------------------------------------------------

@pytest.mark.slow
def test_q8_0_of_the_embedded_model_keeps_its_heldout_perplexity(embedded_dir, tmp_path):
    """The README's q8_0 figures: `pytest -m slow tests/test_export.py -k perplexity -s` prints them."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.core import models
    from tunelab.core.evaluate import _encoder, load_samples
    from tunelab.core.registry import Registry

    run_dir = runs.create_run(RunConfig.from_dict({"model": "embedded"}), run_dir=tmp_path / "runs" / "smollm2")
    shutil.copytree(embedded_dir, run_dir / "final")
    runs.write_status(run_dir, state="finished", step=0, total_steps=0, pid=None)
    result = export.export_run(run_dir, tmp_path / "out", "q8_0")
    samples = load_samples(REPO / "data" / "science_tutor_heldout.messages.jsonl")
    perplexity = Registry(load_external=False).get("evaluators", "perplexity")
    model, tokenizer = models.load_model(str(run_dir / "final"))
    context = {"tokenizer": tokenizer, "max_length": 512, "encode": _encoder(tokenizer, 512)}
    before = perplexity.evaluate(samples, {**context, "model": model})["perplexity"]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", gguf_file="smollm2.gguf", dtype=torch.float32)
    after = perplexity.evaluate(samples, {**context, "model": loaded.eval()})["perplexity"]
    check = result["verification"]
    print(f"\nq8_0: {result['sizes']['gguf']} bytes in {result['seconds']['total']} s; top-1 agreement "
          f"{check['top1_agreement']:.4f} over {check['positions']} positions; held-out perplexity "
          f"({len(samples)} answers) final/ {before:.3f}, q8_0 read-back {after:.3f}")
    assert check["top1_agreement"] >= 0.95 and abs(after - before) / before < 0.01
