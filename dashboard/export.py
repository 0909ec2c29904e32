"""After the lessons: use your model elsewhere — one GGUF file for Ollama, llama.cpp and LM Studio.

The engine writes the GGUF, the Ollama Modelfile and a model card, then reads the GGUF back and
checks it predicts what ``final/`` predicts (``Engine.export_run``); this page picks the run and
the type, shows the progress and the check, and offers the files and the commands to run them.
"""

from pathlib import Path

import streamlit as st

from dashboard import common, state

RESULT = state.EXPORT_RESULT

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
        "The export reads its own file back and compares the next-token predictions with `final/` on a fixed "
        "conversation: the agreement it reports is that check.",
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
                st.caption(f"`{sampler['name']}` {sampler['params'] or ''}")
            else:
                sampler = None
                st.caption("Ollama's own: temperature 0.8, top_k 40, top_p 0.9.")
        go = st.button("Export", type="primary", icon=":material/ios_share:", key="export.go")
    return {"run_id": run_id, "type": qtype, "sampler": sampler, "go": go}


def run_export(choice: dict) -> None:
    runs = {r["run_id"]: r for r in state.engine().list_runs()}
    out_dir = Path(runs[choice["run_id"]]["run_dir"]) / "export" / choice["type"]
    bar = st.progress(0.0, text="Starting…")
    result = state.engine().export_run(choice["run_id"], str(out_dir), choice["type"], choice["sampler"],
                                       progress=lambda fraction, message: bar.progress(min(1.0, fraction),
                                                                                       text=message))
    bar.progress(1.0, text=f"Done in {result['seconds']['total']:.0f} s")
    st.session_state[RESULT] = {"run_id": choice["run_id"], "type": choice["type"], "result": result}


def show(result: dict) -> None:
    """The check's figures, the downloads and the commands."""
    check, sizes, paths = result["verification"], result["sizes"], result["paths"]
    a, b, c = st.columns(3)
    a.metric("GGUF size", common.human_bytes(sizes["gguf"]), help=f"{result['type']}, {paths['gguf']}")
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
    if choice["go"]:
        with common.user_errors():
            try:
                run_export(choice)
            except RuntimeError as exc:  # the export's self-check failed (core.export.ExportCheckFailed)
                st.error(str(exc), icon=":material/error:")
    last = st.session_state.get(RESULT)
    if last and last["run_id"] == choice["run_id"] and last["type"] == choice["type"]:
        show(last["result"])
    elif not choice["go"]:
        st.caption("Pick a run and a type, then **Export** (about 20 s for the 135M model on a laptop CPU).")
    explain()


page()
