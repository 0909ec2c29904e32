"""Lesson 5: talk to the model, before and after; see how a sampler picks the next token."""

import streamlit as st

from core import generate as gen
from core import runs
from dashboard import charts, common, lessons

st.title("5 · Generate")
st.markdown(
    "A language model writes one token at a time: it scores every token in its vocabulary, and a "
    "*sampler* picks one. Here you choose the sampler and its settings, watch what it does to the "
    "model's next-token probabilities, and ask the base and the fine-tuned model the same question."
)

# -- the two models --------------------------------------------------------------------------------
finished = common.finished_runs()
with st.container(border=True):
    left, right = st.columns(2, gap="large")
    with left:
        run_dir = common.pick_finished_run(finished, "Fine-tuned model (a finished run)", key="gen.run",
                                           help="The run's final/ folder: the model your training produced.",
                                           none_option="(no tuned model: base only)")
        if not finished:
            st.caption("No finished run yet: train one on **4 · Fine-tune**. Meanwhile, talk to the base model.")
    base_name = common.current_model_name()
    if run_dir is not None:
        with common.user_errors():
            base_name = runs.load_config(run_dir).model  # the model this run started from
    with right:
        st.markdown(f"**Base model:** `{base_name}`" + ("  \n(the model this run started from)" if run_dir else ""))
        if run_dir is not None:
            st.markdown(f"**Tuned model:** `{run_dir / 'final'}`")

models = {}
with common.user_errors():
    models["base"] = common.load_model(base_name)
    if run_dir is not None:
        models["tuned"] = common.load_model(str(run_dir / "final"))
if "base" not in models:
    st.stop()

# -- the sampler and the prompt ----------------------------------------------------------------------
registry = common.registry()
samplers = registry.items("samplers")
controls, view = st.columns([2, 3], gap="large")
with controls:
    st.subheader("The sampler")
    names = list(samplers)
    sampler = st.selectbox("Sampler", names, index=names.index("top_p") if "top_p" in names else 0, key="gen.sampler",
                           help="Each sampler is a plugin; a plugin's own sampler appears here with its settings.")
    plugin = samplers[sampler]
    owner = registry.owner("samplers", sampler)
    st.caption(plugin.description + (f" *(plugin: {owner})*" if owner else ""))
    params = common.param_form(plugin.params, key=f"gen.{sampler}")
    max_new_tokens = st.slider("Max new tokens", 8, 512, 128, 8, key="gen.max_new_tokens",
                               help="The answer stops at the model's end-of-turn token, or after this many tokens.")
    seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="gen.seed",
                           help="The random draws of sampling: the same seed gives the same answer.")
    common.lesson_box(lessons.SAMPLING)
with view:
    prompt = st.text_area("Prompt", "Why do we see lightning before we hear thunder?", height=90, key="gen.prompt")
    st.subheader("One step, seen from inside")
    inside = "base"
    if "tuned" in models:
        inside = st.segmented_control("Whose probabilities?", ["base", "tuned"], default="tuned", key="gen.inside",
                                      help="The chart shows one model's next-token probabilities.") or "tuned"
    if prompt.strip():
        with common.user_errors():
            model, tokenizer = models[inside]
            dist = gen.next_token_distribution(model, tokenizer, prompt, sampler, params, top=15, registry=registry)
            st.plotly_chart(charts.next_token_chart(dist, sampler), key="gen.next_token_chart", width="stretch")
            if dist["greedy"]:
                note = "Greedy does not draw at random: all the probability goes to the single most likely token."
            elif sampler == "beam":
                note = "Beam search does not reshape the distribution; it keeps several continuations and looks ahead."
            else:
                note = (f"After {sampler}, **{dist['kept']:,}** tokens of the vocabulary can still be picked; the "
                        f"others are cut to 0. Tokens outside the chart hold {dist['other_before']:.1%} of the "
                        f"probability before and {dist['other_after']:.1%} after.")
            st.caption(f"The {inside} model's first token of its answer. " + note)
    common.lesson_box(lessons.NEXT_TOKEN)

# -- the answers ---------------------------------------------------------------------------------------
st.header("Base and tuned, side by side")
common.lesson_box(lessons.BEFORE_AFTER)
go = st.button("Generate", type="primary", icon=":material/auto_awesome:", key="gen.go", disabled=not prompt.strip())
answers = st.session_state.get("gen.answers")
columns = dict(zip(models, st.columns(len(models), gap="large")))
if go:
    answers = {"prompt": prompt, "sampler": sampler, "params": params, "seed": seed}
    for label, (model, tokenizer) in models.items():
        with columns[label]:
            st.markdown(f"**{label.capitalize()} model**")
            with common.user_errors():
                stream = gen.generate(model, tokenizer, prompt, sampler, params, max_new_tokens, seed=seed,
                                      stream=True, registry=registry)
                with st.container(border=True, key=f"gen_answer_{label}"):
                    answers[label] = st.write_stream(stream)
    st.session_state["gen.answers"] = answers
elif answers:
    for label in models:
        with columns[label]:
            st.markdown(f"**{label.capitalize()} model**")
            with st.container(border=True, key=f"gen_answer_{label}"):
                st.markdown(answers.get(label) or "*(not generated: click Generate)*")
    if answers["prompt"] != prompt or answers["sampler"] != sampler or answers.get("params") != params:
        st.caption("These answers are for an earlier prompt or sampler setting: click **Generate** again.")
else:
    st.caption("Click **Generate**: the answers stream in as the models write them, token by token.")

if st.session_state.get(common.BEFORE_ANSWER):
    with st.expander("The base model's answer from lesson 1 (greedy)"):
        st.markdown(st.session_state[common.BEFORE_ANSWER])

common.next_step("dashboard/evaluate.py", "Next: 6 · Evaluate")
