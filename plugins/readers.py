"""Reading data files for the built-in formats: JSON arrays, JSON lines, CSV and text, streamed.

Not a plugin (it implements no hook): the helpers ``plugins/formats.py`` reads files with.
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
from pathlib import Path

MAX_REPORTED = 200  # errors kept per file: enough to fix a file, not enough to flood a page


class RowErrors(ValueError):
    """Every bad row of a file; ``str()`` is the first one plus a count."""

    def __init__(self, path, errors):
        self.errors = errors
        first = errors[0]
        where = Path(path).name + (f", row {first['row']}" if first.get("row") is not None else "")
        where += f", field '{first['field']}'" if first.get("field") else ""
        more = f" (and {len(errors) - 1} more bad rows)" if len(errors) > 1 else ""
        super().__init__(f"{where}: {first['message']}{more}")


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


def _skip_space(text, pos):
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


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


def read_json_rows(path) -> list[tuple[int, object]]:
    """``[(row, value)]`` of a whole file, raising ``RowErrors`` listing every bad row (small files, tests)."""
    rows, errors = [], []
    for row, value, error in iter_json_rows(path):
        if error:
            errors.append({"row": row, "field": error[0], "message": error[1]})
        else:
            rows.append((row, value))
    if errors:
        raise RowErrors(path, errors[:MAX_REPORTED])
    if not rows:
        raise ValueError(f"{Path(path).name}: no records found; add at least one example")
    return rows


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
