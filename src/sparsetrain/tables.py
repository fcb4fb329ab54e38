"""Every table sparsetrain prints or writes: columns and rows rendered as aligned text, markdown or CSV.

A :class:`Column` says where its values come from (a key of mapping rows, or the position in sequence rows), its
title, how a value becomes text (a format spec such as ``".4f"``, or a function) and its alignment. The three
formats:

- ``"table"``: titles, a rule of dashes, then the rows; columns padded to their widest cell and separated by
  two spaces, trailing spaces dropped;
- ``"markdown"``: a pipe table whose separator row aligns each column (``---`` left, ``---:`` right);
- ``"csv"``: the column keys, then the raw values (numbers unformatted, ``None`` as an empty field).

Text formats have no final newline; CSV ends with one.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["FORMATS", "Column", "render"]

#: The output formats of :func:`render`.
FORMATS = ("table", "markdown", "csv")
_ALIGNS = ("left", "right")


@dataclass(frozen=True)
class Column:
    """One column of a table.

    Attributes:
        key: the key of the value in a mapping row (and the CSV header).
        title: the header of the text formats (default: ``key``).
        format: a format spec applied with :func:`format` (``""``: ``str``), or a function from value to text.
        align: "left" or "right" (text formats).
        missing: the text of a ``None`` value (text formats).
    """

    key: str
    title: str | None = None
    format: str | Callable[[Any], str] = ""
    align: str = "right"
    missing: str = "-"

    def __post_init__(self) -> None:
        if self.align not in _ALIGNS:
            raise ValueError(f"align={self.align!r} is not allowed; choose one of {', '.join(_ALIGNS)}")

    @property
    def header(self) -> str:
        """The column's title in the text formats."""
        return self.key if self.title is None else self.title

    def text(self, value: Any) -> str:
        """``value`` as the cell's text."""
        if value is None:
            return self.missing
        if callable(self.format):
            return self.format(value)
        return format(value, self.format)


def _value(row: Mapping[str, Any] | Sequence[Any], index: int, column: Column) -> Any:
    return row.get(column.key) if isinstance(row, Mapping) else row[index]


def render(columns: Sequence[Column | str], rows: Iterable[Mapping[str, Any] | Sequence[Any]],
           fmt: str = "table") -> str:
    """Render ``rows`` under ``columns`` in one of :data:`FORMATS`.

    Args:
        columns: the columns in display order; a string is ``Column(key)`` (right-aligned, ``str`` values).
        rows: mappings (read by column key) or sequences (read by position).
        fmt: "table" (aligned text), "markdown" or "csv".

    Returns:
        The text: no final newline for "table" and "markdown", one for "csv".

    Raises:
        ValueError: an unknown ``fmt``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r} is not allowed; choose one of {', '.join(FORMATS)}")
    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    rows = list(rows)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([c.key for c in cols])
        for row in rows:
            writer.writerow(["" if (v := _value(row, i, c)) is None else v for i, c in enumerate(cols)])
        return buffer.getvalue()
    cells = [[c.text(_value(row, i, c)) for i, c in enumerate(cols)] for row in rows]
    headers = [c.header for c in cols]
    if fmt == "markdown":
        lines = ["| " + " | ".join(headers) + " |",
                 "|" + "|".join("---" if c.align == "left" else "---:" for c in cols) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])
    widths = [max(len(text) for text in column) for column in zip(headers, *cells)]

    def line(texts: Sequence[str]) -> str:
        return "  ".join(t.ljust(w) if c.align == "left" else t.rjust(w)
                         for t, w, c in zip(texts, widths, cols)).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, cells)])
