"""The plugin catalog: a curated list of community plugins, shipped as ``catalog.json``.

The catalog is a file in the repository, so the Plugins page can show it offline.
Each entry is reviewed by a maintainer (``reviewed`` is the date) and says how to
install it (``install``: the package pinned to exactly the reviewed version,
``name==1.2.3``, or a ``./path`` inside this repository; ranges, URLs, VCS links and
other paths are refused, since they can install code nobody reviewed). :func:`install` runs pip for catalog entries only: a plugin runs
with the app's rights, so nothing outside the reviewed list is ever installed from
here.

No Streamlit here: the dashboard's Plugins page calls these.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

from . import hookspecs
from .errors import UserError
from .paths import REPO_ROOT
from .registry import KINDS

CATALOG_PATH = REPO_ROOT / "catalog.json"
FIELDS = ("package", "summary", "kinds", "repo", "license", "reviewed", "install")
CATALOG_KINDS = (*KINDS, "lifecycle")  # lifecycle: on_train_start, on_log, on_evaluate, on_train_end
PACKAGE_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
PIP_TIMEOUT_S = 600


class CatalogError(UserError):
    """catalog.json is malformed: the message names the entry and the field."""


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): case and ``-_.`` runs do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _local_path(spec: str, root: Path) -> Path | None:
    """The folder a ``./path`` spec points at (None for a requirement spec)."""
    if spec.startswith(("./", "../")):
        return (root / spec).resolve()
    return None


def validate_entry(entry, index: int, root: Path = REPO_ROOT) -> dict:
    """Check one catalog entry; raise :class:`CatalogError` naming the entry and the field."""
    where = f"catalog.json, plugins[{index}]"
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: expected an object with {', '.join(FIELDS)}")
    missing = [f for f in FIELDS if f not in entry]
    if missing:
        raise CatalogError(f"{where}: missing {', '.join(repr(m) for m in missing)}")
    package = entry["package"]
    if not isinstance(package, str) or not PACKAGE_RE.match(package):
        raise CatalogError(f"{where}: 'package' must be a distribution name such as 'tunelab-foo', got {package!r}")
    where = f"catalog.json, '{package}'"
    for field in ("summary", "repo", "license"):
        if not isinstance(entry[field], str) or not entry[field].strip():
            raise CatalogError(f"{where}: '{field}' must be a non-empty string")
    kinds = entry["kinds"]
    if not isinstance(kinds, list) or not kinds or any(k not in CATALOG_KINDS for k in kinds):
        raise CatalogError(f"{where}: 'kinds' must be a non-empty list of {', '.join(CATALOG_KINDS)}, got {kinds!r}")
    try:
        _dt.date.fromisoformat(str(entry["reviewed"]))
    except ValueError:
        raise CatalogError(f"{where}: 'reviewed' must be a date as YYYY-MM-DD, got {entry['reviewed']!r}") from None
    spec = entry["install"]
    if not isinstance(spec, str) or not spec.strip() or spec != spec.strip() or spec.startswith("-"):
        raise CatalogError(f"{where}: 'install' must be one pip requirement or a ./path, not an option: {spec!r}")
    local = _local_path(spec, root)
    if local is not None:
        if not local.is_relative_to(root.resolve()):
            raise CatalogError(f"{where}: 'install' path {spec} leaves the repository")
        if not (local / "pyproject.toml").is_file():
            raise CatalogError(f"{where}: 'install' path {spec} has no pyproject.toml")
    else:
        _check_pinned(spec, package, where)
    return entry


def _check_pinned(spec: str, package: str, where: str) -> None:
    """An index requirement pinned to exactly one version (``name==1.2.3``): what was reviewed is
    what installs. Unpinned names, ranges, wildcards, URLs, VCS links and file paths are refused:
    each can install code nobody reviewed (a later release, or whatever the link serves today)."""
    from packaging.requirements import InvalidRequirement, Requirement

    example = f"e.g. '{package}==1.0.0'"
    if "://" in spec or spec.startswith(("git+", "hg+", "svn+", "bzr+", "file:")) or "@" in spec:
        raise CatalogError(f"{where}: 'install' {spec!r} is a URL, VCS link or file: it must be a release on "
                           f"the package index pinned to the reviewed version, {example}")
    if spec.startswith(("/", "~", ".", "\\")) or re.match(r"^[A-Za-z]:[\\/]", spec) or "/" in spec or "\\" in spec:
        raise CatalogError(f"{where}: 'install' {spec!r} is a file path: only './folder' inside this repository "
                           f"or an index release pinned to the reviewed version ({example}) can be listed")
    try:
        requirement = Requirement(spec)
    except InvalidRequirement as exc:
        first = str(exc).splitlines()[0]  # packaging adds a caret diagram on later lines
        raise CatalogError(f"{where}: 'install' is not a pip requirement ({first}); write {example}") from None
    if canonical(requirement.name) != canonical(package):
        raise CatalogError(f"{where}: 'install' installs '{requirement.name}', not '{package}'")
    specifiers = list(requirement.specifier)
    if not specifiers:
        raise CatalogError(f"{where}: 'install' must pin the reviewed version, {example}")
    pin = specifiers[0]
    if len(specifiers) > 1 or pin.operator != "==" or pin.version.endswith(".*"):
        raise CatalogError(f"{where}: 'install' {spec!r} allows more than one version: it must pin the reviewed "
                           f"version exactly with '==', {example}")


def load_catalog(path=None) -> list[dict]:
    """The validated catalog entries (a JSON list, or an object whose ``plugins`` is that list)."""
    path = Path(path or CATALOG_PATH)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the catalog ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{path.name}, line {exc.lineno}: invalid JSON ({exc.msg})") from None
    entries = data.get("plugins") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise CatalogError(f"{path.name}: expected a list of plugins (or an object with a 'plugins' list)")
    root = path.resolve().parent
    seen = set()
    for i, entry in enumerate(entries):
        validate_entry(entry, i, root)
        name = canonical(entry["package"])
        if name in seen:
            raise CatalogError(f"{path.name}: '{entry['package']}' is listed twice")
        seen.add(name)
    return entries


def installed_version(package: str) -> str | None:
    """The installed version of a distribution, or None (read fresh: pip may have just run)."""
    importlib.invalidate_caches()
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def plugin_entry_points(package: str) -> list[importlib.metadata.EntryPoint]:
    """The distribution's entry points in TuneLab's group (the names the registry lists)."""
    importlib.invalidate_caches()
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return []
    return [ep for ep in dist.entry_points if ep.group == hookspecs.PROJECT]


def with_status(path=None) -> list[dict]:
    """Catalog entries, each with ``installed`` (the version, or None) and ``plugins`` (entry-point names)."""
    return [{**entry, "installed": installed_version(entry["package"]),
             "plugins": [ep.name for ep in plugin_entry_points(entry["package"])]}
            for entry in load_catalog(path)]


def find(package: str, path=None) -> dict:
    """The catalog entry for ``package``; UserError if the catalog does not list it."""
    entries = load_catalog(path)
    for entry in entries:
        if canonical(entry["package"]) == canonical(str(package)):
            return entry
    raise UserError(f"'{package}' is not in the catalog ({', '.join(e['package'] for e in entries) or 'empty'}); "
                    "only catalog entries can be installed from TuneLab: use pip yourself for anything else")


def pip_command(entry: dict, path=None) -> list[str]:
    """``[python, -m, pip, install, spec]`` for a catalog entry (a ./path resolved against the catalog's folder)."""
    root = Path(path or CATALOG_PATH).resolve().parent
    local = _local_path(entry["install"], root)
    return [sys.executable, "-m", "pip", "install", str(local) if local else entry["install"]]


def importable(package: str) -> bool:
    """Whether every TuneLab entry point of ``package`` can be found by this process without a restart.

    Only looks the module up (nothing runs): an editable install adds a path hook that a running
    process has not read, so its module may stay invisible until TuneLab restarts.
    """
    eps = plugin_entry_points(package)
    if not eps:
        return False
    importlib.invalidate_caches()
    for ep in eps:
        try:
            if importlib.util.find_spec(ep.module.split(":")[0]) is None:
                return False
        except (ImportError, ValueError):
            return False
    return True


def install(entry, path=None) -> dict:
    """Install a catalog entry with pip, in this Python environment. Refuses anything not in the catalog.

    ``entry`` is a catalog entry (or its package name); what runs is the *catalog's*
    spec for that package, never a spec passed in. Returns ``{"package", "command",
    "returncode", "ok", "output", "installed", "plugins", "restart_needed", "message"}``;
    after it, reset the plugin registry (``tunelab.core.registry.reset_registry``) to load the plugin.
    """
    package = entry["package"] if isinstance(entry, dict) else str(entry)
    reviewed = find(package, path)
    command = pip_command(reviewed, path)
    before = installed_version(package)
    # A module already imported keeps running its old code until the process restarts.
    imported = any(ep.module.split(".")[0] in sys.modules for ep in plugin_entry_points(package))
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        returncode, output = done.returncode, (done.stdout or "") + (done.stderr or "")
    except subprocess.TimeoutExpired as exc:
        returncode, output = -1, f"pip did not finish in {PIP_TIMEOUT_S} s: {exc}"
    except OSError as exc:
        returncode, output = -1, f"could not run pip: {exc}"
    version = installed_version(package)
    plugins = [ep.name for ep in plugin_entry_points(package)]
    ok = returncode == 0 and version is not None
    restart = ok and (not importable(package) or (imported and version != before))
    if not ok:
        message = f"pip could not install {package} (exit {returncode}); see its output."
    elif not plugins:
        message = f"{package} {version} is installed but declares no entry point in the 'tunelab' group."
    elif restart:
        message = (f"{package} {version} is installed, but this process cannot load its new code: restart "
                   "TuneLab to load it.")
    else:
        message = f"{package} {version} is installed; plugins {', '.join(plugins)} load on the next registry load."
    return {"package": package, "command": command, "returncode": returncode, "ok": ok, "output": output,
            "installed": version, "plugins": plugins, "restart_needed": restart, "message": message}
