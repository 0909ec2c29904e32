"""After the lessons: use your model elsewhere — one GGUF file for Ollama, llama.cpp and LM Studio.

The engine writes the GGUF, the Ollama Modelfile and a model card, then reads the GGUF back and
checks it predicts what ``final/`` predicts (``Engine.export_run``); this page picks the run and
the type, shows the progress and the check, and offers the files and the commands to run them.
When the check fails the page always offers a way on, with the figure: f16 instead of q8_0, or
keeping the file anyway (the card then records the failure).
"""

from pathlib import Path

import streamlit as st

from dashboard import common, state

RESULT, FAILED = state.EXPORT_RESULT, state.EXPORT_FAILED

# Measured on this project's machine (2 CPU cores) with the embedded SmolLM2-135M-Instruct as final/:
# the figures script in the README section "Use your model elsewhere" reproduces them.
MEASURED = {
    "f16": {"bytes": 270_885_728, "seconds": 21.2, "agreement": 1.0, "perplexity": 13.615},
    "q8_0": {"bytes": 144_810_848, "seconds": 18.0, "agreement": 0.981, "perplexity": 13.590},
    "final_perplexity": 13.613, "positions": 104, "heldout": 50,
}


def explain() -> None:
    q8, f16 = MEASURED["q8_0"], MEASURED["f16"]
    common.concept_box(
        "GGUF",
        "One file that holds a whole model: the weights, the architecture's numbers (layers, heads, context "
        "length) and the tokenizer with its chat template. It is the format of llama.cpp, which Ollama and "
        "LM Studio run on.",
        "Your run's `final/` folder opens with Python and transformers. A GGUF runs in the apps people use "
        "every day, on a laptop CPU, with no Python at all.",
        "The export reads its own file back and scores a fixed conversation with it and with `final/`: the file "
        "passes when its perplexity rises no more than the type may cost and its next-token scores barely move. "
        "If it fails, nothing is kept unless you choose to keep it.",
        "Exporting a run that has not finished (there is no final model yet); giving the model the wrong chat "
        "template in Ollama (the Modelfile here carries the one it was trained with).")
    common.concept_box(
        "Quantization: f16 or q8_0",
        "Storing each weight in fewer bits. **f16** keeps 16 bits a weight (the training weights, rounded "
        "once). **q8_0** cuts the weights into blocks of 32 and stores each block as 32 small integers "
        "(8 bits) plus one shared scale: about 8.5 bits a weight.",
        f"Half the size means half the download and memory, and faster answers on a CPU. Measured here on "
        f"the embedded 135M model: f16 {common.human_bytes(f16['bytes'])}, q8_0 "
        f"{common.human_bytes(q8['bytes'])}; q8_0 picked the same next token as `final/` at "
        f"{q8['agreement']:.1%} of {MEASURED['positions']} positions (f16: {f16['agreement']:.0%}), and "
        f"its perplexity on {MEASURED['heldout']} held-out answers was {q8['perplexity']:.2f} against "
        f"{MEASURED['final_perplexity']:.2f} for `final/`: no measurable loss.",
        "The agreement figure after each export. Below 4-bit (q4 and smaller, not offered here) small models "
        "lose quality you can notice; 8 bits is safe.",
        "Comparing a quantized model with a different prompt or sampler and blaming the quantization.")


def last_sampler() -> dict | None:
    """The sampler the learner last generated with on 5 · Generate (``{"name", "params"}``), if any."""
    answers = st.session_state.get(state.GEN_ANSWERS) or {}
    return {"name": answers["sampler"], "params": answers.get("params") or {}} if answers.get("sampler") else None


def choose() -> dict | None:
    """The run, the type and the sampler to write into the Modelfile, and the Export button."""
    with st.container(border=True):
        left, right = st.columns(2, gap="large")
        with left:
            run_id, finished = common.finished_run_picker(
                "Run to export", key="export.run", help="A finished run: its final/ model is what gets exported.")
            if not finished:
                st.info("No finished run yet: train one on **4 · Fine-tune** (a few steps are enough to try this).",
                        icon=":material/model_training:")
                return None
            qtype = st.radio("Type", ["f16", "q8_0"], horizontal=True, key="export.type",
                             captions=["16 bits a weight: full quality", "8.5 bits a weight: about half the size"],
                             help="See 'Quantization' below for what each costs, measured here.")
        with right:
            sampler = last_sampler()
            options = (["The one I last used on 5 · Generate"] if sampler else []) + ["Ollama's defaults"]
            pick = st.radio("Sampler in the Modelfile", options, key="export.sampler",
                            help="Written as Ollama PARAMETER lines (temperature, top_k, top_p, min_p, "
                                 "repeat_penalty) so Ollama picks tokens the way you chose on the Generate page.")
            if pick == options[0] and sampler:
                st.caption(common.sampler_words(sampler["name"], sampler["params"]).capitalize() + ".")
            else:
                sampler = None
                st.caption("Ollama's own: temperature 0.8, top_k 40, top_p 0.9.")
        go = st.button("Export", type="primary", icon=":material/ios_share:", key="export.go")
    return {"run_id": run_id, "type": qtype, "sampler": sampler, "go": go}


def run_export(choice: dict, type: str | None = None, keep_anyway: bool = False) -> None:
    """Export with a live bar; a failed check is kept (with its figures) for :func:`failed_check` to offer the
    next step, and the bar goes: an error under a bar stuck part-way would read as still working."""
    qtype = type or choice["type"]
    runs = {r["run_id"]: r for r in state.engine().list_runs()}
    out_dir = Path(runs[choice["run_id"]]["run_dir"]) / "export" / qtype
    bar = st.progress(0.0, text="Starting…")
    st.session_state.pop(FAILED, None)
    try:
        result = state.engine().export_run(choice["run_id"], str(out_dir), qtype, choice["sampler"],
                                           progress=lambda fraction, message: bar.progress(min(1.0, fraction),
                                                                                           text=message),
                                           keep_anyway=keep_anyway)
    except RuntimeError as exc:
        bar.empty()
        if not hasattr(exc, "check"):  # not the export's self-check (core.export.ExportCheckFailed)
            raise
        st.session_state[FAILED] = {"run_id": choice["run_id"], "type": qtype, "message": str(exc),
                                    "check": getattr(exc, "check", None) or {}}
        return
    except BaseException:
        bar.empty()
        raise
    bar.empty()
    st.session_state[RESULT] = {"run_id": choice["run_id"], "type": qtype, "result": result}


def failed_check(choice: dict) -> None:
    """The check's failure in plain words, its figure, and the ways on: f16 instead, or keep the file anyway."""
    failed = st.session_state.get(FAILED)
    if not failed or failed["run_id"] != choice["run_id"]:
        return
    qtype, check = failed["type"], failed["check"]
    with st.container(border=True):
        st.error(f"The {qtype} file did not pass the read-back check, so it was not kept.",
                 icon=":material/error:")
        if check:
            a, b, c = st.columns(3)
            a.metric("Perplexity against final/", f"{check['perplexity_increase']:+.2%}",
                     help=f"{qtype} may cost up to {check['bound']:.1%} on the check conversation.")
            b.metric("Next-token scores moved", f"{check['logit_error']:.1%}",
                     help=f"Of their spread; {qtype} rounding may move them up to {check['logit_error_bound']:.0%}.")
            c.metric("Same next token as final/", f"{check['top1_agreement']:.1%}",
                     help=f"Over {check['positions']} positions. Reported, not judged: where two tokens are "
                          "nearly tied, any rounding can swap them.")
        with st.expander("The check's own words"):
            st.write(failed["message"])
        st.markdown("**What now?** " + (
            "f16 rounds each weight far less than q8_0 (16 bits instead of about 8.5): it is the safe choice, at "
            "twice the size. Or keep this file anyway: the model card will say that it failed the check, and by "
            "how much." if qtype != "f16" else
            "f16 should always read back as the same model: a failure means a bug in the export for this "
            "architecture. Keep the file anyway only to look into it; the model card will say that it failed."))
        cols = st.columns([1, 1.4, 1])
        if qtype != "f16":
            cols[0].button("Export f16 instead", type="primary", key="export.fallback_f16", width="stretch",
                           icon=":material/high_quality:", on_click=ask, args=("f16", False))
        cols[1].button(f"Keep the {qtype} file anyway", key="export.keep_anyway", icon=":material/save:",
                       width="stretch", on_click=ask, args=(qtype, True))


def ask(qtype: str, keep_anyway: bool) -> None:
    """A way on, chosen (a button's callback, before the page is drawn again: the Type picker follows it)."""
    st.session_state["export.type"] = qtype
    st.session_state[FAILED]["request"] = {"type": qtype, "keep_anyway": keep_anyway}


def show(result: dict) -> None:
    """The check's figures, the downloads and the commands."""
    check, sizes, paths = result["verification"], result["sizes"], result["paths"]
    if result.get("kept_anyway"):
        st.warning(f"Kept although it failed the read-back check: perplexity {check['perplexity_increase']:+.2%} "
                   f"against final/ (allowed {check['bound']:.1%}), next-token scores moved "
                   f"{check['logit_error']:.1%} of their spread (allowed {check['logit_error_bound']:.0%}). The "
                   "README card beside the file says so.", icon=":material/warning:")
    else:
        st.success(f"The {result['type']} file reads back as the same model.", icon=":material/check_circle:")
    a, b, c = st.columns(3)
    a.metric("GGUF size", common.human_bytes(sizes["gguf"]),
             help=f"{result['type']}, saved as {common.plain_path(paths['gguf'])}")
    b.metric("Perplexity against final/", f"{check['perplexity_increase']:+.2%}",
             help=f"The GGUF read back with transformers' GGUF loader scores a fixed conversation "
                  f"({check['positions']} tokens) {check['perplexity_increase']:+.2%} against final/; "
                  f"{result['type']} may cost up to {check['bound']:.1%}. The same next token as final/ at "
                  f"{check['top1_agreement']:.1%} of the positions.")
    c.metric("Export time", common.human_seconds(result["seconds"]["total"]))
    with st.expander("The conversation the check reads"):
        st.code(check["prompt"], language=None)
    st.subheader("Download")
    cols = st.columns(3)
    files = [("gguf", "GGUF model", "application/octet-stream"), ("modelfile", "Modelfile", "text/plain"),
             ("lora_adapter_zip", "LoRA adapter (zip)", "application/zip")]
    for col, (kind, label, mime) in zip(cols, [f for f in files if f[0] in paths]):
        path = Path(paths[kind])
        # a callable: the file is read when the button is clicked, not on every rerun
        col.download_button(f"{label} · {common.human_bytes(sizes[kind])}", data=lambda p=path: p.read_bytes(),
                            file_name=path.name, mime=mime, key=f"export.download.{kind}", on_click="ignore",
                            icon=":material/download:")
    if result.get("merged_lora"):
        st.caption("The GGUF holds the LoRA adapter merged into its base; the zip is the adapter alone, for peft.")
    st.subheader("Run it")
    st.markdown(f"Put **{Path(paths['gguf']).name}** and **Modelfile** in one folder, then in a terminal there:")
    st.markdown("**Ollama**")
    st.code(f"ollama create {result['name']} -f Modelfile\nollama run {result['name']}", language="bash")
    st.markdown("**llama.cpp** (`-cnv`: chat, with the template stored in the GGUF)")
    st.code(result["commands"]["llama_cpp"], language="bash")
    st.caption("LM Studio: drag the .gguf file into its window (My Models → import).")
    with st.expander("Modelfile"):
        st.code(Path(paths["modelfile"]).read_text(encoding="utf-8"), language=None)


def page() -> None:
    common.title(__file__)
    st.markdown(
        "Your model trained. Now take it with you: export it as one **GGUF** file and run it in **Ollama**, "
        "**llama.cpp** or **LM Studio**, on your laptop, without TuneLab or Python. The export checks itself: it "
        "loads the file it wrote and makes sure it predicts what your trained model predicts.")
    choice = None
    with common.user_errors():
        choice = choose()
    if choice is None:
        explain()
        return
    request = (st.session_state.get(FAILED) or {}).pop("request", None)  # a way on, chosen after a failed check
    if choice["go"] or request:
        with common.user_errors():
            run_export(choice, **(request or {}))
    failed_check(choice)
    last = st.session_state.get(RESULT)
    failed = st.session_state.get(FAILED)
    if last and last["run_id"] == choice["run_id"] and not (failed and failed["run_id"] == choice["run_id"]):
        show(last["result"])
    elif not choice["go"] and not failed:
        st.caption("Pick a run and a type, then **Export** (about 20 s for the 135M model on a laptop CPU).")
    explain()


page()
