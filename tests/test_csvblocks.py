"""services/producer/csvblocks.py reads a CSV as the csv module does (the same rows, on the same
lines, the same errors), whatever falls on a block's edge, and services/producer/seen.py keeps
exactly the ids it was given. Blocks are made tiny here so that every row meets an edge."""

from __future__ import annotations

import asyncio
import csv
import io
import random
from hashlib import sha256
from types import SimpleNamespace
from typing import Any

import pytest

from services.producer import csvblocks, upload
from services.producer.csvblocks import Batch, Blocks, IdShape
from services.producer.seen import SeenIds
from shared import keys
from shared.errors import ApiError
from shared.messages import Message, Personalised
from shared.models import chunk_decoder

PSID = IdShape(1, 64, False)
E164 = IdShape(8, 15, True)

# Pieces a row is made of: plain values, ids, and everything the fast path must hand to the
# csv module (quotes, a quoted line end, spaces, blanks, a "+", a NUL).
FIELDS = [
    "123",
    "4567",
    "Ann",
    "",
    " 89 ",
    "Bo Li",
    '"x,y"',
    '"two\nlines"',
    '"a ""q"""',
    "+4917",
    "B\x00o",
    '"open',
    '"A"x',
]


def reference(data: bytes) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """What the csv module reads: the header, then (line number, fields) of each row."""
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    header = next(reader, None)
    return header, [(reader.line_num, row) for row in reader if row]


def blocks_read(
    data: bytes, shape: IdShape | None = PSID, used: tuple[int, ...] = (1,)
) -> tuple[list[str] | None, list[tuple[int, list[str]]], list[Batch]]:
    blocks = Blocks(io.BufferedReader(io.BytesIO(data)))
    header = blocks.header()
    rows: list[tuple[int, list[str]]] = []
    batches: list[Batch] = []
    if header is None:
        return None, rows, batches
    for item in blocks.rows(len(header), 0, [i for i in used if i < len(header)], shape):
        if isinstance(item, Batch):
            batches.append(item)
            rows.extend(item.rows())
        else:
            rows.extend(item)
    return header, rows, batches


def random_csv(rng: random.Random, width: int) -> bytes:
    end = rng.choice(["\n", "\r\n"])
    lines = [",".join(["id", "first_name", "city"][:width])]
    for _ in range(rng.randrange(0, 40)):
        if rng.random() < 0.05:
            lines.append("")  # a blank line
            continue
        fields = width + (rng.random() < 0.05) * rng.choice([-1, 1])
        if rng.random() < 0.7:  # mostly rows the fast path takes
            lines.append(",".join([str(rng.randrange(1, 10**17)), "Ann", "Oslo"][: max(fields, 1)]))
        else:
            lines.append(",".join(rng.choice(FIELDS) for _ in range(max(fields, 1))))
    text = end.join(lines) + (end if rng.random() < 0.8 else "")
    bom = "\ufeff" if rng.random() < 0.2 else ""
    return (bom + text).encode()


@pytest.mark.parametrize("block", [1, 5, 16, 64, 1 << 16])
@pytest.mark.parametrize("width", [1, 2, 3])
def test_the_rows_and_their_lines_are_the_csv_modules(
    monkeypatch: pytest.MonkeyPatch, block: int, width: int
) -> None:
    monkeypatch.setattr(csvblocks, "_BLOCK", block)
    rng = random.Random(block * 10 + width)
    fast = 0
    for _ in range(150):
        data = random_csv(rng, width)
        try:
            expected = reference(data)
        except csv.Error:
            continue  # an error: compared in the test below
        header, rows, batches = blocks_read(data)
        assert (header, rows) == expected, data
        fast += sum(len(b.ids) for b in batches)
        for batch in batches:  # what a batch says of its rows is what the rows say
            assert batch.ids == [row[0] for _, row in batch.rows()]
            if 1 in batch.columns:
                assert batch.columns[1] == [row[1].strip() for _, row in batch.rows()]
    assert fast > 0  # the fast path was taken, and agreed


@pytest.mark.parametrize("block", [3, 64])
@pytest.mark.parametrize(
    "data",
    [
        b"id,name\n1," + b"x" * (csv.field_size_limit() + 1) + b"\n",
    ],
)
def test_an_error_names_the_csv_modules_line(
    monkeypatch: pytest.MonkeyPatch, block: int, data: bytes
) -> None:
    monkeypatch.setattr(csvblocks, "_BLOCK", block)
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    with pytest.raises(csv.Error) as expected:
        list(reader)
    with pytest.raises(ApiError) as got:
        blocks_read(data)
    assert got.value.message == f"line {reader.line_num}: {expected.value}"
    assert (got.value.status, got.value.code, got.value.field) == (422, "invalid_csv", "recipients")


@pytest.mark.parametrize("block", [2, 64, 1 << 16])
def test_a_byte_that_is_not_utf8_is_named_on_its_line(
    monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(csvblocks, "_BLOCK", block)
    for data, line in [
        (b"id,first_name\n1,\xff\xfe\n", 2),
        (b"i\xffd\n1\n", 1),
        (b"id\n" + b"1\n" * 50 + b"2\xc3\n3\n", 52),
        (b'id,name\n1,"A\nnn"\n2,\xff\n', 4),  # after a quoted line end: the csv module's count
    ]:
        with pytest.raises(ApiError) as got:
            blocks_read(data)
        assert got.value.message == f"line {line}: the file is not UTF-8"


def test_fast_batches_check_ids_by_shape() -> None:
    data = b"id,name\n+4915112345678,Ann\n4915112345679, Bo \n"
    _, rows, batches = blocks_read(data, E164)
    assert [b.ids for b in batches] == [["4915112345678", "4915112345679"]]
    assert batches[0].columns == {1: ["Ann", "Bo"]}
    # a PSID has no "+", and an id the shape refuses goes row by row, as read
    _, rows, batches = blocks_read(data, PSID)
    assert batches == [] and rows == [
        (2, ["+4915112345678", "Ann"]),
        (3, ["4915112345679", " Bo "]),
    ]
    _, rows, batches = blocks_read(b"id\n" + b"1" * 65 + b"\n", PSID)
    assert batches == [] and rows == [(2, ["1" * 65])]
    _, _, batches = blocks_read(b"id\n++4915112345678\n", E164)
    assert batches == []
    _, _, batches = blocks_read(b"id\n1\n2\n", None)  # no shape: never a batch
    assert batches == []


def test_seen_ids_are_exact() -> None:
    seen = SeenIds()
    assert seen.first(["1", "2", "012"]) is None
    # "12" and "012" are different people; repeats inside a batch and across batches
    assert seen.first(["3", "12", "012", "4", "4"]) == [True, True, False, True, False]
    long = "9" * 30
    assert seen.first(["x", long, long, "1" * 19]) == [True, True, False, True]
    assert seen.first([long, "5"]) == [False, True]
    assert len(seen) == 10
    assert sorted(seen) == sorted(["1", "2", "012", "3", "12", "4", "x", long, "1" * 19, "5"])
    assert "012" in seen and "12" in seen and "0012" not in seen and 12 not in seen


def test_seen_ids_agree_with_a_set() -> None:
    """Many ids in batches of every size, repeats within and across batches, ids kept as ints
    and as strings: the same answers as a set of the strings."""
    rng = random.Random(7)
    pool = [str(rng.randrange(1, 10**17)) for _ in range(30_000)]
    pool += ["0" + p for p in pool[:50]] + ["7" * 25, "abc"]  # ids kept beside the table
    seen, reference = SeenIds(), set()
    for _ in range(300):
        batch = [rng.choice(pool) for _ in range(rng.choice([1, 2, 10, 300, 2300]))]
        want = []
        for psid in batch:
            want.append(psid not in reference)
            reference.add(psid)
        got = seen.first(batch)
        assert (got or [True] * len(batch)) == want
        assert len(seen) == len(reference)
    assert set(seen) == reference
    assert all((p in seen) == (p in reference) for p in pool)
    assert "1" + "0" * 17 not in seen


def test_rows_the_csv_module_read_are_checked_before_a_later_error() -> None:
    """A quote hands the rest of the file to the csv module, whose rows go on in groups: a bad
    id on line 3 is still the error, not the over-long field on line 5 read in the same group;
    and the first row of a repeated id wins there too."""

    template = Personalised(Message(text="Hi {{name}}"))
    settings: Any = SimpleNamespace(max_recipients=10)
    long = b"x" * (csv.field_size_limit() + 1)
    bad = b'id,name\n"1",Ann\nabc,Bo\n3,Cy\n4,' + long + b"\n"
    ingest = upload.Ingest(None, keys.new_job_id(0), 100)  # type: ignore[arg-type]
    with pytest.raises(ApiError) as got:
        asyncio.run(upload._ingest(io.BytesIO(bad), None, template, ingest, settings, sha256()))
    assert got.value.message == "row 2 (line 3), column id: 'abc' is not a PSID"

    class Unpushed(upload.Ingest):
        async def flush(self, final: bool = False) -> None:
            if final and self.ids:
                self._cut(len(self.ids))

    good = b'id,name\n"1",Ann\n2,Bo\n1,Again\n'
    kept = Unpushed(None, keys.new_job_id(0), 100)  # type: ignore[arg-type]
    asyncio.run(upload._ingest(io.BytesIO(good), None, template, kept, settings, sha256()))
    (chunk,) = map(chunk_decoder.decode, kept.encoded)
    assert (chunk.ids, chunk.vars, kept.duplicates) == (
        ["1", "2"],
        [{"name": "Ann"}, {"name": "Bo"}],
        1,
    )
