"""Lesson 8: the plugins behind data formats, samplers and evaluators — what is installed, and what failed."""

import streamlit as st

from dashboard import common, lessons

st.title("8 · Plugins")
st.markdown(
    "Everything TuneLab can read, every way it can pick the next token, every score it can compute comes "
    "from a **plugin**. The built-in ones are written exactly as yours would be: a Python module with a few "
    "functions marked as *hook implementations* (the contract is `core/hookspecs.py`)."
)
common.lesson_box(lessons.PLUGINS)

KIND_LABELS = {"data_formats": "data formats", "samplers": "samplers", "evaluators": "evaluators"}
STATUS_ICONS = {"loaded": ":material/check_circle:", "failed": ":material/error:", "disabled": ":material/block:"}

installed, catalog, write = st.tabs(["Installed", "Catalog", "Write your own"])

with installed:
    reg = common.registry()
    listing = reg.listing()
    counts = {k: len(reg.items(k)) for k in KIND_LABELS}
    m = st.columns(4)
    m[0].metric("Plugins", len(listing))
    m[1].metric("Data formats", counts["data_formats"])
    m[2].metric("Samplers", counts["samplers"])
    m[3].metric("Evaluators", counts["evaluators"])
    failed = [p for p in listing if p["status"] == "failed"]
    if failed:
        st.warning(f"{len(failed)} plugin(s) failed to load and were skipped; the rest of TuneLab works without "
                   "them. Their errors are below.", icon=":material/warning:")

    for plugin in listing:
        builtin = plugin["source"] == "builtin"
        with st.container(border=True):
            head, toggle_col = st.columns([5, 1])
            head.markdown(
                f"{STATUS_ICONS.get(plugin['status'], '')} **{plugin['name']}**"
                f" · {plugin['status']} · source: `{plugin['source']}`"
                + (f" · version {plugin['version']}" if plugin.get("version") else "")
            )
            enabled = plugin["status"] != "disabled"
            new = toggle_col.toggle("Enabled", value=enabled, key=f"plugin.enabled.{plugin['name']}",
                                    disabled=builtin,
                                    help="Built-in plugins are essential and always on." if builtin else
                                    "Switch off to skip this plugin from the next load on (saved in "
                                    "$TUNELAB_HOME/plugins.json).")
            if not builtin and new != enabled:
                with common.user_errors():
                    from core.registry import set_enabled

                    set_enabled(plugin["name"], new)
                    common.reload_registry()
                    st.rerun()
            if plugin.get("error"):
                (st.error if plugin["status"] == "failed" else st.caption)(plugin["error"])
            contributions = [f"{KIND_LABELS[k]}: " + ", ".join(f"`{n}`" for n in names)
                             for k, names in (plugin.get("contributes") or {}).items() if names]
            if contributions:
                st.markdown("Contributes " + " · ".join(contributions))
            if plugin.get("hooks"):
                st.caption("Hooks: " + ", ".join(plugin["hooks"]))
            for clash in plugin.get("clashes") or []:
                st.warning(clash, icon=":material/merge_type:")

    with st.expander("Everything registered, by kind"):
        for kind, label in KIND_LABELS.items():
            st.markdown(f"**{label.capitalize()}**")
            rows = [{"name": name, "description": obj.description, "plugin": reg.owner(kind, name),
                     "params": ", ".join(p["name"] for p in obj.params) or "—"}
                    for name, obj in reg.items(kind).items()]
            if rows:
                st.dataframe(rows, hide_index=True, width="stretch")
            else:
                st.caption("none loaded")

with catalog:
    st.markdown(
        "A catalog of community plugins you can install with pip is coming to this tab. Until then, any "
        "package that declares an entry point in the `tunelab` group is picked up on the next start, and any "
        "`.py` file in `$TUNELAB_PLUGINS_DIR` too. See **docs/plugins.md**."
    )

with write:
    st.markdown(
        "A guided editor for writing your own data format, sampler or evaluator is coming to this tab. Until "
        "then, **docs/plugins.md** walks through a complete plugin; the hooks and what each one registers are "
        "documented in `core/hookspecs.py`. A plugin needs only `pluggy`:"
    )
    st.code('''import pluggy
from types import SimpleNamespace

hookimpl = pluggy.HookimplMarker("tunelab")


@hookimpl
def register_samplers(register):
    register(SimpleNamespace(
        name="cold",
        description="Sampling at a low temperature: nearly greedy, a little variety.",
        params=[{"name": "temperature", "type": "float", "default": 0.3, "min": 0.05, "max": 1.0,
                 "help": "Lower = more predictable."}],
        generation_kwargs=lambda temperature: {"do_sample": True, "temperature": temperature},
    ))''', language="python")
