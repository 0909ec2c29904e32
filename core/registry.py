"""The plugin manager: discovers plugins, validates what they register, isolates failures.

Isolation has one mechanism, :meth:`Registry.guard`: every call into a plugin's code (a format's
``sniff``/``load``/``iter_records``, a sampler's settings and logits processors, an evaluator, a
backend's ``create``, a lifecycle hook) runs inside it. A failure there becomes a
:class:`PluginError` (a ``UserError``: one line on the CLI with exit 2, an error box on a page)
naming the plugin, the contribution, where it failed and the exception's type, and is recorded in
:attr:`Registry.failures` (a few per plugin; the rest are counted).

Load order (DESIGN.md): entry points of group ``tunelab``, then ``.py`` files
in ``$TUNELAB_PLUGINS_DIR``, then the built-ins in ``plugins/``. pluggy calls
the last registered first, so the built-ins are called first and win name
clashes; the clash is recorded on the loser.

Environment:
- ``TUNELAB_LOAD_PLUGINS``: comma list of plugin names to load (besides the
  built-ins); set but empty means built-ins only.
- ``TUNELAB_STRICT_PLUGINS=1``: re-raise plugin errors instead of recording them.
- ``$TUNELAB_HOME/plugins.json``: ``{"disabled": [names]}``, written by the
  dashboard's enable/disable switches.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pluggy

from . import __version__, hookspecs
from .errors import UserError
from .paths import tunelab_home

BUILTIN_MODULES = ("tunelab.plugins.formats", "tunelab.plugins.samplers", "tunelab.plugins.evaluators", "tunelab.plugins.backends")
KINDS = ("data_formats", "samplers", "evaluators", "backends")
PARAM_TYPES = ("int", "float", "bool", "str", "choice")
NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]{0,63}$")
# The same rule in words, for the hookspec, the guide and the error message.
NAME_RULE = "a lowercase letter, then up to 63 lowercase letters, digits, '_' or '-' (e.g. 'qa_jsonl')"
FAILURES_PER_PLUGIN = 5  # failures kept per plugin; later ones are counted
KIND_WORDS = {"data_formats": "format", "samplers": "sampler", "evaluators": "evaluator", "backends": "backend",
              "hooks": "hook"}

# Attributes each kind must have: (name, check, what it should be).
_REQUIRED = {
    "data_formats": [("extensions", lambda v: isinstance(v, (list, tuple)) and all(isinstance(e, str) for e in v), "a list of file suffixes"),
                     ("sniff", callable, "a function sniff(path, head) -> bool"),
                     ("load", callable, "a function load(path, **params) -> datasets.Dataset")],
    "samplers": [("generation_kwargs", callable, "a function generation_kwargs(**params) -> dict")],
    "evaluators": [("higher_is_better", lambda v: isinstance(v, bool), "True or False"),
                   ("evaluate", callable, "a function evaluate(samples, context, **params) -> dict")],
    "backends": [("create", callable, "a function create(settings) -> tunelab.core.engine.Engine")],
}


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (whitespace collapsed, at most 300 characters of message)."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class PluginError(UserError):
    """A plugin's own code failed: not the user's data or settings, and not TuneLab.

    ``plugin`` (its name), ``kind`` (``data_formats`` ... or ``hooks``), ``contribution`` (the
    format, sampler, evaluator, backend or hook), ``where`` (the function that failed) and
    ``exc_type`` (the name of the exception it raised). ``str()`` is one line.
    """

    def __init__(self, plugin: str, kind: str, contribution: str, where: str, exc: BaseException):
        self.plugin, self.kind, self.contribution, self.where = plugin, kind, contribution, where
        self.exc_type = type(exc).__name__
        what = contribution if kind == "hooks" else f"{KIND_WORDS.get(kind, kind)} '{contribution}'"
        at = "" if where == contribution else f" ({where})"
        super().__init__(f"plugin '{plugin}' failed in its {what}{at}: {one_line(exc)} (a bug in the plugin, "
                         "not in your data or settings: switch it off on the Plugins page, or report it to its "
                         "author)")


class FailureLog:
    """Failures of plugins' code, per plugin: at most :data:`FAILURES_PER_PLUGIN` different messages kept,
    each with how often it happened; the rest only counted. An ``on_log`` that raises at every step
    is one line, not a list growing without end."""

    def __init__(self, per_plugin: int = FAILURES_PER_PLUGIN):
        self.per_plugin = per_plugin
        self.kept: dict[str, dict[str, int]] = {}  # plugin -> {message: times}
        self.others: dict[str, int] = {}  # plugin -> failures whose message was not kept
        self._lock = threading.Lock()

    def add(self, plugin: str, message: str) -> bool:
        """Count a failure; True when its message is new and kept (worth printing)."""
        with self._lock:
            kept = self.kept.setdefault(plugin, {})
            if message in kept:
                kept[message] += 1
                return False
            if len(kept) < self.per_plugin:
                kept[message] = 1
                return True
            self.others[plugin] = self.others.get(plugin, 0) + 1
            return False

    def of(self, plugin: str) -> list[str]:
        """One plugin's kept messages (``(N times)`` when repeated), and a line counting the others."""
        with self._lock:
            kept, others = dict(self.kept.get(plugin, {})), self.others.get(plugin, 0)
        lines = [m + (f" ({n} times)" if n > 1 else "") for m, n in kept.items()]
        if others:
            lines.append(f"plugin '{plugin}': {others} more failure(s) with other messages, not listed")
        return lines

    def messages(self) -> list[str]:
        """Every plugin's :meth:`of`, in the order they first failed."""
        return [m for plugin in list(self.kept) for m in self.of(plugin)]


@dataclass
class PluginInfo:
    """What the Plugins page and ``python -m tunelab plugins --json`` show for one plugin."""

    name: str
    version: str | None
    source: str  # builtin | entrypoint | dir
    status: str = "loaded"  # loaded | failed | disabled
    error: str | None = None
    hooks: list[str] = field(default_factory=list)
    contributes: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    clashes: list[str] = field(default_factory=list)
    module: str | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "source": self.source, "status": self.status,
                "error": self.error, "hooks": self.hooks, "contributes": self.contributes,
                "clashes": self.clashes}


def validate_params(specs, where: str) -> None:
    """Check a plugin's ``params`` list; raise ValueError naming the bad spec and field."""
    if not isinstance(specs, (list, tuple)):
        raise ValueError(f"{where}: params must be a list of dicts, got {type(specs).__name__}")
    for i, spec in enumerate(specs):
        at = f"{where}: params[{i}]"
        if not isinstance(spec, dict):
            raise ValueError(f"{at} must be a dict, got {type(spec).__name__}")
        if not isinstance(spec.get("name"), str) or not spec["name"].isidentifier():
            raise ValueError(f"{at}: 'name' must be a Python identifier, got {spec.get('name')!r}")
        if spec.get("type") not in PARAM_TYPES:
            raise ValueError(f"{at} ({spec['name']}): 'type' must be one of {', '.join(PARAM_TYPES)}, got {spec.get('type')!r}")
        if spec["type"] == "choice" and (not isinstance(spec.get("choices"), (list, tuple)) or not spec["choices"]):
            raise ValueError(f"{at} ({spec['name']}): a 'choice' param needs a non-empty 'choices' list")
        for bound in ("min", "max"):
            value = spec.get(bound)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{at} ({spec['name']}): '{bound}' must be a number, got {value!r}")
        if spec.get("min") is not None and spec.get("max") is not None and spec["min"] > spec["max"]:
            raise ValueError(f"{at} ({spec['name']}): 'min' {spec['min']} is greater than 'max' {spec['max']}")
        if not isinstance(spec.get("help", ""), str):
            raise ValueError(f"{at} ({spec['name']}): 'help' must be a string")
        if "default" not in spec:
            raise ValueError(f"{at} ({spec['name']}): 'default' is missing")
        try:
            coerce_param(spec, spec["default"])  # the default itself must be valid
        except UserError as exc:
            raise ValueError(f"{at} ({spec['name']}): invalid 'default': {exc}") from None


def coerce_param(spec: dict, value):
    """Turn ``value`` (possibly a string from the CLI) into the spec's type, checking bounds."""
    name, kind = spec["name"], spec["type"]
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = value.lower() in ("true", "1", "yes")
            value = bool(value)
        elif kind == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str):
                value = float(value.strip()) if any(c in value for c in ".eE") else int(value.strip())
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            value = int(value)
        elif kind == "float":
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
            if not math.isfinite(value):
                raise ValueError
        else:
            value = "" if value is None else str(value)
    except (TypeError, ValueError):
        raise UserError(f"parameter '{name}' must be {kind}, got {value!r}") from None
    if kind in ("int", "float"):
        lo, hi = spec.get("min"), spec.get("max")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise UserError(f"parameter '{name}' = {value} is out of range [{lo}, {hi}]")
    if kind == "choice":
        by_text = {str(c): c for c in spec["choices"]}
        if value not in by_text:
            raise UserError(f"parameter '{name}' must be one of {', '.join(by_text)}, got {value!r}")
        value = by_text[value]  # the choice itself, keeping its type (choices may be numbers)
    return value


def resolve_params(specs, given: dict | None) -> dict:
    """Defaults overlaid with ``given``, coerced and checked. Unknown names are refused."""
    given = dict(given or {})
    known = {s["name"]: s for s in specs}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise UserError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(known) or 'none'}")
    return {n: coerce_param(s, given.get(n, s["default"])) for n, s in known.items()}


def validate_contribution(kind: str, obj) -> None:
    """Raise ValueError saying exactly what is wrong with a registered object."""
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"{kind[:-1]} has an invalid 'name' {name!r}: a name is {NAME_RULE}")
    where = f"{kind[:-1]} '{name}'"
    if not isinstance(getattr(obj, "description", None), str):
        raise ValueError(f"{where}: 'description' must be a string")
    validate_params(getattr(obj, "params", None), where)
    for attr, check, what in _REQUIRED[kind]:
        if not hasattr(obj, attr):
            raise ValueError(f"{where}: missing '{attr}' ({what})")
        if not check(getattr(obj, attr)):
            raise ValueError(f"{where}: '{attr}' must be {what}")


class Registry:
    """All loaded plugins and what they contribute. Build one with :func:`get_registry`."""

    def __init__(self, load_external: bool = True, extra_plugins=()):
        self.strict = os.environ.get("TUNELAB_STRICT_PLUGINS") == "1"
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self._objects = {k: {} for k in KINDS}
        self._owner = {k: {} for k in KINDS}
        self.failures = FailureLog()  # plugins' code failing after it loaded (see guard)
        self.disabled = read_disabled()
        allow = os.environ.get("TUNELAB_LOAD_PLUGINS")
        self.allow = None if allow is None else {a.strip() for a in allow.split(",") if a.strip()}
        if load_external:
            self._load_entry_points()
            self._load_dir()
        for obj, name in extra_plugins:  # for tests and the authoring kit
            self._add(name, lambda obj=obj: obj, source="dir", version=None)
        for modname in BUILTIN_MODULES:
            self._add(modname.split(".")[-1], lambda m=modname: importlib.import_module(m),
                      source="builtin", version=__version__)
        for kind in KINDS:
            self._collect(kind)

    # -- discovery -------------------------------------------------------
    def _wanted(self, name: str, source: str) -> str | None:
        if source == "builtin":
            return None
        if self.allow is not None and name not in self.allow:
            return "not in TUNELAB_LOAD_PLUGINS"
        if name in self.disabled:
            return "disabled in settings"
        return None

    def _load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
            version = ep.dist.version if ep.dist else None
            if self._skip(ep.name, "entrypoint", version):
                continue
            self._add(ep.name, ep.load, source="entrypoint", version=version)

    def _load_dir(self) -> None:
        folder = os.environ.get("TUNELAB_PLUGINS_DIR")
        if not folder or not Path(folder).is_dir():
            return
        for path in sorted(Path(folder).glob("*.py")):
            if path.name.startswith("_") or self._skip(path.stem, "dir", None):
                continue

            def load(path=path):
                spec = importlib.util.spec_from_file_location(f"tunelab_plugin_{path.stem}", path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                return module

            self._add(path.stem, load, source="dir", version=None)

    def _skip(self, name: str, source: str, version) -> bool:
        why = self._wanted(name, source)
        if why:
            if name in {m.split(".")[-1] for m in BUILTIN_MODULES}:
                name = f"{name} ({source})"  # the built-in's entry must survive
            self.plugins[name] = PluginInfo(name, version, source, status="disabled", error=why)
        return bool(why)

    def _fail(self, info: PluginInfo, exc: BaseException, where: str = "") -> None:
        error = f"{where}{type(exc).__name__}: {exc}"
        info.status = "failed"
        info.error = error if not info.error else f"{info.error}; {error}"
        if self.strict:
            raise exc

    def _add(self, name: str, load, source: str, version) -> None:
        """Import the plugin (``load()`` returns the module or object) and register it."""
        info = PluginInfo(name, version, source)
        builtin_names = {m.split(".")[-1] for m in BUILTIN_MODULES}
        taken = name in self.plugins and self.plugins[name].status != "disabled"
        if source != "builtin" and name in builtin_names:
            taken, owner = True, "builtin"  # built-ins keep their names whatever loads first
        elif taken:
            owner = self.plugins[name].source
        if taken:
            info.clashes.append(f"plugin name '{name}' already used by a {owner} plugin; "
                                f"listed as '{name} ({source})', rename it to avoid confusion")
            name = info.name = f"{name} ({source})"
        self.plugins[name] = info
        try:
            obj = load()
            info.version = info.version or getattr(obj, "__version__", None)
            self.pm.register(obj, name=name)
            info.module = getattr(obj, "__name__", None)
            callers = self.pm.get_hookcallers(obj) or []
            unknown = sorted(h.name for h in callers if h.spec is None and any(
                i.plugin is obj and not i.optionalhook for i in h.get_hookimpls()))
            if unknown:
                known = ", ".join(n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "tunelab_spec"))
                raise ValueError(f"implements {', '.join(unknown)}, which {'is not a' if len(unknown) == 1 else 'are not'} "
                                 f"TuneLab hook{'s' if len(unknown) > 1 else ''}; check the spelling (hooks: {known})")
            info.hooks = sorted(h.name for h in callers)
        except BaseException as exc:  # noqa: BLE001 - a broken plugin must not break the app
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            if self.pm.get_plugin(name) is not None:  # pluggy may have registered part of it
                self.pm.unregister(name=name)
            self._fail(info, exc)

    def _impls(self, hook_name: str):
        """Hook implementations in call order (last registered first: built-ins first)."""
        return list(reversed(getattr(self.pm.hook, hook_name).get_hookimpls()))

    def _collect(self, kind: str) -> None:
        for impl in self._impls(f"register_{kind}"):
            info = self.plugins[impl.plugin_name]
            found = []

            def register(obj, info=info, found=found):
                validate_contribution(kind, obj)
                found.append(obj)

            try:
                impl.function(register=register)
            except Exception as exc:  # noqa: BLE001
                self._fail(info, exc, where=f"in register_{kind}: ")
                continue
            for obj in found:
                owner = self._owner[kind].get(obj.name)
                if owner:
                    info.clashes.append(f"{kind[:-1]} '{obj.name}' is already registered by '{owner}'; kept theirs")
                    continue
                self._objects[kind][obj.name] = obj
                self._owner[kind][obj.name] = info.name
                info.contributes[kind].append(obj.name)

    # -- what the rest of TuneLab uses ------------------------------------
    def items(self, kind: str) -> dict:
        """``{name: object}`` for ``data_formats``, ``samplers`` or ``evaluators``, in call order."""
        return dict(self._objects[kind])

    def get(self, kind: str, name: str):
        try:
            return self._objects[kind][name]
        except KeyError:
            known = ", ".join(self._objects[kind]) or "none"
            raise UserError(f"unknown {kind[:-1].replace('_', ' ')} '{name}'; installed: {known}") from None

    def owner(self, kind: str, name: str) -> str | None:
        return self._owner.get(kind, {}).get(name)

    def call(self, hook_name: str, on_error=None, **kwargs) -> list:
        """Call a lifecycle hook on every plugin, isolating each: one raising never stops the rest.

        A failure is recorded (:attr:`failures`) and ``on_error(plugin_name, exc)`` is told about it
        (train.py logs it on the run); without ``on_error`` its one line goes to stderr.
        """
        results = []
        for impl in self._impls(hook_name):
            try:
                # SystemExit too (guard catches it): a plugin calling sys.exit() must not end a training run
                with self.guard("hooks", hook_name, hook_name, plugin=impl.plugin_name):
                    results.append(impl.function(**{a: kwargs[a] for a in impl.argnames}))
            except PluginError as error:
                if on_error:
                    on_error(impl.plugin_name, error.__cause__)
                else:
                    print(f"[tunelab] {error}", file=sys.stderr)
        return results

    @contextlib.contextmanager
    def guard(self, kind: str, name: str, where: str, passes: tuple = (), plugin: str | None = None):
        """Run code a plugin contributed: what it raises becomes a :class:`PluginError` naming it.

        ``kind`` and ``name`` say which contribution (``"samplers", "top_k"``; ``"hooks", "on_log"``
        with ``plugin``), ``where`` which of its functions runs. A ``UserError`` (the plugin saying
        the user is wrong) and the types in ``passes`` (a format's ``ValueError``: bad data) go
        through unchanged. The failure is recorded in :attr:`failures`. ``TUNELAB_STRICT_PLUGINS=1``
        re-raises the plugin's own exception, traceback and all.
        """
        try:
            yield
        except UserError:
            raise
        except passes:
            raise
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken plugin must not break the app
            if self.strict:
                raise
            error = PluginError(plugin or self.owner(kind, name) or "?", kind, name, where, exc)
            self.failures.add(error.plugin, str(error))
            raise error from exc

    def describe(self, kind: str, name: str) -> dict:
        """One contribution as plain data: ``name``, ``description``, ``params`` (and ``extensions`` or
        ``higher_is_better`` where the kind has them)."""
        obj = self._objects[kind][name]
        row = {"name": name, "description": obj.description, "params": list(getattr(obj, "params", None) or [])}
        for attr in ("extensions", "higher_is_better"):
            if hasattr(obj, attr):
                value = getattr(obj, attr)
                row[attr] = list(value) if isinstance(value, tuple) else value
        return row

    def listing(self) -> list[dict]:
        """Every plugin as a dict (built-ins first), for the CLI's ``--json`` and the Plugins page.

        Besides :meth:`PluginInfo.to_dict`: ``contributions`` (each contribution :meth:`describe`\ d,
        by kind) and ``failures`` (what its code raised since it loaded, capped: :class:`FailureLog`).
        """
        order = {"builtin": 0, "entrypoint": 1, "dir": 2}
        return [{**p.to_dict(), "failures": self.failures.of(p.name),
                 "contributions": {kind: [self.describe(kind, n) for n in names]
                                   for kind, names in p.contributes.items()}}
                for p in sorted(self.plugins.values(), key=lambda p: (order.get(p.source, 3), p.name))]


def read_disabled() -> set[str]:
    path = tunelab_home() / "plugins.json"
    try:
        return set(json.loads(path.read_text()).get("disabled", []))
    except (OSError, ValueError, AttributeError):
        return set()


def set_enabled(name: str, enabled: bool) -> None:
    """Persist a plugin's enabled state (built-ins cannot be disabled: they are essential)."""
    if name in {m.split(".")[-1] for m in BUILTIN_MODULES}:
        raise UserError(f"'{name}' is a built-in plugin and cannot be disabled")
    disabled = read_disabled()
    (disabled.discard if enabled else disabled.add)(name)
    path = tunelab_home() / "plugins.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"disabled": sorted(disabled)}, indent=2))
    reset_registry()


_registry: Registry | None = None
_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry: plugins load once per process."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = Registry()
        return _registry


@contextlib.contextmanager
def use_registry(registry: Registry):
    """Make ``registry`` the process-wide one inside a ``with`` block (tests, the authoring kit)."""
    global _registry
    with _lock:
        previous, _registry = _registry, registry
    try:
        yield registry
    finally:
        with _lock:
            _registry = previous


def reset_registry() -> None:
    """Forget the loaded plugins (after enabling/disabling one, or in tests)."""
    global _registry
    with _lock:
        _registry = None
