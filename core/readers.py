"""Reading data files for the built-in formats: JSON arrays, JSON lines, CSV and text, streamed.

Not a plugin (it implements no hook): the reader layer the built-in formats (``plugins/formats.py``) read
files with, and that a third-party format may use too. It also says what a file *is* before any format
reads it (:func:`diagnose_container`, :func:`unknown_format`): the one owner of "this is not a data set".
Every problem is a ``ValueError`` (or ``RowErrors``) whose message names the file, the row
(1-based: the record number in a JSON array, the line number in JSONL and CSV) and the field,
and says how to fix it, in the user's words rather than Python's.

JSON lines are read one line at a time and a JSON array one record at a time, so a big file is
never held as Python objects all at once (a JSON array's text is, once).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from pathlib import Path

from .errors import UserError

MAX_REPORTED = 200  # errors kept per file: enough to fix a file, not enough to flood a page
SNIFF_BYTES = 64 * 1024
FIRST_RECORD_LIMIT = 64 * 1024 * 1024  # how far the sniffer reads to see a whole first record


class RowErrors(ValueError):
    """Every bad row of a file; ``str()`` is the first one plus a count."""

    def __init__(self, path, errors):
        self.errors = errors
        first = errors[0]
        where = Path(path).name + (f", row {first['row']}" if first.get("row") is not None else "")
        where += f", field '{first['field']}'" if first.get("field") else ""
        more = f" (and {len(errors) - 1} more bad rows)" if len(errors) > 1 else ""
        super().__init__(f"{where}: {first['message']}{more}")


class CappedEvents:
    """Iterate a format's event stream, setting its bad rows aside: ``errors`` collects the first
    :data:`MAX_REPORTED` error events (``{"row", "field", "message"}``) and the stream ends there.

    What every reader of events shares (training's records, data check's report, a format's own
    ``load``): a file with a million bad rows stops after enough of them to fix it.
    """

    def __init__(self, events, limit: int = MAX_REPORTED):
        self.events, self.limit, self.errors = events, limit, []

    def __iter__(self):
        for event in self.events:
            if "error" in event:
                self.errors.append({"row": event["row"], **event["error"]})
                if len(self.errors) >= self.limit:
                    return
                continue
            yield event


class FieldError(Exception):
    """A problem with one field of one record: ``field`` (a path like ``messages[1].role``) and ``message``."""

    def __init__(self, field, message):
        super().__init__(message)
        self.field, self.message = field, message


class DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs):
    """``object_pairs_hook``: refuse a key given twice (plain ``json`` keeps the last one silently)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)


def parse_error(exc: BaseException) -> tuple[str | None, str]:
    """``(field, message)`` for an exception raised while decoding one JSON record."""
    if isinstance(exc, DuplicateKey):
        key = exc.args[0]
        return key, (f"the key '{key}' appears twice in this record, and only one value can be kept; "
                     "delete the duplicate")
    if isinstance(exc, RecursionError):
        return None, ("nested too deeply (thousands of levels of brackets); a record holds strings and short "
                      "lists, so the file is probably damaged or not a data set")
    if isinstance(exc, json.JSONDecodeError):
        return None, f"invalid JSON ({exc.msg} at column {exc.colno}); each line must be one JSON object"
    return None, f"could not be read ({exc})"


def read_text(path) -> str:
    """UTF-8 text (a byte-order mark is fine); clear errors for empty and undecodable files."""
    data = Path(path).read_bytes()
    if not data.strip():
        raise ValueError(f"{Path(path).name}: the file is empty; add at least one example")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ValueError(f"{Path(path).name}: the file is encoded as UTF-16; re-save it as UTF-8 "
                         "(e.g. iconv -f UTF-16 -t UTF-8 in > out)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValueError(f"{Path(path).name}, line {line}: bytes that are not UTF-8 (at byte {exc.start}); "
                         "re-save the file as UTF-8") from None


def _first_char(path) -> str:
    with open(path, "rb") as f:
        head = f.read(4096).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    return head[:1]


def _has_content(path) -> bool:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            if chunk.lstrip(codecs.BOM_UTF8).strip():
                return True
    return False


def iter_json_rows(path):
    """Yield ``(row, value, error)`` for every record: ``error`` is ``(field, message)`` or None.

    A file starting with ``[`` is a JSON array (row = record number), anything else JSON lines
    (row = line number). A file that is one JSON document but not a list of records
    (a number, ``null``, ``{}``, an object holding the list under a key) raises a ValueError saying so.
    """
    first = _first_char(path)
    if not first and not _has_content(path):
        raise ValueError(f"{Path(path).name}: the file is empty (only whitespace); add at least one example")
    if first == "[":
        yield from _iter_array(path)
    else:
        yield from _iter_lines(path)


CHUNK = 8 * 1024 * 1024  # characters read at a time from a JSON array


class _Stream:
    """A UTF-8 file read in growing chunks; ``text[pos:]`` is what is not consumed yet.

    Consumed text is dropped as reading goes on, so a 1 GB JSON array is held a few MB at a time.
    """

    def __init__(self, path):
        self.name = Path(path).name
        self.file = open(path, "rb")
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.text, self.pos, self.eof, self.lines = "", 0, False, 0

    def more(self) -> bool:
        """Read the next chunk (at least as long as the unconsumed text, so one long record reads in
        linear time); False at the end of the file."""
        if self.eof:
            return False
        raw = self.file.read(max(CHUNK, len(self.text) - self.pos))
        self.eof = not raw
        try:
            piece = self.decoder.decode(raw, final=self.eof)
        except UnicodeDecodeError as exc:
            line = self.lines + self.text.count("\n") + raw[: exc.start].count(b"\n") + 1
            at = self.file.tell() - len(raw) + max(exc.start, 0)
            raise ValueError(f"{self.name}, line {line}: bytes that are not UTF-8 (at byte {at}); "
                             "re-save the file as UTF-8") from None
        if self.pos > len(self.text) // 2:
            self.lines += self.text.count("\n", 0, self.pos)
            self.text, self.pos = self.text[self.pos:], 0
        self.text += piece
        return True

    def skip_space(self) -> None:
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.text) or not self.more():
                return

    def at(self, char: str) -> bool:
        return self.pos < len(self.text) and self.text[self.pos] == char

    def line(self) -> int:
        return self.lines + self.text.count("\n", 0, self.pos) + 1

    def decode(self):
        """The JSON value at ``pos`` (reading on while it is incomplete); JSON errors are raised."""
        while True:
            try:
                value, self.pos = DECODER.raw_decode(self.text, self.pos)
                return value
            except json.JSONDecodeError as exc:
                # a value cut by the end of the chunk fails at (or just before) the end of the text
                cut = exc.msg.startswith("Unterminated string") or exc.pos >= len(self.text) - 8
                if cut and self.more():
                    continue
                exc.lineno += self.lines
                raise

    def skip_value(self) -> bool:
        """Step over the value at ``pos`` without decoding it (after a duplicate key); False if it never ends."""
        while True:
            end = _skip_value(self.text, self.pos)
            if end is not None:
                self.pos = end
                return True
            if not self.more():
                return False


def _iter_array(path):
    with open(path, "rb") as f:
        if f.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
            raise ValueError(f"{Path(path).name}: the file is encoded as UTF-16; re-save it as UTF-8 "
                             "(e.g. iconv -f UTF-16 -t UTF-8 in > out)")
    stream = _Stream(path)
    try:
        yield from _array_rows(stream)
    finally:
        stream.file.close()


def _array_rows(s: _Stream):
    s.skip_space()
    s.pos += 1  # the opening "["
    row = 1
    while True:
        s.skip_space()
        if s.at("]") and row == 1:
            return
        try:
            value = s.decode()
        except json.JSONDecodeError as exc:
            yield row, None, (None, f"invalid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}); "
                                    "check for a missing comma, quote or bracket there")
            return  # after a syntax error the rest of the array cannot be told apart
        except (DuplicateKey, RecursionError) as exc:
            yield row, None, parse_error(exc)
            if not s.skip_value():
                return
        else:
            yield row, value, None
        s.skip_space()
        if s.at(","):
            s.pos, row = s.pos + 1, row + 1
            continue
        if s.at("]"):
            s.pos += 1
            s.skip_space()
            if s.pos < len(s.text):  # e.g. two arrays pasted one after the other: the second would be lost
                yield row + 1, None, (None, f"text after the closing ']' of the array, at line {s.line()}; a JSON "
                                            "file holds one array: merge the records into it or delete the rest")
            return
        ended = s.pos >= len(s.text)
        yield row + (not ended), None, (None, f"invalid JSON at line {s.line()} (expected ',' or ']' after record "
                                              f"{row}); check for a missing comma or bracket there")
        return


def _skip_value(text, pos):
    """The position just after the JSON value starting at ``pos`` (brackets and strings counted), or None."""
    depth, i, n = 0, pos, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _iter_lines(path):
    name = Path(path).name
    first = None
    with open(path, "rb") as f:
        lineno = 0
        for raw in f:
            if lineno == 0:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                physical = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{name}, line {lineno + 1}: bytes that are not UTF-8 (at byte {exc.start} of "
                                 "the line); re-save the file as UTF-8") from None
            # a file saved with old Mac line endings (CR only) arrives as one physical line
            for line in physical.rstrip("\n").rstrip("\r").split("\r"):
                lineno += 1
                if not line.strip():
                    continue
                try:
                    value = DECODER.decode(line)
                except (json.JSONDecodeError, DuplicateKey, RecursionError) as exc:
                    if first is None:
                        whole = _whole_document(path, exc)
                        if whole is not None:  # one record pretty-printed over several lines
                            yield 1, whole, None
                            return
                    first = first or lineno
                    yield lineno, None, parse_error(exc)
                    continue
                if first is None:
                    first = lineno
                    _diagnose_single(path, value)
                yield lineno, value, None


def _whole_document(path, exc):
    """Line 1 is not JSON on its own: the whole file as one JSON object, if it is one (else None).

    Raises the ValueError of ``describe_document`` when that object is not a data set.
    """
    if not isinstance(exc, json.JSONDecodeError) or Path(path).stat().st_size > 256 * 1024 * 1024:
        return None
    try:
        value = DECODER.decode(read_text(path))
    except (ValueError, RecursionError):
        return None
    describe_document(path, value, single_line=False)
    return value if isinstance(value, dict) else None


def _diagnose_single(path, value):
    """The first line parsed and nothing follows it: refuse a scalar, ``{}`` or a wrapper object."""
    with open(path, "rb") as f:
        f.readline()
        if f.read(4096).strip():
            return  # more lines follow: each is judged as a record of its own
    describe_document(path, value, single_line=True)


def _wrapped_list(value: dict):
    """``(key, n)`` when an object holds the records as a list under one key, else None."""
    lists = [(k, v) for k, v in value.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
    if len(lists) != 1 or {"messages", "conversations", "chosen", "rejected", "prompt", "instruction"} & set(value):
        return None
    return lists[0][0], len(lists[0][1])


def describe_document(path, value, single_line: bool):
    """Raise a ValueError when a file that is one JSON document is not a data set, saying what it holds.

    A non-empty object that is not a wrapper is one record (returns quietly), as is a list.
    """
    name = Path(path).name
    if isinstance(value, list):
        return
    if isinstance(value, dict):
        if not value:
            raise ValueError(f"{name}: the file is an empty JSON object {{}}, with no records; "
                             "a data set is a JSON array of records or one JSON object per line")
        wrapped = _wrapped_list(value)
        if wrapped:
            key, n = wrapped
            raise ValueError(f"{name}: the file is one JSON object holding {n} records under the key '{key}'; "
                             f"save just that list (the value of '{key}') as the file, or one record per line")
        return
    kind = {type(None): "null", bool: "a true/false value", int: "a number", float: "a number",
            str: "a single string"}.get(type(value), type(value).__name__)
    raise ValueError(f"{name}: the file holds {kind} ({json.dumps(value)[:40]}), not records; "
                     "a data set is a JSON array of records or one JSON object per line")


# -- CSV -----------------------------------------------------------------------------------
def csv_reader(path):
    """``(csv.reader, header)`` over a CSV or TSV file, whatever its line endings (CR only included)."""
    text = read_text(path).replace("\r\n", "\n").replace("\r", "\n")  # quoted CRs become newlines too
    if str(path).lower().endswith(".tsv"):
        dialect = csv.excel_tab
    else:
        try:
            dialect = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel
    reader = csv.reader(io.StringIO(text, newline=""), dialect=dialect)
    try:
        header = next(reader, [])
    except csv.Error as exc:
        raise ValueError(f"{Path(path).name}, row 1 (header): {exc}") from None
    return reader, [h.strip() for h in header]


# -- what a file is, before any format reads it ---------------------------------------------------
# What a file's first bytes say it really is, whatever its name: (magic, what it is, how to fix it).
CONTAINERS = [
    (b"\x1f\x8b", "gzip-compressed", "decompress it first (gunzip -k FILE) and check the result"),
    (b"PK\x03\x04", "a ZIP archive (or an .xlsx/.docx document)", "unzip it, or export the sheet as CSV"),
    (b"PAR1", "a Parquet table", "convert it to JSON lines, e.g. "
                                 "python -c \"import pandas as p; p.read_parquet('in.parquet').to_json('out.jsonl', "
                                 "orient='records', lines=True)\""),
    (b"\xff\xfe\x00\x00", "text encoded as UTF-32", "re-save it as UTF-8 (iconv -f UTF-32 -t UTF-8 in > out)"),
    (b"\xff\xfe", "text encoded as UTF-16 (little-endian, with a byte-order mark)",
     "re-save it as UTF-8 (iconv -f UTF-16 -t UTF-8 in > out)"),
    (b"\xfe\xff", "text encoded as UTF-16 (big-endian, with a byte-order mark)",
     "re-save it as UTF-8 (iconv -f UTF-16 -t UTF-8 in > out)"),
    (b"SQLite format 3", "an SQLite database", "export the table as CSV or JSON lines"),
    (b"\x89PNG", "a PNG image", "a data set is text: JSON, JSON lines, CSV or plain text"),
    (b"\xff\xd8\xff", "a JPEG image", "a data set is text: JSON, JSON lines, CSV or plain text"),
    (b"%PDF", "a PDF document", "extract its text into a .txt file first"),
]
BINARY_NAMES = {".parquet": "a Parquet table", ".arrow": "an Arrow table", ".xlsx": "an Excel workbook",
                ".gz": "a gzip file", ".zip": "a ZIP archive", ".pdf": "a PDF document"}


def diagnose_container(path, raw: bytes) -> None:
    """Refuse a file whose container or encoding is not plain UTF-8 text, saying what it is and the fix."""
    path = Path(path)
    for magic, what, fix in CONTAINERS:
        if raw.startswith(magic):
            raise UserError(f"{path.name}: the file is {what}, not a text data file; {fix}")
    sample = raw[:4096]
    if sample.count(b"\x00") > len(sample) // 4:  # every other byte zero: UTF-16 without a byte-order mark
        if sample[1::2].count(0) > len(sample) // 3 or sample[0::2].count(0) > len(sample) // 3:
            raise UserError(f"{path.name}: the file is text encoded as UTF-16 (no byte-order mark); re-save it "
                            "as UTF-8 (iconv -f UTF-16 -t UTF-8 in > out)")
        raise UserError(f"{path.name}: the file is binary, not text; a data set is JSON, JSON lines, CSV or text")
    if b"\x00" in sample:
        raise UserError(f"{path.name}: the file holds NUL bytes, so it is binary or damaged, not text; "
                        "re-export it as UTF-8 text")
    suffix = path.suffix.lower()
    if suffix in BINARY_NAMES:
        kind = _text_kind(raw)
        raise UserError(f"{path.name}: named like {BINARY_NAMES[suffix]} but the file is plain text{kind}; "
                        f"rename it to what it holds (e.g. {path.stem}{_suggested_suffix(raw)})")


def _text_kind(raw: bytes) -> str:
    start = raw.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    return {b"[": " (a JSON array)", b"{": " (JSON lines)"}.get(start, "")


def _suggested_suffix(raw: bytes) -> str:
    start = raw.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    return {b"[": ".json", b"{": ".jsonl"}.get(start, ".txt")


def sniff_head(path) -> tuple[bytes, str]:
    """``(first bytes, head text)`` for the sniffers: 64 KiB, or more until the first JSON record ends.

    A record whose first field is longer than 64 KiB would otherwise hide the keys that tell
    its format; reading on (up to 64 MiB) lets every sniffer see one whole record.
    """
    with Path(path).open("rb") as f:
        raw = f.read(SNIFF_BYTES)
        start = raw.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
        if start in (b"[", b"{") and len(raw) == SNIFF_BYTES:
            while len(raw) < FIRST_RECORD_LIMIT and _first_record_open(raw):
                more = f.read(len(raw))
                if not more:
                    break
                raw += more
    return raw, raw.decode("utf-8", errors="replace")


def _first_record_open(raw: bytes) -> bool:
    """Whether the first JSON record in ``raw`` is still unfinished (brackets outside strings counted)."""
    text = raw.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    depth, i, n, base = 0, 0, len(text), 1 if text.startswith("[") else 0
    tokens = re.compile(r'["\[\]{}]')
    string_end = re.compile(r'(?:[^"\\]|\\.)*"', re.S)
    while True:
        m = tokens.search(text, i)
        if not m:
            return True
        c = m.group(0)
        if c == '"':
            end = string_end.match(text, m.end())
            if not end:
                return True
            i = end.end()
            continue
        depth += 1 if c in "[{" else -1
        i = m.end()
        if depth == base and c in "]}" or depth < base:
            return False


def unknown_format(path, head: str, installed: list[str]) -> str:
    """Why no format claimed the file: what it looks like, and what to do."""

    names = ", ".join(installed)
    bare = head.lstrip("\ufeff").strip()
    if path.stat().st_size <= SNIFF_BYTES:  # the whole file is in ``head``: judge it as one document
        try:
            value = json.loads(bare)
        except ValueError:
            value = ...
        except RecursionError:
            return (f"{path.name}, row 1: nested too deeply (thousands of levels of brackets); a record holds "
                    "strings and short lists, so the file is probably damaged or not a data set")
        if value is not ...:
            try:
                describe_document(path, value, single_line=False)
            except ValueError as exc:
                return str(exc)
    if _looks_like_yaml(path, bare):
        return (f"{path.name}: the file looks like YAML, which TuneLab does not read as data; convert it to "
                "JSON lines, e.g. python -c \"import yaml, json, sys; [print(json.dumps(r)) for r in "
                "yaml.safe_load(open(sys.argv[1]))]\" FILE > out.jsonl")
    keys = _first_keys(bare)
    wrapped = _wrapped_in_head(bare) if keys else None
    if wrapped:
        key, n = wrapped
        return (f"{path.name}: the file is one JSON object holding {n} records under the key '{key}'; save just "
                f"that list (the value of '{key}') as the file, or one record per line")
    if keys:
        return (f"{path.name}: the records have the keys {', '.join(keys[:8])}, which no installed format reads "
                f"(installed: {names}); rename the keys (e.g. to instruction/output or messages) or choose a "
                "format with --format")
    return f"{path.name}: could not tell the format from its content; choose one with --format (installed: {names})"


def _looks_like_yaml(path, bare: str) -> bool:
    if path.suffix.lower() in (".yaml", ".yml") or bare.startswith("---"):
        return True
    lines = [ln for ln in bare.splitlines()[:20] if ln.strip() and not ln.lstrip().startswith("#")]
    pattern = re.compile(r"^\s*(- )?[A-Za-z_][\w-]*: ")
    return len(lines) >= 2 and sum(bool(pattern.match(ln)) for ln in lines) >= len(lines) // 2 + 1 \
        and bool(re.match(r"^- [A-Za-z_][\w-]*: ", lines[0]))


def _wrapped_in_head(bare: str):
    """``(key, n)`` when the head is one object holding a list of records under one key (:func:`_wrapped_list`)."""
    try:
        value, end = json.JSONDecoder().raw_decode(bare)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or bare[end:].strip():
        return None
    return _wrapped_list(value)


def _first_keys(bare: str) -> list[str]:

    try:
        text = bare[1:].lstrip() if bare.startswith("[") else bare
        value, _ = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError):
        return []
    return [str(k) for k in value] if isinstance(value, dict) else []
