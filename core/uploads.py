"""Files a learner uploads, and which data files the dashboard may read.

An upload is saved as ``runs/uploads/<cleaned name>-<content hash><suffix>``: no path tricks,
no clashes between two files of the same name, and the same file uploaded twice is one file.
Uploads are temporary: each new one deletes the uploads older than ``TUNELAB_UPLOAD_TTL_H``
hours (default 24), so a shared deployment's disk does not fill up with everyone's data.

The dashboard reads data only from :func:`allowed_data`: the data sets that ship with TuneLab
(``data/*.json*`` and ``data/real-world/*``) and this session's own uploads. In a shared
deployment a free-text path box must not become a way to read any file on the server.

Pure Python (no torch): the thin dashboard uses it too.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

from .errors import UserError
from .paths import REPO_ROOT, runs_root

DATA = REPO_ROOT / "data"
TTL_ENV = "TUNELAB_UPLOAD_TTL_H"
DEFAULT_TTL_H = 24.0


def uploads_dir() -> Path:
    """Where uploads are kept: ``$TUNELAB_UPLOADS_DIR``, else ``uploads/`` under the run store
    (``$TUNELAB_RUNS_DIR``), so a deployment's shared runs folder holds its uploads too."""
    return Path(os.environ.get("TUNELAB_UPLOADS_DIR") or runs_root() / "uploads")


def ttl_hours() -> float:
    """How long an upload is kept, in hours (``TUNELAB_UPLOAD_TTL_H``; a bad value means the default)."""
    try:
        return max(0.0, float(os.environ.get(TTL_ENV) or DEFAULT_TTL_H))
    except ValueError:
        return DEFAULT_TTL_H


def upload_path(name: str, content: bytes) -> Path:
    """``<uploads>/<cleaned stem>-<sha256 prefix><suffix>`` for a file called ``name``."""
    stem, suffix = Path(name).stem, Path(name).suffix.lower()
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:60] or "upload"
    suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""
    return uploads_dir() / f"{stem}-{hashlib.sha256(content).hexdigest()[:10]}{suffix}"


def expire_uploads(ttl_h: float | None = None, now: float | None = None, keep: Path | None = None) -> list[Path]:
    """Delete uploads last written more than ``ttl_h`` hours ago (except ``keep``); returns what went."""
    folder = uploads_dir()
    if not folder.is_dir():
        return []
    cutoff = (now if now is not None else time.time()) - 3600 * (ttl_hours() if ttl_h is None else ttl_h)
    gone = []
    for path in folder.iterdir():
        try:
            if path.is_file() and path != keep and path.stat().st_mtime < cutoff:
                path.unlink()
                gone.append(path)
        except OSError:  # removed by another session at the same moment: nothing to do
            continue
    return gone


def save_upload(name: str, content: bytes) -> Path:
    """Save an uploaded file (see :func:`upload_path`) and expire the old ones. Returns its path."""
    if not content:
        raise UserError(f"{name}: the file is empty; upload a file with at least one example")
    path = upload_path(name, content)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(content)
        tmp.replace(path)  # atomic: a reader never sees half an upload
    else:
        os.utime(path)  # uploaded again: it starts a new life
    expire_uploads(keep=path)
    return path


def bundled_data() -> list[Path]:
    """The data sets that ship with TuneLab: ``data/*.json*`` and ``data/real-world/*``."""
    files = list(DATA.glob("*.json*")) + list((DATA / "real-world").glob("*"))
    return sorted(p for p in files if p.is_file() and not p.name.startswith("."))


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    return (path if path.is_absolute() else REPO_ROOT / path).resolve()


def allowed_data(path: str, uploads: list[str] | tuple = ()) -> Path:
    """``path`` resolved, if it is a bundled data set or one of ``uploads``; else a UserError.

    Relative paths are read from the repository (``data/...``), as the pages show them.
    """
    text = str(path or "").strip()
    if not text:
        raise UserError("No data file given: pick a bundled set such as data/science_tutor_heldout.alpaca.json, "
                        "or upload one on 2 · Prepare data")
    wanted = _resolve(text)
    if wanted in {p.resolve() for p in bundled_data()} or wanted in {_resolve(u) for u in uploads or ()}:
        if not wanted.is_file():  # an upload expired since
            raise UserError(f"{text}: the file is gone (uploads are kept {ttl_hours():g} hours); upload it again "
                            "on 2 · Prepare data")
        return wanted
    bundled = ", ".join(str(p.relative_to(REPO_ROOT)) for p in bundled_data() if p.parent == DATA)
    raise UserError(f"{text}: this app reads only the data sets that ship with it ({bundled}, and data/real-world/) "
                    "and files you uploaded in this session; upload the file on 2 · Prepare data to use it")
