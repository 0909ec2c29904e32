"""Lesson 8: the plugins behind data formats, samplers and evaluators — what is installed, and what failed.

The plugins listed are the engine's (``Engine.plugins``: this machine's, or the GPU box's with a
remote backend); switching, browsing the catalog and installing go through the engine too.
"""

import streamlit as st

from tunelab.core.engine import app_plugins
from dashboard import common, lessons, state

KIND_LABELS = {"data_formats": "data formats", "samplers": "samplers", "evaluators": "evaluators", "backends": "backends"}
STATUS_ICONS = {"loaded": ":material/check_circle:", "failed": ":material/error:", "disabled": ":material/block:"}


def guide_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """docs/plugins.md as ``(intro, [(section title, section markdown)])``, split at ``## `` headings."""
    intro, sections, fenced = [], [], False
    for line in text.splitlines():
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("## "):
            sections.append((line[3:].strip(), []))
        elif not fenced and line.startswith("# ") and not sections and not intro:
            continue  # the document's title: the page has its own
        else:
            (sections[-1][1] if sections else intro).append(line)
    return "\n".join(intro).strip(), [(title, "\n".join(body).strip()) for title, body in sections]


def plugin_card(plugin: dict) -> None:
    """One plugin: status, source, version, its on/off switch, errors, contributions, hooks, clashes."""
    builtin = plugin["source"] == "builtin"
    with st.container(border=True):
        head, toggle_col = st.columns([5, 1])
        head.markdown(
            f"{STATUS_ICONS.get(plugin['status'], '')} **{plugin['name']}**"
            f" · {plugin['status']} · source: `{plugin['source']}`"
            + (f" · version {plugin['version']}" if plugin.get("version") else "")
        )
        enabled = plugin["status"] != "disabled"
        new = toggle_col.toggle("Enabled", value=enabled, key=f"plugin.enabled.{plugin['name']}", disabled=builtin,
                                help="Built-in plugins are essential and always on." if builtin else
                                "Switch off to skip this plugin from the next load on (saved in "
                                "$TUNELAB_HOME/plugins.json).")
        if not builtin and new != enabled:
            with common.user_errors():
                state.engine().set_plugin_enabled(plugin["name"], new)
                common.plugin_items.clear()  # the pages' lists of formats, samplers and evaluators
                st.rerun()
        if plugin.get("error"):
            (st.error if plugin["status"] == "failed" else st.caption)(plugin["error"])
        for failure in plugin.get("failures") or []:  # its code raised since it loaded (a few, counted)
            st.warning(failure, icon=":material/bug_report:")
        contributions = [f"{KIND_LABELS.get(k, k)}: " + ", ".join(f"`{n}`" for n in names)
                         for k, names in (plugin.get("contributes") or {}).items() if names]
        if contributions:
            st.markdown("Contributes " + " · ".join(contributions))
        if plugin.get("hooks"):
            st.caption("Hooks: " + ", ".join(plugin["hooks"]))
        for clash in plugin.get("clashes") or []:
            st.warning(clash, icon=":material/merge_type:")


def by_kind(listing: list[dict], items: dict[str, list[dict]]) -> None:
    with st.expander("Everything registered, by kind"):
        for kind, label in KIND_LABELS.items():
            st.markdown(f"**{label.capitalize()}**")
            if kind in items:
                rows = [{"name": o["name"], "description": o["description"], "plugin": o["owner"],
                         "params": ", ".join(p["name"] for p in o["params"]) or "—"} for o in items[kind]]
            else:  # no verb lists these one by one: the plugins' own listing names them
                rows = [{"name": name, "plugin": p["name"]} for p in listing
                        for name in (p.get("contributes") or {}).get(kind, [])]
            if rows:
                st.dataframe(rows, hide_index=True, width="stretch")
            else:
                st.caption("none loaded")


def installed_tab() -> None:
    engine = state.engine()
    listing = engine.plugins()
    items = {kind: common.plugin_items(kind) for kind in ("data_formats", "samplers", "evaluators")}
    m = st.columns(4)
    m[0].metric("Plugins", len(listing))
    m[1].metric("Data formats", len(items["data_formats"]))
    m[2].metric("Samplers", len(items["samplers"]))
    m[3].metric("Evaluators", len(items["evaluators"]))
    failed = [p for p in listing if p["status"] == "failed"]
    if failed:
        st.warning(f"{len(failed)} plugin(s) failed to load and were skipped; the rest of TuneLab works without "
                   "them. Their errors are below. If a plugin breaks TuneLab itself, start it with "
                   "`TUNELAB_LOAD_PLUGINS=` (empty: built-ins only) and switch the plugin off here.",
                   icon=":material/warning:")
    clashes = [{"plugin": p["name"], "clash": c} for p in listing for c in p.get("clashes") or []]
    if clashes:
        with st.expander(f":material/merge_type: Name clashes ({len(clashes)})", expanded=True):
            st.markdown("Two plugins used the same name. The one called first keeps it (the built-ins are always "
                        "called first); the other plugin's contribution of that name is skipped. Rename to fix it.")
            st.dataframe(clashes, hide_index=True, width="stretch")
    else:
        st.caption("No name clashes: every plugin, format, sampler and evaluator name is unique.")
    if engine.name != "local":
        where_each_plugin_is(listing)
    for plugin in listing:
        plugin_card(plugin)
    by_kind(listing, items)


def where_each_plugin_is(box: list[dict]) -> None:
    """With a remote backend: the box's plugins (they train, generate, evaluate) against the app's own."""
    app = {p["name"]: p for p in app_plugins()}
    on_box = {p["name"]: p for p in box}
    rows = [{"plugin": name, "on the GPU box": on_box[name]["status"] if name in on_box else "—",
             "in this app": app[name]["status"] if name in app else "—"} for name in sorted(set(app) | set(on_box))]
    st.markdown("**Where each plugin is.** The GPU box's plugins do the work (data, sampling, evaluation); this "
                "app's own only read what the box sends. A plugin the box lacks must be installed on the box.")
    st.dataframe(rows, hide_index=True, width="stretch", key="plugins.where")


def install_result(package: str) -> None:
    result = st.session_state.get(state.CATALOG_RESULT.format(package=package))
    if not result:
        return
    shown = {p["name"] for p in state.engine().plugins()}
    if not result["ok"]:
        st.error(result["message"], icon=":material/error:")
    elif result["restart_needed"] or not any(n in shown for n in result["plugins"]):
        st.warning(f"{package} {result['installed']} is installed, but this process does not see "
                   "its plugin yet: restart TuneLab to load it.", icon=":material/restart_alt:")
    else:
        st.success(result["message"], icon=":material/check_circle:")
    with st.expander("pip's output"):
        st.code(" ".join(result["command"]) + "\n\n" + result["output"], language="text")


def catalog_entry(entry: dict, loaded: dict) -> None:
    package = entry["package"]
    with st.container(border=True):
        head, badge = st.columns([5, 1])
        head.markdown(f"**{package}** · {', '.join(KIND_LABELS.get(k, k) for k in entry['kinds'])}")
        if entry["installed"]:
            badge.badge(f"installed {entry['installed']}", icon=":material/check_circle:", color="green")
        else:
            badge.badge("not installed", icon=":material/download:", color="gray")
        st.markdown(entry["summary"])
        st.caption(f"License {entry['license']} · repository: {entry['repo']} · reviewed {entry['reviewed']}"
                   f" · installs `{entry['install']}`")
        if entry["installed"]:
            for name in entry["plugins"] or [package]:
                status = loaded.get(name, {}).get("status")
                if status == "loaded":
                    st.caption(f"Plugin `{name}` is loaded: its contributions are on the other pages.")
                elif status:
                    st.caption(f"Plugin `{name}` is {status}: {loaded[name].get('error') or ''} "
                               "(see the Installed tab).")
                else:
                    st.warning(f"Plugin `{name}` is installed but not loaded in this process: restart "
                               "TuneLab to load it.", icon=":material/restart_alt:")
        else:
            st.warning(
                "A plugin is Python code that runs inside TuneLab **with the app's rights**: it can read and "
                "write your files, use the network and run programs as you. Catalog entries were reviewed on "
                "the date shown, which is not a guarantee. Install only what you trust.", icon=":material/gpp_maybe:")
            understood = st.checkbox("I understand that this plugin runs code with the app's rights",
                                     key=f"catalog.understand.{package}")
            if st.button(f"Install {package}", key=f"catalog.install.{package}", disabled=not understood,
                         help="Runs pip install with the catalog's spec, in TuneLab's Python environment."):
                with common.user_errors(), st.spinner(f"pip install {entry['install']} …"):
                    st.session_state[state.CATALOG_RESULT.format(package=package)] = state.engine().install_plugin(package)
                    common.plugin_items.clear()
                    st.rerun()
        install_result(package)


def catalog_tab() -> None:
    st.markdown(
        "Community plugins reviewed by TuneLab's maintainers, from `catalog.json` in the repository (it works "
        "offline). How to write one, and how to get it listed, is in **docs/plugins.md** (and on the next tab). "
        "Anything else that declares an entry point in the `tunelab` group is picked up too, once you install "
        "it with pip yourself, as is any `.py` file in `$TUNELAB_PLUGINS_DIR`."
    )
    with common.user_errors():
        engine = state.engine()
        entries = engine.catalog()
        loaded = {p["name"]: p for p in engine.plugins()}
        if not entries:
            st.info("The catalog is empty.")
        for entry in entries:
            catalog_entry(entry, loaded)
    st.caption("To get a plugin listed, open a pull request adding it to `catalog.json`: see *Getting into the "
               "catalog* in docs/plugins.md.")


def write_tab() -> None:
    guide = common.REPO / "docs" / "plugins.md"
    template = common.REPO / "docs" / "plugin-template"
    st.markdown(
        "Write a data format for your own files, a new way to pick the next token, or a metric. A plugin is a "
        "Python module with a few functions marked as hook implementations; it needs only `pluggy`. Start from "
        "the **template** below (copy each file), read the **guide** for every hook's contract, and see "
        "`examples/tunelab-science-extras/` for a complete package with one plugin of each kind."
    )
    st.subheader("The template")
    st.caption(f"`{template.relative_to(common.REPO)}/`: copy the files, rename `tunelab_myplugin`, then "
               "`pip install -e .` into TuneLab's environment and run `python -m tunelab plugins`.")
    languages = {".toml": "toml", ".py": "python", ".md": "markdown"}
    files = sorted((p for p in template.glob("*") if p.is_file() and p.suffix in languages),
                   key=lambda p: (p.suffix != ".toml", p.suffix == ".md", p.name.startswith("test_"), p.name))
    for path in files:
        st.markdown(f"**`{path.name}`**")
        st.code(path.read_text(encoding="utf-8"), language=languages[path.suffix])
    st.subheader("The guide")
    if guide.is_file():
        intro, sections = guide_sections(guide.read_text(encoding="utf-8"))
        st.markdown(intro)
        for title, body in sections:
            with st.expander(title):
                st.markdown(body)
    else:
        st.info("docs/plugins.md is missing from this copy of TuneLab.")


def page() -> None:
    common.title(__file__)
    st.markdown(
        "Everything TuneLab can read, every way it can pick the next token, every score it can compute comes "
        "from a **plugin**. The built-in ones are written exactly as yours would be: a Python module with a few "
        "functions marked as *hook implementations* (the contract is `core/hookspecs.py`)."
    )
    common.lesson_box(lessons.PLUGINS)
    installed, catalog, write = st.tabs(["Installed", "Catalog", "Write your own"])
    with installed, common.user_errors():
        installed_tab()
    with catalog:
        catalog_tab()
    with write:
        write_tab()


page()
