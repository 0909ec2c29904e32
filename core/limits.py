"""The memory this process may really use: its container's limit, not the host's RAM.

Streamlit Community Cloud (and most containers) cap an app with a cgroup; ``psutil`` reports
the host's RAM, which on such a machine is many times the cap. Both cgroup versions are read:
v2's ``memory.max`` and v1's ``memory.limit_in_bytes`` (where "no limit" is a huge number).
"""

from __future__ import annotations

from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_NO_LIMIT = 1 << 60  # v1 writes 9223372036854771712 for "unlimited"


def _own_cgroups() -> list[tuple[str, str]]:
    """``(controllers, path)`` pairs of this process (``/proc/self/cgroup``)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append((parts[1], parts[2]))
    return out


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _NO_LIMIT else value


def _cgroup_dir(controller_dir: Path, rel: str) -> Path | None:
    """The folder of this process's cgroup under the mounted hierarchy.

    In a container the mount often starts below the host's root, so ``/proc/self/cgroup``'s path
    (``/process_api/abc/app``) is found as its longest suffix that exists (``app``, or the mount itself).
    """
    parts = [p for p in rel.strip("/").split("/") if p]
    for i in range(len(parts) + 1):
        folder = controller_dir.joinpath(*parts[i:])
        if folder.is_dir():
            return folder
    return None


def _candidates(name: str, controller_dir: Path, rel: str) -> list[Path]:
    """The cgroup's own file and its ancestors' up to the mount (the tightest limit above us applies)."""
    folder = _cgroup_dir(controller_dir, rel)
    if folder is None:
        return []
    out = [folder / name]
    while folder != controller_dir and controller_dir in folder.parents:
        folder = folder.parent
        out.append(folder / name)
    return out


def memory_limit() -> int | None:
    """Bytes this process's cgroup may use (the smallest limit on its path), or None if unlimited."""
    limits = []
    for controllers, rel in _own_cgroups():
        if controllers == "":  # cgroup v2
            files = _candidates("memory.max", CGROUP_ROOT, rel)
        elif "memory" in controllers.split(","):
            files = _candidates("memory.limit_in_bytes", CGROUP_ROOT / "memory", rel)
        else:
            continue
        limits += [v for v in (_read_int(f) for f in files) if v is not None]
    return min(limits) if limits else None


def memory_used() -> int | None:
    """Bytes the process's memory cgroup holds now (v2 ``memory.current``, v1 ``memory.usage_in_bytes``)."""
    for controllers, rel in _own_cgroups():
        if controllers == "":
            files = _candidates("memory.current", CGROUP_ROOT, rel)
        elif "memory" in controllers.split(","):
            files = _candidates("memory.usage_in_bytes", CGROUP_ROOT / "memory", rel)
        else:
            continue
        if files:
            value = _read_int(files[0])
            if value is not None:
                return value
    return None
