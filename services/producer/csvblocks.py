"""A CSV upload read in blocks of whole lines: most blocks are checked and split as a whole at
C speed, and the csv module reads whatever those checks cannot vouch for, so every row means
what it meant to the csv module and every error names the same row and line.

A block takes the fast path when it has no quote, no NUL, no line end but ``\\n`` (``\\r\\n``
is folded), every line exactly the header's number of fields, no line past the csv module's
field limit, and every id of the expected shape; its columns are then slices of one split.
Anything else, a blank line included, goes row by row through ``csv.reader``: that block alone,
or, once a block has a quote (a quoted field may run across a block's end), the rest of the
file. A block is decoded whole (strict UTF-8); a byte that is not UTF-8 is reported on its line
after the lines before it were read.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from itertools import chain, repeat
from operator import methodcaller
from typing import IO, NamedTuple

from shared.errors import ApiError

# Bytes read at a time (~2,300 rows of id,first_name,city): under the csv module's field limit,
# so a block's lines need no length check unless a long line was carried over.
_BLOCK = 1 << 16
_BOM = "\ufeff"  # utf-8-sig, as Excel writes it: dropped at the start of the file
_DROP_PLUS = methodcaller("removeprefix", "+")


class IdShape(NamedTuple):
    """What an id must be: ASCII digits, ``shortest`` to ``longest`` of them, after dropping
    one leading ``+`` where ``plus`` allows it."""

    shortest: int
    longest: int
    plus: bool


class Batch(NamedTuple):
    """Consecutive rows that passed the block checks (ids already in shape)."""

    first_line: int  # the line number of the first row
    lines: list[str]  # as read, without their line ends
    ids: list[str]  # the id column, a leading "+" dropped where the shape allows it
    columns: dict[int, list[str]]  # the other columns asked for, by index, stripped

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        """The same rows one by one, as the csv module reads them (no quote in a batch)."""
        for number, line in enumerate(self.lines, self.first_line):
            yield number, line.split(",")


Row = tuple[int, list[str]]  # (line number, fields) of a row read by the csv module
_GROUP = 1000  # rows the csv module read, handed on together


def bad_csv(message: str) -> ApiError:
    return ApiError(422, "invalid_csv", message, "recipients")


class _NotUtf8(Exception):
    """The next line holds a byte that is not UTF-8 (the lines before it were handed out)."""


class Blocks:
    """``header()`` first, then ``rows()``: Batches and single rows, in file order."""

    def __init__(self, file: IO[bytes]) -> None:
        self._texts = _texts(file)
        self._line = 0  # lines read so far
        self._slow: _CsvRows | None = None  # the csv module reads the whole file

    def header(self) -> list[str] | None:
        """The first row; None for an empty file."""
        try:
            first = next(self._texts, None)
        except _NotUtf8:
            raise bad_csv("line 1: the file is not UTF-8") from None
        if first is None:
            return None
        first = first.removeprefix(_BOM)
        line, sep, rest = first.partition("\n")
        line = line.removesuffix("\r")
        if sep and '"' not in line and "\x00" not in line and "\r" not in line:
            self._line = 1
            if rest:
                self._texts = chain([rest], self._texts)
            return line.split(",")
        # Quoted, or the whole file one line: the csv module reads it all.
        self._slow = _CsvRows(chain([first], self._texts), 0)
        return self._slow.first()

    def rows(
        self, width: int, id_col: int, columns: list[int], shape: IdShape | None
    ) -> Iterator[Batch | list[Row]]:
        """Rows after the header: Batches where the block checks pass (never with ``shape``
        None), lists of rows where the csv module had to read them."""
        if self._slow is not None:
            yield from self._slow.groups()
            return
        texts = self._texts
        while True:
            try:
                text = next(texts, None)
            except _NotUtf8:
                raise bad_csv(f"line {self._line + 1}: the file is not UTF-8") from None
            if text is None:
                return
            if '"' in text:  # a quoted field may run past this block: the csv module reads on
                yield from _CsvRows(chain([text], texts), self._line).groups()
                return
            batch = None
            if shape is not None:
                batch = _batch(text, self._line + 1, width, id_col, columns, shape)
            if batch is not None:
                self._line += len(batch.lines)
                yield batch
                continue
            reader = _CsvRows([text], self._line)
            yield from reader.groups()
            self._line = reader.line


class _CsvRows:
    """The csv module over blocks of text, counting lines on from ``line``."""

    def __init__(self, texts: Iterable[str], line: int) -> None:
        lines = chain.from_iterable(io.StringIO(text, newline="") for text in texts)
        self._start = line
        self._reader = csv.reader(lines)

    @property
    def line(self) -> int:
        return self._start + self._reader.line_num

    def first(self) -> list[str] | None:
        """The next row as it is, a blank one too (a header); None at the end."""
        try:
            return next(self._reader, None)
        except (csv.Error, _NotUtf8) as exc:
            raise self._error(exc) from None

    def groups(self) -> Iterator[list[Row]]:
        """The rows in lists of up to _GROUP (a blank line is no row); the rows before an
        error are handed on before it."""
        group: list[Row] = []
        reader, start = self._reader, self._start
        try:
            for row in reader:
                if row:
                    group.append((start + reader.line_num, row))
                    if len(group) == _GROUP:
                        yield group
                        group = []
        except (csv.Error, _NotUtf8) as exc:
            error = self._error(exc)
        else:
            if group:
                yield group
            return
        if group:
            yield group
        raise error

    def _error(self, exc: Exception) -> ApiError:
        if isinstance(exc, _NotUtf8):
            return bad_csv(f"line {self.line + 1}: the file is not UTF-8")
        return bad_csv(f"line {self.line}: {exc}")


def _texts(file: IO[bytes]) -> Iterator[str]:
    """The file decoded, in blocks of whole lines (the last may lack its line end)."""
    carry = b""
    data = file.read(_BLOCK)
    while data:
        data = carry + data
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        if cut:
            yield from _decoded(data[:cut])
        data = file.read(_BLOCK)
    if carry:
        yield from _decoded(carry)


def _decoded(data: bytes) -> Iterator[str]:
    """``data`` as text; else the whole lines before the first byte that is not UTF-8, then
    _NotUtf8."""
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        valid = data.rfind(b"\n", 0, exc.start) + 1
        if valid:
            yield data[:valid].decode()
        raise _NotUtf8 from None
    yield text


def _batch(
    text: str, first_line: int, width: int, id_col: int, columns: list[int], shape: IdShape
) -> Batch | None:
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            return None
    if "\x00" in text:
        return None
    body = text.removesuffix("\n")
    lines = body.split("\n")
    limit = csv.field_size_limit()
    if len(body) > limit and max(map(len, lines)) > limit:
        return None
    if width == 1:
        if "," in body:
            return None
        flat = lines
    else:
        if set(map(str.count, lines, repeat(","))) != {width - 1}:
            return None  # a blank line, a short or a long row: the csv module reads them
        flat = body.replace("\n", ",").split(",")
    ids = _shaped(flat[id_col::width], shape)
    if ids is None:
        return None
    picked = {i: list(map(str.strip, flat[i::width])) for i in columns}
    return Batch(first_line, lines, ids, picked)


def _shaped(ids: list[str], shape: IdShape) -> list[str] | None:
    joined = "".join(ids)
    if shape.plus and "+" in joined:
        ids = list(map(_DROP_PLUS, ids))
        joined = "".join(ids)
    if not (joined.isascii() and joined.encode().isdigit()):
        return None  # also spaces around an id: the row-by-row path strips them
    lengths = set(map(len, ids))
    if min(lengths) < shape.shortest or max(lengths) > shape.longest:
        return None
    return ids
