"""Lesson 5: talk to the model, before and after; see how a sampler picks the next token.

Models are named, never held: the base model by its name, a finished run's model as
``tunelab.core.engine.run_model(run_id)``; the engine loads and caches them.
"""

import streamlit as st

from tunelab.core.engine import run_model
from dashboard import charts, common, lessons, state


def the_models() -> dict[str, str]:
    """``{"base": name}`` and, when a finished run is picked, ``"tuned": run_model(run_id)``."""
    with st.container(border=True):
        left, right = st.columns(2, gap="large")
        with left:
            run_id, finished = common.finished_run_picker(
                "Fine-tuned model (a finished run)", key="gen.run",
                help="The run's final/ folder: the model your training produced.",
                none_option="(no tuned model: base only)")
            if not finished:
                st.caption("No finished run yet: train one on **4 · Fine-tune**. Meanwhile, talk to the base model.")
        models = {"base": state.model_name()}
        if run_id is not None:
            with common.user_errors():
                models["base"] = state.engine().run_config(run_id)["model"]  # the model this run started from
                models["tuned"] = run_model(run_id)
        with right:
            st.markdown(f"**Base model:** `{models['base']}`"
                        + ("  \n(the model this run started from)" if "tuned" in models else ""))
            if "tuned" in models:
                st.markdown(f"**Tuned model:** `{models['tuned']}` (the run's final/ folder)")
    return models


def the_sampler() -> tuple[str, dict, int, int] | None:
    """The sampler plugin, its settings, the answer length and the seed."""
    samplers = {}
    with common.user_errors():
        samplers = {s["name"]: s for s in common.plugin_items("samplers")}
    if not samplers:
        return None
    st.subheader("The sampler")
    names = list(samplers)
    sampler = st.selectbox("Sampler", names, index=names.index("top_p") if "top_p" in names else 0, key="gen.sampler",
                           help="Each sampler is a plugin; a plugin's own sampler appears here with its settings.")
    plugin = samplers[sampler]
    st.caption(plugin["description"] + (f" *(plugin: {plugin['owner']})*" if plugin.get("owner") else ""))
    params = common.param_form(plugin["params"], key=f"gen.{sampler}")
    max_new_tokens = st.slider("Max new tokens", 8, 512, 128, 8, key="gen.max_new_tokens",
                               help="The answer stops at the model's end-of-turn token, or after this many tokens.")
    seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="gen.seed",
                           help="The random draws of sampling: the same seed gives the same answer.")
    common.lesson_box(lessons.SAMPLING)
    return sampler, params, max_new_tokens, int(seed)


def one_step(models: dict, prompt: str, sampler: str, params: dict) -> None:
    """The next-token distribution of one model, before and after the sampler."""
    st.subheader("One step, seen from inside")
    inside = "base"
    if "tuned" in models:
        inside = st.segmented_control("Whose probabilities?", ["base", "tuned"], default="tuned", key="gen.inside",
                                      help="The chart shows one model's next-token probabilities.") or "tuned"
    if prompt.strip():
        with common.user_errors():
            with st.spinner("Loading the model and reading its next-token probabilities…"):  # seconds, the first time
                dist = state.engine().next_token_distribution(models[inside], prompt, sampler, params, top=15)
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


def side_by_side(models: dict, prompt: str, sampler: str, params: dict, max_new_tokens: int, seed: int) -> None:
    """Both models answer the same prompt with the same sampler and seed, streamed as they write."""
    st.header("Base and tuned, side by side")
    common.lesson_box(lessons.BEFORE_AFTER)
    go = st.button("Generate", type="primary", icon=":material/auto_awesome:", key="gen.go", disabled=not prompt.strip())
    answers = st.session_state.get(state.GEN_ANSWERS)
    columns = dict(zip(models, st.columns(len(models), gap="large")))
    if go:
        answers = {"prompt": prompt, "sampler": sampler, "params": params, "seed": seed}
        for label, model in models.items():
            with columns[label]:
                st.markdown(f"**{label.capitalize()} model**")
                with common.user_errors(), st.container(border=True, key=f"gen_answer_{label}"):
                    stream = state.engine().generate(model, prompt, sampler, params, max_new_tokens, seed)
                    answers[label] = st.write_stream(stream)
        st.session_state[state.GEN_ANSWERS] = answers
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


def page() -> None:
    common.title(__file__)
    st.markdown(
        "A language model writes one token at a time: it scores every token in its vocabulary, and a "
        "*sampler* picks one. Here you choose the sampler and its settings, watch what it does to the "
        "model's next-token probabilities, and ask the base and the fine-tuned model the same question."
    )
    models = None
    with common.user_errors():
        models = the_models()
    if models is None:
        return
    controls, view = st.columns([2, 3], gap="large")
    with controls:
        chosen = the_sampler()
    if chosen is None:
        return
    sampler, params, max_new_tokens, seed = chosen
    with view:
        prompt = st.text_area("Prompt", "Why do we see lightning before we hear thunder?", height=90, key="gen.prompt")
        one_step(models, prompt, sampler, params)
    side_by_side(models, prompt, sampler, params, max_new_tokens, seed)
    if st.session_state.get(state.BEFORE_ANSWER):
        with st.expander("The base model's answer from lesson 1 (greedy)"):
            st.markdown(st.session_state[state.BEFORE_ANSWER])
    common.next_step(__file__)


page()
