"""Questions & glossary: the best practices and the questions beginners ask, answered with this project's
own measured figures, and a glossary of the terms every lesson uses.

No figure on this page is typed in: the lesson's figures are read from ``docs/results.json`` (written by
``make lesson``; ``TUNELAB_LESSON_RESULTS`` points elsewhere, for tests), the memory figures are estimated
live by the engine (``Engine.estimate_memory``) for the embedded model (from its config, no weights
loaded), the time by ``Engine.plan_summary``, and the machine's memory comes from ``Engine.machine``.
No model is loaded, so the page is fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import streamlit as st

from tunelab.core.config import RunConfig
from tunelab.core.errors import UserError
from dashboard import common, lessons, memory_view, state

HOW_TO_MEASURE = "make lesson"
SETUPS = {  # label -> (method, gradient_checkpointing)
    "full fine-tuning": ("full", False),
    "full + gradient checkpointing": ("full", True),
    "LoRA": ("lora", False),
    "LoRA + gradient checkpointing": ("lora", True),
}


def results_path() -> Path:
    return Path(os.environ.get("TUNELAB_LESSON_RESULTS") or common.REPO / "docs" / "results.json")


def load_results() -> dict | None:
    """The lesson's measured figures, or None when ``make lesson`` has not written them (or they are unreadable)."""
    try:
        results = json.loads(results_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) else None


def get(results: dict | None, *keys, default=None):
    """``results[k1][k2]...``, or ``default`` when any level is missing."""
    value = results
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return default
        value = value[key]
    return value


def pct(x) -> str:
    return "—" if x is None else f"{x:.0%}"


def signed_pct(x) -> str:
    return "—" if x is None else f"{x:+.0%}"


def num(x, fmt: str = "{:.2f}") -> str:
    return "—" if x is None else fmt.format(x)


def no_figures_note(short: bool = False) -> None:
    if short:  # the page's top already explains; each section just points back to it
        st.caption(f"This project's measured figures appear here once `{HOW_TO_MEASURE}` has written "
                   "`docs/results.json`.")
        return
    st.info(f"No measured lesson figures yet. Run `{HOW_TO_MEASURE}` (under ten minutes on a 2-core CPU): it "
            "trains the default lesson, evaluates base against tuned on the held-out set, and writes "
            f"`docs/results.json`, which this page reads.", icon=":material/science:")


def embedded_missing_note(f: "Facts") -> None:
    if f.why:
        st.caption("The memory figures need the engine (see the note at the top of the page).")
        return
    st.info("The memory figures appear once the embedded model has been converted: open **1 · Load a model** "
            "(or run `make run`) once.", icon=":material/download:")


def estimate(method: str, batch_size: int, max_length: int, checkpointing: bool) -> dict:
    """The embedded model's estimate in fp32 (the engine's, with the verdict where training runs)."""
    return memory_view.estimate({"model": state.EMBEDDED, "method": method, "precision": "fp32",
                                 "batch_size": batch_size, "max_length": max_length,
                                 "gradient_checkpointing": checkpointing, "lora": {"r": 16}})


class Facts:
    """What the answers are made of: the measured figures, the lesson's set-up, the machine, the estimate."""

    def __init__(self):
        self.results = load_results()
        defaults = RunConfig()  # the engine's defaults, when there are no lesson figures to take the set-up from
        self.batch = int(get(self.results, "config", "batch_size") or defaults.batch_size)
        self.length = int(get(self.results, "config", "max_length") or defaults.max_length)
        self.method = get(self.results, "config", "method") or defaults.method
        self.ckpt = bool(get(self.results, "config", "gradient_checkpointing",
                             default=defaults.gradient_checkpointing))
        self.setup_name = "The lesson's own set-up" if self.results else "The engine's default set-up"
        self.machine, self.mem_ok, self.lesson_est, self.why = {}, False, None, None
        try:
            self.machine = common.machine()
            if state.engine().embedded_ready():
                self.lesson_est = estimate(self.method, self.batch, self.length, self.ckpt)
                self.mem_ok = True
        except UserError as exc:  # no engine here, or the backend does not answer: said once, at the top
            self.why = str(exc)


def laptop(f: Facts) -> None:
    st.subheader("Can I run this on my laptop?")
    st.markdown(
        "Very likely, yes. TuneLab's model, SmolLM2-135M-Instruct, is small enough to fine-tune on a CPU with no "
        "GPU: what limits you is **memory** (RAM), then **time**. Below is what training it needs, estimated for "
        "each set-up, next to what this machine has free right now."
    )
    m = f.machine
    ram = f"{common.human_bytes(m.get('ram_total'))} of RAM, {common.human_bytes(m.get('ram_available'))} free"
    gpu = (f"and a GPU ({m.get('gpu_name')}, {common.human_bytes(m.get('gpu_total'))})"
           if m.get("cuda") else "and no CUDA GPU (training runs on the CPU, in fp32)")
    st.markdown(f"**This machine:** {m.get('cpu_cores', '?')} CPU cores, {ram}, {gpu}.")
    if f.mem_ok:
        length = st.select_slider("max_length for the table", [128, 256, 512, 1024], value=f.length
                                  if f.length in (128, 256, 512, 1024) else 256, key="faq.max_length")
        rows = []
        with common.user_errors():
            for label, (method, ckpt) in SETUPS.items():
                row = {"set-up (fp32)": label}
                for b in (1, 4, 8, 16):
                    est = estimate(method, b, length, ckpt)
                    mark = {"fits": "", "tight": " (tight)", None: ""}.get(est.get("verdict"), " (won't fit)")
                    row[f"batch {b}"] = common.human_bytes(est["total"]) + mark
                rows.append(row)
            st.dataframe(rows, hide_index=True, width="stretch")
        st.caption(f"Peak training memory of the embedded model at max_length {length}, estimated by "
                   f"`tunelab.core.memory.estimate`; '(tight)' and '(won't fit)' compare it with the {m.get('where', 'memory')} "
                   "here. Lesson 7 (Memory) measures a real step to check the estimate.")
        if f.lesson_est:
            st.markdown(f"{f.setup_name} ({f.method}, batch {f.batch}, max_length {f.length}) needs about "
                        f"**{common.human_bytes(f.lesson_est['total'])}** at the peak: "
                        f"**{f.lesson_est.get('verdict') or 'unknown'}** here.")
    else:
        embedded_missing_note(f)
    if f.results:
        st.markdown(f"The lesson's measured run trained on **{get(f.results, 'machine', 'description', default='?')}** "
                    f"in **{common.human_seconds(get(f.results, 'wall_s', 'train'))}** — no GPU needed.")


def how_long(f: Facts) -> None:
    st.subheader("How long does training take?")
    r = f.results
    if r:
        tps, train_tokens = get(r, "tokens_per_s"), get(r, "train", "train_tokens")
        examples, epochs = get(r, "train", "train_examples"), get(r, "config", "epochs")
        st.markdown(
            f"In the lesson's measured run: **{common.human_seconds(get(r, 'wall_s', 'train'))}** of training "
            f"({get(r, 'train', 'steps', default='?')} steps over {examples or '?'} examples, "
            f"{num(epochs, '{:g}')} epoch(s), {common.human_count(train_tokens)} tokens per epoch) at a median "
            f"**{num(tps, '{:,.0f}')} tokens/s**, then {common.human_seconds(get(r, 'wall_s', 'evaluate'))} to "
            f"evaluate both models on {get(r, 'heldout', 'samples', default='?')} held-out prompts — "
            f"**{common.human_seconds(get(r, 'wall_s', 'total'))}** in all."
        )
        records = get(r, "train", "records")
        if tps and train_tokens and examples and records:
            per_example = train_tokens / examples
            with common.user_errors():  # the engine's one time formula, on the lesson's own figures
                plan = state.engine().plan_summary(r.get("config") or {}, records, per_example, tps)
                st.markdown(f"The rule: *time ≈ steps × examples per step × tokens per example ÷ tokens per "
                            f"second*. Here, {plan['total_steps']} × {plan['effective_batch']} × ~{per_example:,.0f} "
                            f"÷ {tps:,.0f} ≈ {common.human_seconds(plan['seconds'])}. Twice the data or twice the "
                            "epochs takes twice as long; a bigger model takes longer in proportion to its size.")
    else:
        no_figures_note(short=True)
    st.markdown(
        "Speed depends on the machine *and on what else it is doing*: training uses every CPU core, so another "
        "heavy program running at the same time can slow it down many times over. Close other heavy programs "
        "before you train. A GPU is far faster. Lesson 7's *Measure a real step* measures the speed on your "
        "machine, and lesson 3 then estimates the time of your run."
    )


def memory_errors(f: Facts) -> None:
    st.subheader("What if I get memory errors?")
    st.markdown(
        "*Out of memory* means training needs more RAM (or GPU memory) than is free. It usually happens at the "
        "first step, so it costs little — and it is predictable. Climb this ladder, one rung at a time, until the "
        "estimate fits:"
    )
    if f.lesson_est:
        st.markdown("\n".join(f"{i}. {line}" for i, line in enumerate(f.lesson_est.get("ladder") or [], 1)))
        st.caption(f"What each rung saves for {f.setup_name.lower()} ({f.method}, batch {f.batch}, "
                   f"max_length {f.length}, {common.human_bytes(f.lesson_est['total'])}), computed live by "
                   "`tunelab.core.memory.oom_advice`. Lesson 7 (Memory) shows the same ladder for your own set-up.")
    else:
        st.markdown("1. Halve the batch size and double `grad_accum`.\n2. Cut `max_length`.\n"
                    "3. Turn on gradient checkpointing.\n4. Train LoRA adapters instead of every weight.\n"
                    "5. On a GPU, use bf16 (or fp16) mixed precision.")
        if not f.mem_ok:
            embedded_missing_note(f)
    st.markdown("Also close other programs: the free memory the estimate is compared with is shared with them.")


def how_much_data(f: Facts) -> None:
    st.subheader("How much data do I need?")
    r = f.results
    if r:
        st.markdown(
            f"For teaching a **style or format**, a few hundred good examples. This project's lesson trained on "
            f"**{get(r, 'train', 'train_examples', default='?')} examples** "
            f"({common.human_count(get(r, 'train', 'train_tokens'))} tokens) for "
            f"{num(get(r, 'config', 'epochs'), '{:g}')} epoch(s), and on "
            f"{get(r, 'heldout', 'samples', default='?')} held-out prompts about concepts it never trained on, "
            f"house-style adherence went from **{pct(get(r, 'house_style', 'base'))} to "
            f"{pct(get(r, 'house_style', 'tuned'))}** and perplexity from "
            f"**{num(get(r, 'perplexity', 'base'))} to {num(get(r, 'perplexity', 'tuned'))}** "
            f"({signed_pct(get(r, 'perplexity', 'relative_change'))})."
        )
    else:
        no_figures_note(short=True)
    st.markdown(
        "Teaching **new knowledge** is different: fine-tuning a small model on a few hundred answers mostly changes "
        "*how* it answers, not *what it knows*. Quality matters more than quantity: a few hundred consistent, "
        "checked examples beat thousands of mixed ones. Keep some examples back (a held-out file) to measure with."
    )


def data_and_memory_practices(f: Facts) -> None:
    st.subheader("Data quality over quantity")
    common.lesson_box(lessons.DATA_QUALITY, expanded=True)
    if f.results:
        t = f.results.get("train", {})
        st.markdown(
            f"**In this project:** {t.get('records', '?')} training records, all in one house style "
            f"(see `data/README.md`, the data card, and `data/check_dataset.py`, its checker); "
            f"{t.get('train_examples', '?')} trained on, {t.get('val_examples', '?')} kept for validation; "
            f"{t.get('truncated', '?')} cut by max_length {f.length}, {t.get('dropped', '?')} dropped. "
            f"Result on unseen prompts: house style {pct(get(f.results, 'house_style', 'base'))} → "
            f"{pct(get(f.results, 'house_style', 'tuned'))}."
        )
    st.subheader("Memory optimisation")
    common.lesson_box(lessons.MEMORY_OPTIMISATION, expanded=True)
    if not f.mem_ok:
        embedded_missing_note(f)
        return
    with common.user_errors():
        totals = {label: estimate(method, f.batch, f.length, ckpt)["total"] for label, (method, ckpt) in SETUPS.items()}
        basic = totals["full fine-tuning"]
        st.markdown(f"**In this project** (embedded model, fp32, batch {f.batch}, max_length {f.length}, "
                    "estimated live):\n" + "\n".join(
                        f"- {label}: **{common.human_bytes(total)}**"
                        + (f" ({(1 - total / basic):.0%} less)" if label != "full fine-tuning" else "")
                        for label, total in totals.items()))


def training_practices(f: Facts) -> None:
    st.subheader("Finding the learning rate and batch size")
    common.lesson_box(lessons.LR_AND_BATCH, expanded=True)
    common.lesson_box(lessons.EPOCHS_STEPS)
    st.markdown(f"**Recommended ranges:** learning rate {lessons.RECOMMENDED['lr']}; batch size "
                f"{lessons.RECOMMENDED['batch_size']}; {lessons.RECOMMENDED['grad_accum']}; epochs "
                f"{lessons.RECOMMENDED['epochs']}.")
    r = f.results
    if r:
        c = r.get("config", {})
        st.markdown(
            f"**In this project:** the default lesson (`configs/lesson.yaml`, chosen from measured trials) uses "
            f"**{c.get('method', '?')}** fine-tuning at lr **{c.get('lr', '?')}**, batch {c.get('batch_size', '?')} × "
            f"grad_accum {c.get('grad_accum', '?')}, {c.get('scheduler', '?')} schedule with "
            f"{num(c.get('warmup_ratio'), '{:.0%}')} warm-up, {num(c.get('epochs'), '{:g}')} epoch(s); its final "
            f"validation loss was {num(r.get('final_eval_loss'), '{:.3f}')}. `docs/trials.md` records the "
            "measured trials it was chosen from (full against LoRA, learning rates, epochs)."
        )
    st.subheader("Measuring improvement")
    common.lesson_box(lessons.MEASURING, expanded=True)
    common.lesson_box(lessons.METRICS)
    if not r:
        no_figures_note(short=True)
        return
    labels = [("perplexity", "held-out perplexity (lower is better)", "{:.2f}"), ("rouge_l", "ROUGE-L", "{:.3f}"),
              ("keyword_coverage", "keyword coverage", "{:.3f}"), ("house_style", "house-style adherence", "{:.0%}")]
    rows = []
    for key, label, fmt in labels:
        m = r.get(key) or {}
        change = (signed_pct(m["relative_change"]) if m.get("relative_change") is not None
                  else num(m.get("change"), "{:+.2f}"))
        rows.append({"metric": label, "base": num(m.get("base"), fmt), "tuned": num(m.get("tuned"), fmt),
                     "change": change})
    st.markdown(f"**In this project** ({get(r, 'heldout', 'samples', default='?')} held-out prompts, greedy "
                "decoding, the same for both models):")
    st.dataframe(rows, hide_index=True, width="stretch")
    st.caption("Side-by-side answers are in `docs/results.md`; lesson 6 runs the same evaluation on your own runs.")


def glossary() -> None:
    st.subheader("Glossary")
    query = st.text_input("Find a term", key="faq.glossary_filter", placeholder="e.g. LoRA, perplexity, batch")
    q = query.strip().lower()
    terms = {t: d for t, d in lessons.GLOSSARY.items() if not q or q in t.lower() or q in d.lower()}
    if terms:
        st.markdown("\n".join(f"- **{term}** — {definition}" for term, definition in terms.items()))
    else:
        st.caption(f"No term mentions '{query}'.")
    st.caption(f"{len(lessons.GLOSSARY)} terms. The same answers, best practices and glossary are in `docs/guide.md`.")


def page() -> None:
    common.title(__file__)
    st.markdown(
        "The questions everyone asks before their first fine-tuning run, and the habits that make runs work — "
        "answered with **this project's own measurements**, not rules of thumb from elsewhere. At the bottom, a "
        "glossary of every term the lessons use."
    )
    facts = Facts()
    if facts.why:
        st.error(facts.why, icon=":material/error:")
    if facts.results:
        r = facts.results
        st.caption(f"Lesson figures from `docs/results.json`, written by `{r.get('command', HOW_TO_MEASURE)}` on "
                   f"{get(r, 'machine', 'description', default='an unrecorded machine')}, {r.get('date', 'undated')}. "
                   "Memory figures are estimated live for the embedded model by `tunelab.core.memory`.")
    else:
        no_figures_note()
    questions, practices, glossary_tab = st.tabs(["Beginner questions", "Best practices", "Glossary"])
    with questions:
        laptop(facts)
        how_long(facts)
        memory_errors(facts)
        how_much_data(facts)
    with practices:
        data_and_memory_practices(facts)
        training_practices(facts)
    with glossary_tab:
        glossary()


page()
