"""The rows of a `.json` / `.jsonl` unit and their text field, each mistake named with its file and line: JSON that
does not parse, a row that is not an object, a text field that is not text, a lone surrogate escape."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tasks.errors import UserError

if TYPE_CHECKING:
    from tasks.corpus.sources import Unit


def line_of(f, offset: int) -> int:
    """1-based line number of a byte offset of an open file (counted only when an error names it)."""
    f.seek(0)
    return f.read(offset).count(b"\n") + 1


def json_rows(unit: Unit, f, text: str, begin: int, whole: bool) -> tuple[list, list[int] | None]:
    """The JSON objects of a unit and the line (0-based, within the unit) of each: one JSON document (a list of
    rows; no lines) when `whole` and the text parses as one, else JSON Lines, an error naming its line."""
    if whole:
        try:
            doc = json.loads(text)
            return (doc if isinstance(doc, list) else [doc]), None
        except ValueError:
            pass
    rows, lines = [], []
    for n, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as exc:
            raise UserError(f"corpus file {unit.name!r} line {line_of(f, begin) + n}: not valid JSON ({exc})") from None
        lines.append(n)
    return rows, lines


def _json_kind(value) -> str:
    """What a JSON value is, in JSON's words."""
    if isinstance(value, bool):
        return "true/false"
    kinds = {str: "string", int: "number", float: "number", list: "list", dict: "object", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def column_texts(unit: Unit, f, rows: list, lines: list[int] | None, begin: int, field: str) -> list:
    """The `field` of each JSON row, None where a row lacks it or holds null (dropped later). A row that is not a
    JSON object, a field that is neither text nor null, or no row with the field at all is a UserError naming the
    file, the line (the row of a `.json` list) and what is wrong."""

    def where(i: int) -> str:
        return f"line {line_of(f, begin) + lines[i]}" if lines is not None else f"row {i + 1}"

    def shown(value) -> str:
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 40 else text[:37] + "..."

    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise UserError(f"corpus file {unit.name!r} {where(bad)}: a JSON {_json_kind(rows[bad])} ({shown(rows[bad])}), "
                        f"not an object; give each document as an object with its text in the field corpus.text_field "
                        f"names ({field!r}), e.g. {{{json.dumps(field)}: \"...\"}}")
    if rows and not any(field in r for r in rows):
        cols = sorted({k for r in rows for k in r})
        raise UserError(f"corpus file {unit.name!r} has no column {field!r} (columns: {', '.join(cols)}); "
                        "set corpus.text_field")
    texts = [r.get(field) for r in rows]
    bad = next((i for i, t in enumerate(texts) if t is not None and not isinstance(t, str)), None)
    if bad is not None:
        raise UserError(f"corpus file {unit.name!r} {where(bad)}: {field!r} is a JSON {_json_kind(texts[bad])} "
                        f"({shown(texts[bad])}), not text; give the documents as JSON strings, or set "
                        "corpus.text_field to the field that holds them")
    return texts


def check_encodable(unit: Unit, f, texts: list, lines: list[int] | None, begin: int) -> None:
    """A JSON text with a lone surrogate escape stands for no character: named with its line, as `load_texts`
    names it."""
    try:
        "".join(t for t in texts if isinstance(t, str)).encode("utf-8")
        return
    except UnicodeEncodeError:
        pass
    for i, t in enumerate(texts):
        if isinstance(t, str) and not t.encode("utf-8", "surrogatepass").decode("utf-8", "ignore") == t:
            where = f"line {line_of(f, begin) + lines[i]}: " if lines is not None else ""
            bad = next(c for c in t if 0xD800 <= ord(c) <= 0xDFFF)
            raise UserError(f"corpus file {unit.name!r} {where}lone surrogate escape \\u{ord(bad):04x} (half of a "
                            "UTF-16 pair, no character); fix or remove it")
