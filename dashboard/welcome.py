"""Lesson 0: what fine-tuning is, the path through the lessons, and the machine the work runs on."""

import streamlit as st

from dashboard import common, course, lessons

def introduction() -> None:
    st.title("TuneLab")
    st.markdown("#### Fine-tune a real language model, one step at a time — and see what each step does.")

    if st.button("Quick start: load the model", type="primary", icon=":material/rocket_launch:"):
        st.switch_page("dashboard/load_model.py")

    left, right = st.columns(2, gap="large")
    with left:
        st.subheader("What is fine-tuning?")
        st.markdown(
            "Think of a **smart student** who has read a whole library: they write well, know a bit about "
            "everything, and can follow instructions. *Fine-tuning* is giving that student a short course in "
            "**one new subject** — a few hundred worked examples — so they answer the way you want.\n\n"
            "Here the student is **SmolLM2-135M-Instruct**, a small but real chat model (135 million "
            "parameters) that ships inside TuneLab and works offline. You will teach it to explain science "
            "like a patient tutor, and measure whether it learned."
        )
    with right:
        st.subheader("Why not train from scratch?")
        st.markdown(
            "Training compute is roughly **6 × parameters × tokens** floating-point operations:\n\n"
            "| SmolLM2-135M | tokens | compute | one H100 |\n"
            "|---|---|---|---|\n"
            "| pre-training | 2 trillion | 1.6 × 10²¹ | ~ 6 weeks |\n"
            "| fine-tuning¹ | 180 thousand | 1.5 × 10¹⁴ | < 1 s |\n\n"
            "Fine-tuning needs about **ten million times less** compute: minutes on a laptop CPU instead of "
            "weeks on a data-centre GPU. (Big models scale the same way: Meta reports 1.3 million GPU-hours "
            "to pre-train Llama 3 8B.)"
        )
        st.caption("¹ 300 examples × 200 tokens × 3 epochs. H100 time at ~400 TFLOP/s sustained.")

    common.lesson_box(lessons.FINE_TUNING)


def the_path() -> None:
    st.subheader("The path")
    st.caption("Six steps, the same six you will find in any fine-tuning project — then two deeper lessons.")
    path = [row for row in course.LESSONS if row.blurb]
    # two columns filled row by row, as a reader reads: 1 | 2, then 3 | 4, ...
    for start in range(0, len(path), 2):
        cols = st.columns(2)
        for col, row in zip(cols, path[start:start + 2]):
            with col.container(border=True):
                st.page_link(row.path, label=f"**{row.title}**", icon=row.icon)
                st.caption(row.blurb)


def this_machine() -> None:
    """The machine training runs on (this one, or the backend's GPU box), from ``Engine.machine``."""
    st.subheader("This machine")
    info = None
    with common.user_errors():
        info = common.machine()
    if info is None:
        return
    if info.get("where") and "RAM" not in info["where"] and not info.get("gpu_name"):
        st.caption(f"Training may use {common.human_bytes(info.get('available'))} here ({info['where']}).")
    a, b, c = st.columns(3)
    a.metric("CPU cores", info["cpu_cores"])
    b.metric("RAM", common.human_bytes(info["ram_total"]))
    b.caption(f"{common.human_bytes(info['ram_available'])} free now")
    if info.get("gpu_name"):
        c.metric("GPU", info["gpu_name"])
        if info.get("gpu_total"):
            c.caption(f"{common.human_bytes(info['gpu_total'])} of GPU memory")
        st.success("A GPU is available: training takes seconds per epoch"
                   + (" (and bf16 mixed precision is supported)." if info.get("bf16") else "."))
    else:
        c.metric("GPU", "none")
        st.info("No GPU here: TuneLab trains on the CPU in fp32. The lesson's model is small enough that a "
                "short run takes minutes.", icon=":material/info:")


def page() -> None:
    introduction()
    the_path()
    # Last, so the text above has painted before the engine looks for a GPU (torch is imported then).
    this_machine()


page()
