"""Lesson 4: start a training run and watch it live: loss, validation loss, learning rate, speed.

The run is the planned one (``state.plan()``); the engine starts, stops, resumes and deletes runs and
reads their progress and metrics (``start_run``, ``run_progress``, ``run_metrics``, ``delete_run``, ...),
wherever they run. The page follows the newest run unless the address names one; the runs list is
live while anything trains.
"""

import streamlit as st

from tunelab.core.config import CONFIG_DOCS, value_problem
from tunelab.core.curves import curve_signals
from tunelab.core.engine import ACTIVE, run_model
from dashboard import charts, common, lessons, state

POLL_S = 2


def attach(run_id: str) -> None:
    """Look at this run, and keep it in the address bar, so a reload or a copied link reattaches."""
    state.set_current_run(run_id)
    st.query_params["run"] = run_id


def wanted_run() -> str | None:
    """The run in the address bar (``?run=``, it wins), the session's, else the newest; None when there is none."""
    wanted = st.query_params.get("run") or state.current_run()
    run_id = None
    with common.user_errors():
        if not wanted:  # nothing chosen: follow the newest run (one started from another tab or the CLI too)
            newest = state.engine().list_runs()[:1]
            wanted = newest[0]["run_id"] if newest else None
        run_id = state.engine().find_run(wanted)
    if wanted and run_id is None:
        st.warning(f"There is no run called `{wanted}` where this app's runs are kept. Start a new one below, or "
                   "pick one from the list of runs.", icon=":material/search_off:")
        state.set_current_run(None)
    elif run_id is not None:
        attach(run_id)
    return run_id


def planned_run_text(cfg) -> str:
    length = (f"**{cfg.max_steps} steps**" if cfg.max_steps
              else f"**{cfg.epochs:g} epoch{'' if cfg.epochs == 1 else 's'}**")
    return (f"- model: `{cfg.model}`\n"
            f"- data: `{common.plain_path(cfg.data.path)}`" + (f" ({cfg.data.format})" if cfg.data.format else "")
            + f", {cfg.data.val_fraction:.0%} held out for validation\n"
            f"- method: **{cfg.method}**, learning rate **{cfg.lr:.0e}** ({cfg.scheduler}), "
            f"effective batch {state.engine().plan_summary(cfg.to_dict(), None)['effective_batch']}"
            + (f" over **{cfg.workers} workers** in data parallel" if cfg.workers > 1 else "") + "\n"
            f"- length: {length}")


def quick_try() -> None:
    """Three keys of the planned run, here too: a short first run is the usual first step."""
    st.markdown("**A quick try first?** On a laptop CPU a step of the 135M model takes a few seconds. "
                "These change the planned run (lesson 3 shows the same keys).")
    cfg = state.plan()
    # No bounds on the boxes: whatever is typed reaches the engine's rule, and a refusal is said beside it.
    max_steps = st.number_input("max_steps (0 = use epochs)", value=int(cfg.max_steps), step=10,
                                key="ft.max_steps", help=CONFIG_DOCS["max_steps"][0])
    common.refused("max_steps", max_steps, cfg.max_steps)
    a, b = st.columns(2)
    max_length = a.number_input("max_length", value=int(cfg.max_length), step=64, key="ft.max_length",
                                help=CONFIG_DOCS["max_length"][0])
    common.refused("max_length", max_length, cfg.max_length, a)
    batch_size = b.number_input("batch_size", value=int(cfg.batch_size), step=1, key="ft.batch_size",
                                help=CONFIG_DOCS["batch_size"][0])
    common.refused("batch_size", batch_size, cfg.batch_size, b)
    changes = {k: v for k, v in (("max_steps", max_steps), ("max_length", max_length), ("batch_size", batch_size))
               if v != cfg.get(k) and not value_problem(k, v)}
    if changes:
        with common.user_errors():
            state.update_plan(**changes)


def start_panel(run_id: str | None, status: dict | None) -> None:
    """The planned run, and Start / Stop / Resume."""
    active = bool(status) and status["state"] in ACTIVE
    with st.container(border=True):
        st.subheader("Start a run")
        left, right = st.columns([3, 2], gap="large")
        with right:
            quick_try()
        with left:
            st.markdown(planned_run_text(state.plan()))
            st.caption("These come from **3 · Set up training**" if st.session_state.get(state.PLAN_SET_UP)
                       else "Lesson 3 was skipped, so these are the defaults: change them on **3 · Set up training**.")
            name = st.text_input("Run name", placeholder="e.g. lr-5e-5 (optional)", key="ft.name",
                                 help="A label for the runs list; a time stamp is added to make the folder name unique.")
            common.show_cautions(state.plan(), common.data_report(state.plan()))
        start_col, stop_col, resume_col, _ = st.columns([1, 1, 1, 3])
        start = start_col.button("Start training", type="primary", icon=":material/play_arrow:", key="ft.start",
                                 disabled=active, width="stretch",
                                 help="Stop the running job first." if active else "Launch a worker with these settings.")
        stop = stop_col.button("Stop", icon=":material/stop:", key="ft.stop", disabled=not active, width="stretch",
                               help="End the run as 'stopped' after the current step, saving a checkpoint of it "
                                    "(none when it has not trained a step yet).")
        can_resume = bool(status) and status["state"] in ("stopped", "failed")
        resume = resume_col.button("Resume", icon=":material/replay:", key="ft.resume", disabled=not can_resume,
                                   width="stretch", help="Continue a stopped or interrupted run from its last checkpoint.")
    engine = state.engine()
    if start:
        with common.user_errors():
            attach(engine.start_run(state.plan().to_dict(), name.strip() or None, owner=state.owner()))
            st.rerun()
    if stop and run_id is not None:
        with common.user_errors():
            engine.stop_run(run_id, owner=state.owner())
            st.rerun()
    if resume and run_id is not None:
        with common.user_errors():
            engine.resume_run(run_id, owner=state.owner())
            st.rerun()


def reading(rows: list[dict]) -> list[tuple[str, str]]:
    """What the curves say so far, in words: (kind, message) for st.info / st.warning."""
    signals = curve_signals(rows)
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


def figures(run_id: str, rows: list[dict], smoothing: float, total) -> dict:
    """The four live charts, rebuilt only when a new metrics row arrived (most polls find none)."""
    signature = (run_id, len(rows), smoothing, total)
    cached = st.session_state.get(state.FT_FIGURES)
    if cached is None or cached[0] != signature:
        figs = {"loss": charts.loss_chart(rows, smoothing, total),
                "lr": charts.metric_chart(rows, "lr", "learning rate", "#2f6fdb", fmt=".1e"),
                "grad_norm": charts.metric_chart(rows, "grad_norm", "gradient norm", "#d97706"),
                "speed": charts.metric_chart(rows, "tokens_per_s", "tokens per second", "#16a34a", fmt=",.0f")}
        cached = st.session_state[state.FT_FIGURES] = (signature, figs)
    return cached[1]


def progress_text(progress: dict, rows: list[dict]) -> str:
    state_, total = progress["state"], progress.get("total_steps")
    if state_ == "queued" and progress.get("queue_ahead") is not None:
        ahead = progress["queue_ahead"]
        return f"queued, {ahead} ahead" if ahead else "queued, next to start"
    workers = int(progress.get("workers") or 1)
    if state_ in ("queued", "running") and not rows:
        return ("Starting the worker: loading the model and the data…" if workers == 1 else
                f"Starting {workers} workers (a data-parallel group on Ray): loading the model and the data…")
    text = f"{state_} · step {progress['step']}" + (f" of {total}" if total else "")
    if workers > 1:
        text += f" · {workers} workers in data parallel"
    if state_ in ACTIVE and progress.get("eta_s") is not None:
        text += f" · about {common.human_seconds(progress['eta_s'])} left"
    return text


def metrics_row(progress: dict, rows: list[dict]) -> None:
    total = progress.get("total_steps")
    losses = [r for r in rows if r.get("loss") is not None]
    evals = [r for r in rows if r.get("eval_loss") is not None]
    m = st.columns(5)
    m[0].metric("State", progress["state"])
    m[1].metric("Step", f"{progress['step']} / {total}" if total else progress["step"])
    m[2].metric("Training loss", f"{losses[-1]['loss']:.4f}" if losses else "—",
                delta=f"{losses[-1]['loss'] - losses[0]['loss']:+.4f} since step 1" if len(losses) > 1 else None,
                delta_color="inverse")
    m[3].metric("Validation loss", f"{evals[-1]['eval_loss']:.4f}" if evals else "—")
    m[4].metric("Tokens / s", f"{losses[-1]['tokens_per_s']:,.0f}" if losses else "—")


def outcome(run_id: str, progress: dict) -> None:
    state_ = progress["state"]
    if state_ == "failed":
        st.error(progress.get("error") or "The run failed.", icon=":material/error:")
        st.info(lessons.FAILED_HINT, icon=":material/help:")
        log = state.engine().run_log(run_id, 40)
        if log:
            with st.expander("The worker's log (last lines)"):
                st.code(log, language=None)
    elif state_ == "stopped":
        st.info(stopped_text(progress), icon=":material/pause:")
    elif state_ == "finished":
        st.success(f"Finished. The trained model is `{run_model(run_id)}` (the run's final/ folder): try it on "
                   "**5 · Generate** and measure it on **6 · Evaluate**.", icon=":material/check_circle:")


def stopped_text(progress: dict) -> str:
    """What a stopped run saved, and so what Resume will do: true to the checkpoint that is (or is not) there."""
    step, checkpoint = progress.get("step") or 0, progress.get("checkpoint")
    if checkpoint:
        saved = checkpoint.replace("\\", "/").rsplit("/", 1)[-1].replace("step-", "step ")
        return (f"Stopped at step {step}, with a checkpoint of {saved}. **Resume** continues from it, with no step "
                "lost or repeated.")
    if step:
        return (f"Stopped at step {step}, but no checkpoint was saved, so there is nothing to continue from: "
                "**Resume** starts this run again from step 0.")
    return ("Stopped before the first training step, so no checkpoint was saved: **Resume** starts this run from "
            "step 0, the same as starting it anew.")


def live_view(run_id: str, was_active: bool) -> None:
    """Progress, numbers, what the curves say, and the charts; a fragment polled while the run is active."""
    with common.user_errors():
        engine = state.engine()
        progress, rows = engine.run_progress(run_id), engine.run_metrics(run_id)
        state_ = progress["state"]
        st.progress(1.0 if state_ == "finished" else progress["fraction"], text=progress_text(progress, rows))
        metrics_row(progress, rows)
        outcome(run_id, progress)
        chart_col, text_col = st.columns([3, 2], gap="large")
        with chart_col:
            smoothing = st.slider("Smoothing", 0.0, 0.99, 0.6, 0.01, key="ft.smoothing",
                                  help="An exponential moving average of the raw loss, as in TensorBoard: 0 shows "
                                       "the raw curve, 0.99 a very smooth one.")
            figs = figures(run_id, rows, smoothing, progress.get("total_steps"))
            common.chart(figs["loss"], key="ft.loss_chart")
        with text_col:
            st.markdown("**What the curves say**")
            for kind, message in reading(rows):
                (st.warning if kind == "warning" else st.info)(message)
            common.lesson_box(lessons.LOSS_CURVE)
            common.lesson_box(lessons.VALIDATION_LOSS)
        a, b, c = st.columns(3)
        common.chart(figs["lr"], key="ft.lr_chart", container=a)
        common.chart(figs["grad_norm"], key="ft.grad_chart", container=b)
        common.chart(figs["speed"], key="ft.speed_chart", container=c)
        common.lesson_box(lessons.TRAINING_SIGNALS)
        if (state_ in ACTIVE) != was_active:
            st.rerun()  # the run started or ended: redraw the whole page (buttons, polling on or off)


def runs_list(run_id: str | None) -> None:
    """Every run, live while any is active (state, steps, disk): one to open, several to overlay, one to delete."""
    st.header("Your runs")
    common.lesson_box(lessons.RUNS)
    engine = state.engine()
    all_runs = []
    with common.user_errors():
        all_runs = engine.list_runs()
    if not all_runs:
        st.caption("No runs yet.")
        return
    any_active = any(r.get("state") in ACTIVE for r in all_runs)

    def live() -> None:
        runs_table(run_id, any_active)

    st.fragment(live, run_every=POLL_S if any_active else None)()


def runs_table(run_id: str | None, was_active: bool) -> None:
    engine = state.engine()
    all_runs = engine.list_runs()
    if not all_runs:
        st.caption("No runs yet.")
        return
    table = [{"run": r["run_id"], "state": r.get("state"),
              "step": f"{r.get('step') or 0} / {r.get('total_steps') or '?'}",
              "disk": common.human_bytes(r.get("disk_bytes")),
              "updated": (r.get("updated_at") or "").replace("T", " "),
              "note": (r.get("error") or "")[:80]} for r in all_runs]
    st.dataframe(table, hide_index=True, width="stretch", key="ft.runs_table")
    total = sum(r.get("disk_bytes") or 0 for r in all_runs)
    st.caption(f"{len(all_runs)} run{'s' if len(all_runs) != 1 else ''}, {common.human_bytes(total)} on disk. A "
               "finished run keeps its trained model (final/); a stopped one its checkpoints (about three times "
               "the model for full fine-tuning: the weights and AdamW's two moments).")
    ids = [r["run_id"] for r in all_runs]
    follow(run_id, ids)
    pick_col, open_col, delete_col = st.columns([3, 1, 1], vertical_alignment="bottom")
    chosen = pick_col.selectbox("Look at a run", ids, key="ft.open_run")
    if open_col.button("Open", key="ft.open", width="stretch") and chosen != run_id:
        attach(chosen)
        st.rerun(scope="app")
    if delete_col.button("Delete…", key="ft.delete", width="stretch", icon=":material/delete:",
                         help="Delete the chosen run's folder: its model, checkpoints, exports and evaluation. "
                              "A run that is still training must be stopped first."):
        st.session_state[state.FT_DELETING] = chosen
    confirm_delete({r["run_id"]: r for r in all_runs}, run_id)
    overlay = st.multiselect("Overlay runs to compare their loss curves", ids, key="ft.overlay",
                             help="Solid: smoothed training loss. Dotted: validation loss. Compare runs that "
                                  "differ in one setting.")
    if overlay:
        with common.user_errors():
            curves = {rid: engine.run_metrics(rid) for rid in overlay}
            common.chart(charts.runs_overlay_chart(curves, st.session_state.get("ft.smoothing", 0.6)),
                         key="ft.compare_chart")
    if any(r.get("state") in ACTIVE for r in all_runs) != was_active:
        st.rerun(scope="app")  # a run started or ended: polling on or off


def follow(run_id: str | None, ids: list[str]) -> None:
    """Keep the picker and the overlay on the run the page shows, and on real runs only (before they are drawn)."""
    moved = st.session_state.get(state.FT_FOLLOWED) != run_id
    if moved or st.session_state.get("ft.open_run") not in ids:
        st.session_state["ft.open_run"] = run_id if run_id in ids else ids[0]
    overlay = [rid for rid in st.session_state.get("ft.overlay", []) if rid in ids]
    if moved and run_id in ids and run_id not in overlay:
        overlay.append(run_id)
    st.session_state["ft.overlay"] = overlay if (overlay or not moved) else ids[:1]
    st.session_state[state.FT_FOLLOWED] = run_id


def confirm_delete(by_id: dict, run_id: str | None) -> None:
    """The question before a delete, and the delete: the engine refuses a live run with the reason."""
    target = st.session_state.get(state.FT_DELETING)
    if target not in by_id:
        st.session_state.pop(state.FT_DELETING, None)
        return
    run = by_id[target]
    if run.get("state") in ACTIVE:
        st.error(f"Run `{target}` is {run['state']}: stop it first, then delete it.", icon=":material/block:")
        st.session_state.pop(state.FT_DELETING, None)
        return
    with st.container(border=True):
        st.warning(f"Delete run `{target}` ({run.get('state')}, step {run.get('step') or 0}) and everything in its "
                   f"folder: {common.human_bytes(run.get('disk_bytes'))}, its trained model, checkpoints, exports "
                   "and evaluation included? This cannot be undone.", icon=":material/delete_forever:")
        yes, no, _ = st.columns([1, 1, 3])
        if yes.button("Yes, delete", type="primary", key="ft.delete_yes", width="stretch"):
            freed = None
            with common.user_errors():
                freed = state.engine().delete_run(target, owner=state.owner())["freed_bytes"]
            st.session_state.pop(state.FT_DELETING, None)
            if freed is not None:
                st.toast(f"Deleted {target}: {common.human_bytes(freed)} freed.", icon=":material/delete:")
                if target == run_id:
                    state.set_current_run(None)
                    st.query_params.pop("run", None)
                st.rerun(scope="app")
        if no.button("Cancel", key="ft.delete_no", width="stretch"):
            st.session_state.pop(state.FT_DELETING, None)
            st.rerun()


def the_loop() -> None:
    loop = state.engine().loop_source()
    with st.expander(f"The training step itself: `{loop['name']}`, top to bottom", icon=":material/code:"):
        st.caption("This is the code the worker runs for every optimizer step: for each micro-batch a forward "
                   "pass and the loss, a backward pass; then gradient clipping, an AdamW step and the learning-rate "
                   "schedule. Around it, `tunelab.core.train.train` loads the data and the model, writes a metrics row "
                   "after each step (the points on the chart above), validates, checkpoints and stops when asked.")
        st.code(loop["source"], language="python", line_numbers=True)


def page() -> None:
    common.title(__file__)
    st.markdown(
        "Training runs in its own worker process (`python -m tunelab train config.yaml`), so closing the tab "
        "or clicking around never stops it. This page starts a run from the settings of lesson 3, then polls "
        "the run's folder every two seconds to draw the loss, the learning rate and the speed as they happen. "
        "The run's name is in the address bar: reload the page, or open it in a second tab, and it reattaches."
    )
    run_id = wanted_run()
    status = None
    if run_id is not None:
        with common.user_errors():
            status = state.engine().run_progress(run_id)
    start_panel(run_id, status)
    active = bool(status) and status["state"] in ACTIVE
    st.header("The run" + (f": `{run_id}`" if run_id is not None else ""))
    if run_id is None:
        st.info("No run yet. Click **Start training** above, or pick an earlier run from the list below.",
                icon=":material/arrow_upward:")
    else:
        # Poll only while the run is active: a finished run's page is still, and costs nothing.
        def the_run() -> None:
            live_view(run_id, active)

        st.fragment(the_run, run_every=POLL_S if active else None)()
    runs_list(run_id)
    the_loop()
    common.next_step(__file__)


page()
