"""Export always leads somewhere: a failed read-back check offers f16 or keeping the file anyway (the
figure shown, the failure recorded), in core, the CLI and the page; the read-back reports its progress.

The failing model is real: a small Llama whose weight rows each hold a few values 300x larger than the
rest, so q8_0's blocks of 32 (one shared scale) round the small ones away, while f16 keeps them.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from tunelab.core import export, runs
from tunelab.core.__main__ import main
from tunelab.core.config import RunConfig
from test_export import small_model  # noqa: F401 - the fixture: a tiny Llama with a 400-token vocabulary


@pytest.fixture(scope="module")
def outlier_run(small_model, tmp_path_factory):  # noqa: F811
    """A finished run whose final/ q8_0 cannot carry (f16 can)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(small_model, dtype=torch.float32)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() == 2 and "embed" not in name:
                weight[:, ::32] *= 300
    root = tmp_path_factory.mktemp("runs")
    run_dir = runs.create_run(RunConfig.from_dict({"model": small_model}), run_dir=root / "outliers")
    model.save_pretrained(run_dir / "final")
    AutoTokenizer.from_pretrained(small_model).save_pretrained(run_dir / "final")
    runs.write_status(run_dir, state="finished", step=12, total_steps=12, pid=None)
    return run_dir


def test_a_failed_check_keeps_nothing_and_carries_its_figures(outlier_run, tmp_path):
    out = tmp_path / "q8"
    with pytest.raises(export.ExportCheckFailed) as info:
        export.export_run(outlier_run, out, "q8_0")
    check = info.value.check
    assert not check["passed"] and check["logit_error"] > check["logit_error_bound"]
    assert {"perplexity_increase", "bound", "top1_agreement", "positions"} <= set(check)
    assert "export f16 instead, or keep the q8_0 file anyway with --keep-anyway" in str(info.value)
    assert not list(out.glob("*.gguf")) and not (out / "README.md").exists()


def test_keep_anyway_keeps_the_file_and_records_the_failure(outlier_run, tmp_path):
    out = tmp_path / "kept"
    result = export.export_run(outlier_run, out, "q8_0", keep_anyway=True)
    assert result["kept_anyway"] and not result["verification"]["passed"]
    assert "kept anyway, as asked" in result["verification"]["failure"]
    assert (out / "outliers.gguf").is_file() and (out / "Modelfile").is_file()
    card = (out / "README.md").read_text()
    assert "**failed, kept anyway**" in card and "did not pass TuneLab's read-back check" in card
    assert f"{result['verification']['logit_error']:.2%}" in card  # the figure, not just the word


def test_f16_is_the_way_on_and_the_read_back_reports_progress(outlier_run, tmp_path):
    seen = []
    result = export.export_run(outlier_run, tmp_path / "f16", "f16", progress=lambda f, m: seen.append((f, m)))
    assert result["verification"]["passed"] and not result["kept_anyway"]
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0  # the bar only moves forward, to the end
    read_back = [m for f, m in seen if 0.62 <= f < 0.95]
    assert any(m.startswith("reading the GGUF back") for m in read_back)
    tensors = [m for m in read_back if m.startswith("reading the weights back: tensor")]
    assert len(tensors) > 5 and tensors[-1].split()[-1] == tensors[-1].split()[-3]  # "tensor N of N"
    assert "| read-back check | passed" in (tmp_path / "f16" / "README.md").read_text()


def test_cli_keep_anyway(outlier_run, tmp_path, capsys):
    assert main(["export", str(outlier_run), "--out", str(tmp_path / "no"), "--type", "q8_0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--keep-anyway" in err[0] and "export f16 instead" in err[0]
    done = subprocess.run([sys.executable, "-m", "tunelab", "export", str(outlier_run), "--out", str(tmp_path / "yes"),
                           "--type", "q8_0", "--keep-anyway", "--json"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["kept_anyway"] is True
    assert "warning: the q8_0 GGUF does not read back as the same model" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_page_offers_f16_or_keeping_the_file_with_the_figure(outlier_run, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    root = tmp_path / "runs"
    shutil.copytree(outlier_run, root / outlier_run.name)
    monkeypatch.setenv("TUNELAB_RUNS_DIR", str(root))
    at = AppTest.from_string(f"import runpy, sys\nsys.path.insert(0, {str(REPO)!r})\n"
                             f"runpy.run_path({str(REPO / 'dashboard' / 'export.py')!r})\n", default_timeout=180)
    at.run()
    at.radio(key="export.type").set_value("q8_0")
    at.button(key="export.go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("did not pass the read-back check" in e.value for e in at.error)
    assert not at.get("progress")  # the bar is gone, not frozen above the error
    figures = {m.label: m.value for m in at.metric}
    assert figures["Next-token scores moved"].endswith("%") and "Perplexity against final/" in figures
    assert at.button(key="export.fallback_f16").label == "Export f16 instead"
    at.button(key="export.fallback_f16").click().run()
    assert not at.exception and not at.error
    assert any("The f16 file reads back as the same model" in s.value for s in at.success)
    assert at.radio(key="export.type").value == "f16"  # the picker says what was exported
    assert (root / "outliers" / "export" / "f16" / "outliers.gguf").is_file()
    at.radio(key="export.type").set_value("q8_0")
    at.button(key="export.go").click().run()  # q8_0 again, then keep it anyway
    at.button(key="export.keep_anyway").click().run()
    assert not at.exception
    assert any(w.value.startswith("Kept although it failed the read-back check") for w in at.warning)
    assert (root / "outliers" / "export" / "q8_0" / "outliers.gguf").is_file()
    assert len(at.get("download_button")) == 2
