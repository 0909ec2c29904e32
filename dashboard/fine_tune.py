"""Lesson 4: start a training run and watch it live: loss, validation loss, learning rate, speed."""

import inspect
from pathlib import Path

import streamlit as st

from core import runs, train
from core.config import CONFIG_DOCS, RunConfig
from dashboard import charts, common, lessons

st.title("4 · Fine-tune")
st.markdown(
    "Training runs in its own worker process (`python -m core train config.yaml`), so closing the tab "
    "or clicking around never stops it. This page starts a run from the settings of lesson 3, then polls "
    "the run's folder every two seconds to draw the loss, the learning rate and the speed as they happen. "
    "The run's name is in the address bar: reload the page, or open it in a second tab, and it reattaches."
)

POLL_S = 2


def find_run(run_id: str | None) -> Path | None:
    """The folder of a run id from the address bar, or None (ids are folder names, nothing more)."""
    if not run_id or any(c in run_id for c in "/\\") or run_id.startswith("."):
        return None
    folder = runs.runs_root() / run_id
    return folder if (folder / "status.json").is_file() else None


def attach(run_dir: Path) -> None:
    st.session_state[common.CURRENT_RUN] = run_dir.name
    st.query_params["run"] = run_dir.name


wanted = st.query_params.get("run") or st.session_state.get(common.CURRENT_RUN)  # the address bar's ?run= wins
run_dir = find_run(wanted)
if wanted and run_dir is None:
    st.warning(f"There is no run called `{wanted}` in `{runs.runs_root()}`. Start a new one below, or pick "
               "one from the list of runs.", icon=":material/search_off:")
    st.session_state.pop(common.CURRENT_RUN, None)
elif run_dir is not None:
    attach(run_dir)  # keep ?run= in the address bar, so a reload or a copied link reattaches

status = None
if run_dir is not None:
    with common.user_errors():
        status = runs.progress(run_dir)
active = bool(status) and status["state"] in runs.ACTIVE


# -- the settings this run will use --------------------------------------------------------------
raw = common.planned_config()  # lesson 3's settings, or the defaults with lessons 1 and 2's choices
with st.container(border=True):
    st.subheader("Start a run")
    left, right = st.columns([3, 2], gap="large")
    with left:
        st.markdown(
            f"- model: `{raw['model']}`\n"
            f"- data: `{raw['data']['path']}`" + (f" ({raw['data']['format']})" if raw["data"].get("format") else "")
            + f", {raw['data']['val_fraction']:.0%} held out for validation\n"
            f"- method: **{raw['method']}**, learning rate **{raw['lr']:.0e}** ({raw['scheduler']}), "
            f"effective batch {raw['batch_size'] * raw['grad_accum']}\n"
            f"- length: " + (f"**{raw['max_steps']} steps**" if raw["max_steps"] else f"**{raw['epochs']:g} epoch{'' if raw['epochs'] == 1 else 's'}**")
        )
        st.caption("These come from **3 · Set up training**" if common.RUN_CONFIG in st.session_state
                   else "Lesson 3 was skipped, so these are the defaults: change them on **3 · Set up training**.")
        name = st.text_input("Run name", placeholder="e.g. lr-5e-5 (optional)", key="ft.name",
                             help="A label for the runs list; a time stamp is added to make the folder name unique.")
    with right:
        st.markdown("**A quick try first?** On a laptop CPU a step of the 135M model takes a few seconds. "
                    "These override lesson 3's values for this run only.")
        max_steps = st.number_input("max_steps (0 = use epochs)", 0, 1_000_000, int(raw["max_steps"]), step=10,
                                    key="ft.max_steps", help=CONFIG_DOCS["max_steps"][0])
        a, b = st.columns(2)
        max_length = a.number_input("max_length", 8, 32768, int(raw["max_length"]), step=64, key="ft.max_length",
                                    help=CONFIG_DOCS["max_length"][0])
        batch_size = b.number_input("batch_size", 1, 4096, int(raw["batch_size"]), key="ft.batch_size",
                                    help=CONFIG_DOCS["batch_size"][0])

    start_col, stop_col, resume_col, _ = st.columns([1, 1, 1, 3])
    start = start_col.button("Start training", type="primary", icon=":material/play_arrow:", key="ft.start",
                             disabled=active, width="stretch",
                             help="Stop the running job first." if active else "Launch a worker with these settings.")
    stop = stop_col.button("Stop", icon=":material/stop:", key="ft.stop", disabled=not active, width="stretch",
                           help="Save a checkpoint after the current step, then end the run as 'stopped'.")
    can_resume = bool(status) and status["state"] in ("stopped", "failed")
    resume = resume_col.button("Resume", icon=":material/replay:", key="ft.resume", disabled=not can_resume,
                               width="stretch", help="Continue a stopped or interrupted run from its last checkpoint.")

if start:
    with common.user_errors():
        cfg = RunConfig.from_dict(raw)
        cfg.set("max_steps", int(max_steps))
        cfg.set("max_length", int(max_length))
        cfg.set("batch_size", int(batch_size))
        cfg.validate("this page")
        new_dir = runs.start(cfg, name.strip() or None)
        attach(new_dir)
        st.rerun()
if stop and run_dir is not None:
    with common.user_errors():
        runs.request_stop(run_dir)
        st.rerun()
if resume and run_dir is not None:
    with common.user_errors():
        runs.launch(run_dir, resume=True)
        st.rerun()


# -- the live view: only this part reruns while the run is going ------------------------------------

def reading(rows: list[dict]) -> list[tuple[str, str]]:
    """What the curves say so far, in words: (kind, message) for st.info / st.warning."""
    signals = runs.curve_signals(rows)
    if signals is None:
        return [("info", "Waiting for a few steps before reading the curves.")]
    out = []
    if signals["overfitting"]:
        out.append(("warning", "**Overfitting?** The validation loss has turned up while the training loss still "
                               "falls: the model is starting to memorise. Fewer steps or epochs would do better."))
    if signals["flat"]:
        out.append(("warning", "**A flat curve.** The loss has hardly moved: the learning rate may be too low "
                               "(try 10× higher on lesson 3)."))
    spikes = signals["spikes"]
    if spikes:
        out.append(("info", f"Spikes at step{'s' if len(spikes) > 1 else ''} {', '.join(map(str, spikes[-5:]))}: "
                            "an unusual batch if the curve recovers; a learning rate too high if they grow."))
    if not out:
        first, last = signals["smoothed"]
        val = signals["validation"]
        out.append(("info", f"The smoothed training loss is {'falling' if last < first else 'not falling'}: "
                            f"{first:.3f} → {last:.3f}"
                            + (f"; validation loss {val[0]:.3f} → {val[1]:.3f}." if val else ".")))
    return out


def figures(rows: list[dict], smoothing: float, total) -> dict:
    """The four live charts, rebuilt only when a new metrics row arrived (most polls find none)."""
    signature = (run_dir.name, len(rows), smoothing, total)
    cached = st.session_state.get("ft.figures")
    if cached is None or cached[0] != signature:
        figs = {"loss": charts.loss_chart(rows, smoothing, total),
                "lr": charts.metric_chart(rows, "lr", "learning rate", "#2f6fdb", fmt=".1e"),
                "grad_norm": charts.metric_chart(rows, "grad_norm", "gradient norm", "#d97706"),
                "speed": charts.metric_chart(rows, "tokens_per_s", "tokens per second", "#16a34a", fmt=",.0f")}
        cached = st.session_state["ft.figures"] = (signature, figs)
    return cached[1]


def live_view() -> None:
    with common.user_errors():
        progress = runs.progress(run_dir)
        rows = runs.read_metrics(run_dir)
        state = progress["state"]
        total = progress.get("total_steps")
        if state in ("queued", "running") and not rows:
            text = "Starting the worker: loading the model and the data…"
        else:
            text = f"{state} · step {progress['step']}" + (f" of {total}" if total else "")
            if state in runs.ACTIVE and progress.get("eta_s") is not None:
                text += f" · about {common.human_seconds(progress['eta_s'])} left"
        st.progress(1.0 if state == "finished" else progress["fraction"], text=text)

        losses = [r for r in rows if r.get("loss") is not None]
        evals = [r for r in rows if r.get("eval_loss") is not None]
        m = st.columns(5)
        m[0].metric("State", state)
        m[1].metric("Step", f"{progress['step']} / {total}" if total else progress["step"])
        m[2].metric("Training loss", f"{losses[-1]['loss']:.4f}" if losses else "—",
                    delta=f"{losses[-1]['loss'] - losses[0]['loss']:+.4f} since step 1" if len(losses) > 1 else None,
                    delta_color="inverse")
        m[3].metric("Validation loss", f"{evals[-1]['eval_loss']:.4f}" if evals else "—")
        m[4].metric("Tokens / s", f"{losses[-1]['tokens_per_s']:,.0f}" if losses else "—")

        if state == "failed":
            st.error(progress.get("error") or "The run failed.", icon=":material/error:")
            st.info(lessons.FAILED_HINT, icon=":material/help:")
            log = run_dir / "log.txt"
            if log.is_file():
                with st.expander("The worker's log (last lines)"):
                    st.code("\n".join(log.read_text(errors="replace").splitlines()[-40:]) or "(empty)", language=None)
        elif state == "stopped":
            st.info("Stopped after a checkpoint. **Resume** continues from it, with no step lost or repeated.",
                    icon=":material/pause:")
        elif state == "finished":
            st.success(f"Finished. The trained model is in `{run_dir / 'final'}`: try it on **5 · Generate** and "
                       "measure it on **6 · Evaluate**.", icon=":material/check_circle:")

        chart_col, text_col = st.columns([3, 2], gap="large")
        with chart_col:
            smoothing = st.slider("Smoothing", 0.0, 0.99, 0.6, 0.01, key="ft.smoothing",
                                  help="An exponential moving average of the raw loss, as in TensorBoard: 0 shows "
                                       "the raw curve, 0.99 a very smooth one.")
            figs = figures(rows, smoothing, total)
            st.plotly_chart(figs["loss"], key="ft.loss_chart", width="stretch")
        with text_col:
            st.markdown("**What the curves say**")
            for kind, message in reading(rows):
                (st.warning if kind == "warning" else st.info)(message)
            common.lesson_box(lessons.LOSS_CURVE)
            common.lesson_box(lessons.VALIDATION_LOSS)

        a, b, c = st.columns(3)
        a.plotly_chart(figs["lr"], key="ft.lr_chart", width="stretch")
        b.plotly_chart(figs["grad_norm"], key="ft.grad_chart", width="stretch")
        c.plotly_chart(figs["speed"], key="ft.speed_chart", width="stretch")
        common.lesson_box(lessons.TRAINING_SIGNALS)

        if (state in runs.ACTIVE) != active:
            st.rerun()  # the run started or ended: redraw the whole page (buttons, polling on or off)


st.header("The run" + (f": `{run_dir.name}`" if run_dir is not None else ""))
if run_dir is None:
    st.info("No run yet. Click **Start training** above, or pick an earlier run from the list below.",
            icon=":material/arrow_upward:")
else:
    # Poll only while the run is active: a finished run's page is still, and costs nothing.
    st.fragment(live_view, run_every=POLL_S if active else None)()

# -- every run, and several overlaid -----------------------------------------------------------------
st.header("Your runs")
common.lesson_box(lessons.RUNS)
all_runs = runs.list_runs()
if not all_runs:
    st.caption(f"No runs yet in `{runs.runs_root()}`.")
else:
    table = [{"run": r["run_id"], "state": r.get("state"),
              "step": f"{r.get('step') or 0} / {r.get('total_steps') or '?'}",
              "updated": (r.get("updated_at") or "").replace("T", " "),
              "error": (r.get("error") or "")[:80]} for r in all_runs]
    st.dataframe(table, hide_index=True, width="stretch", key="ft.runs_table")
    ids = [r["run_id"] for r in all_runs]
    pick_col, open_col = st.columns([3, 1], vertical_alignment="bottom")
    chosen = pick_col.selectbox("Look at a run", ids, index=ids.index(run_dir.name) if run_dir is not None
                                and run_dir.name in ids else 0, key="ft.open_run")
    if open_col.button("Open", key="ft.open", width="stretch") and chosen != (run_dir.name if run_dir else None):
        attach(runs.runs_root() / chosen)
        st.rerun()
    default = [run_dir.name] if run_dir is not None and run_dir.name in ids else ids[:1]
    overlay = st.multiselect("Overlay runs to compare their loss curves", ids, default=default, key="ft.overlay",
                             help="Solid: smoothed training loss. Dotted: validation loss. Compare runs that "
                                  "differ in one setting.")
    if overlay:
        curves = {rid: runs.read_metrics(runs.runs_root() / rid) for rid in overlay}
        st.plotly_chart(charts.runs_overlay_chart(curves, st.session_state.get("ft.smoothing", 0.6)),
                        key="ft.compare_chart", width="stretch")

# -- the loop itself ---------------------------------------------------------------------------------
with st.expander("The training loop itself: `core.train.train`, top to bottom", icon=":material/code:"):
    st.caption("This is the code the worker runs: data, model, then for each optimizer step a forward pass, the "
               "loss, a backward pass, gradient clipping, an AdamW step and the learning-rate schedule, and a "
               "metrics row — the points on the chart above.")
    st.code(inspect.getsource(train.train), language="python", line_numbers=True)

common.next_step("dashboard/generate.py", "Next: 5 · Generate")
