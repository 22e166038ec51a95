"""Big jobs as a multipart upload: a ``spec`` part (the JSON job without recipients) and a
``recipients`` file part, CSV with a header, an ``id`` column (the PSID) and any other columns
as personalisation variables.

The file is spooled to disk by the form parser, then read in blocks (csvblocks.py: whole blocks
checked at C speed, the csv module for the rest, row by row): recipients are deduped (seen.py),
checked (a PSID; every placeholder fillable), cut into chunks and pushed to the job's backlog in
pipelined batches, so a million rows never sit in memory at once. Any bad row stops the upload,
deletes what was pushed, and answers 422 naming the row and column: nothing is left behind.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable, Iterable
from itertools import compress, repeat
from typing import IO, Any

from redis.asyncio import Redis
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from services.producer import csvblocks, intake, jobs, whatsapp
from services.producer.common import check_page
from services.producer.seen import SeenIds
from shared import keys, messages
from shared.errors import ApiError
from shared.messages import Personalised
from shared.models import (
    Chunk,
    WhatsAppUploadSpec,
    msgpack_encode,
    upload_spec_decoder,
    wa_upload_spec_decoder,
)
from shared.settings import ProducerSettings

_PSID = re.compile(r"^[0-9]{1,64}$")
_E164 = re.compile(r"^\+?[0-9]{8,15}$")  # a WhatsApp job's ids; the "+" is dropped
# The same shapes for whole blocks at once (an id pattern not listed here: row by row)
_SHAPES = {_PSID: csvblocks.IdShape(1, 64, False), _E164: csvblocks.IdShape(8, 15, True)}
_PUSH_EVERY = 500  # chunks per pipelined RPUSH round trip
_MAX_SPEC = 64 * 1024
_UNCOMMITTED_TTL_S = 3600


def _bad_csv(message: str, field: str = "recipients") -> ApiError:
    return ApiError(422, "invalid_csv", message, field)


async def read_form(request: Request, settings: ProducerSettings) -> tuple[bytes, UploadFile]:
    """The ``spec`` bytes and the ``recipients`` file; 411/413/422 for anything else."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise ApiError(411, "length_required", "send uploads with a Content-Length")
    if int(length) > settings.max_upload:
        raise ApiError(
            413,
            "body_too_large",
            f"upload exceeds the limit of {settings.max_upload} bytes (FANOUT_MAX_UPLOAD)",
        )
    try:
        # A little room past spec + recipients, so a stray part gets a 422 that names it.
        form = await request.form(max_files=2, max_fields=3, max_part_size=_MAX_SPEC)
    except MultiPartException as exc:
        raise ApiError(422, "invalid_multipart", f"bad multipart body: {exc.message}") from None
    extra = sorted(set(form.keys()) - {"spec", "recipients"})
    if extra:
        raise ApiError(422, "invalid_multipart", f"unexpected part {extra[0]!r}", extra[0])
    spec = form.get("spec")
    recipients = form.get("recipients")
    if not isinstance(spec, str):
        raise ApiError(
            422, "invalid_multipart", "a `spec` field with the job's JSON is needed", "spec"
        )
    if not isinstance(recipients, UploadFile):
        message = "a `recipients` file part (CSV with an id column) is needed"
        raise ApiError(422, "invalid_multipart", message, "recipients")
    return spec.encode(), recipients


def _header(row: list[str], template: Personalised[Any]) -> tuple[int, list[tuple[int, str]]]:
    names = [name.strip() for name in row]
    if "id" not in names:
        raise _bad_csv("the CSV header has no `id` column (the recipients' PSIDs)")
    if len(set(names)) != len(names):
        raise _bad_csv("the CSV header names a column twice")
    for name in template.required:
        if name not in names:
            raise _bad_csv(
                f"{{{{{name}}}}} is in the message but the CSV has no `{name}` column",
                template.field_using(name),
            )
    used = [(names.index(name), name) for name in template.names if name in names]
    return names.index("id"), used


class Ingest:
    """Rows in, chunks pushed; one per upload."""

    def __init__(self, redis: Redis, job_id: str, chunk_size: int) -> None:
        self.redis = redis
        self.keys = keys.JobKeys.of(job_id)
        self.chunk_size = chunk_size
        self.seen = SeenIds()
        self.duplicates = 0
        self.start = 0  # the position of ids[0]
        self.ids: list[str] = []
        self.vars: list[dict[str, str]] = []
        self.encoded: list[bytes] = []
        self.chunks = 0

    def add_many(self, ids: list[str], values: list[dict[str, str]] | None) -> None:
        """Rows in file order; a repeated id is dropped (the first row wins)."""
        first = self.seen.first(ids)
        if first is not None:
            self.duplicates += first.count(False)
            ids = list(compress(ids, first))
            values = None if values is None else list(compress(values, first))
        self.ids += ids
        if values is not None:
            self.vars += values
        self._cut(len(self.ids) - len(self.ids) % self.chunk_size)

    def _cut(self, end: int) -> None:
        """Encodes ids[:end] as chunks (all full but the last)."""
        size = self.chunk_size
        for at in range(0, end, size):
            ids = self.ids[at : at + size]
            chunk = Chunk(job=self.keys.job_id, no=self.chunks, start=self.start + at, ids=ids)
            if self.vars:
                chunk.vars = self.vars[at : at + size]
            self.encoded.append(msgpack_encode(chunk))
            self.chunks += 1
        self.start += end
        del self.ids[:end], self.vars[:end]

    async def flush(self, final: bool = False) -> None:
        if final and self.ids:
            self._cut(len(self.ids))
        if not self.encoded or (len(self.encoded) < _PUSH_EVERY and not final):
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.rpush(self.keys.backlog, *self.encoded)
            pipe.expire(self.keys.backlog, _UNCOMMITTED_TTL_S)
            await pipe.execute()
        self.encoded = []

    async def abandon(self) -> None:
        await self.redis.delete(self.keys.backlog)


async def prepare_upload(
    request: Request, redis: Redis, settings: ProducerSettings, tenant: str, key: str | None
) -> jobs.PreparedJob:
    spec_bytes, file = await read_form(request, settings)
    if whatsapp.is_whatsapp(spec_bytes):
        return await _prepare_whatsapp(spec_bytes, file, redis, settings, tenant, key)
    try:
        if b'"test_recipients"' in spec_bytes:
            message = "a test send takes test_recipients instead of a CSV: send it as JSON"
            raise ApiError(422, "invalid_field", message, "test_recipients")
        spec = intake.decode(spec_bytes, upload_spec_decoder, "spec")
        check_page(settings, tenant, spec.page_id)
        template = intake.check_spec(spec, settings)  # the HUMAN_AGENT count waits for the rows
    except BaseException:
        await file.close()  # the spooled file, closed here rather than by the collector
        raise
    await intake.check_callback(spec.callback_url, settings)
    shard = jobs.shard_for(tenant, key, settings.shards)
    job_id = keys.new_job_id(shard)
    ingest = Ingest(redis, job_id, settings.chunk_size)
    digest = hashlib.sha256(spec_bytes)

    def lane(count: int) -> None:
        messages.check_lane(spec.messaging_type, spec.tag, spec.message, count)

    try:
        await _ingest(file.file, lane, template, ingest, settings, digest)
    except BaseException:
        await ingest.abandon()
        raise
    finally:
        await file.close()
    fields = jobs.job_fields(spec, spec.message, tenant, settings, len(ingest.seen), ingest.chunks)
    return _prepared(
        job_id,
        shard,
        tenant,
        key,
        ingest,
        fields,
        template.personal,
        digest,
        intake.send_at_ms(spec),
    )


def _prepared(
    job_id: str,
    shard: int,
    tenant: str,
    key: str | None,
    ingest: Ingest,
    fields: dict[str, Any],
    personal: bool,
    digest: hashlib._Hash,
    send_at_ms: int,
) -> jobs.PreparedJob:
    """The job an ingested upload makes, whichever channel's spec it had."""
    fields["personal"] = "1" if personal else ""
    return jobs.PreparedJob(
        job_id=job_id,
        total=len(ingest.seen),
        duplicates_removed=ingest.duplicates,
        chunks=[],  # already pushed
        fields=fields,
        send_at_ms=send_at_ms,
        idempotency=None if key is None else keys.idempotency(shard, tenant, key),
        fingerprint="" if key is None else digest.hexdigest(),
    )


async def _prepare_whatsapp(
    spec_bytes: bytes,
    file: UploadFile,
    redis: Redis,
    settings: ProducerSettings,
    tenant: str,
    key: str | None,
) -> jobs.PreparedJob:
    """As ``prepare_upload``, for a WhatsApp spec: ids in E.164 (digits kept), then the tier."""
    try:
        spec: WhatsAppUploadSpec = intake.decode(spec_bytes, wa_upload_spec_decoder, "spec")
        template = whatsapp.check_spec(spec, settings, tenant)
    except BaseException:
        await file.close()
        raise
    await intake.check_callback(spec.callback_url, settings)
    shard = jobs.shard_for(tenant, key, settings.shards)
    job_id = keys.new_job_id(shard)
    ingest = Ingest(redis, job_id, settings.chunk_size)
    digest = hashlib.sha256(spec_bytes)
    try:
        await _ingest(file.file, None, template, ingest, settings, digest, _E164)
        await whatsapp.check_tier(redis, settings, spec, ingest.seen)
    except BaseException:
        await ingest.abandon()
        raise
    finally:
        await file.close()
    fields = whatsapp.job_fields(
        spec, spec.message, tenant, settings, len(ingest.seen), ingest.chunks
    )
    return _prepared(
        job_id,
        shard,
        tenant,
        key,
        ingest,
        fields,
        template.personal,
        digest,
        intake.send_at_ms(spec),
    )


async def _ingest(
    file: IO[bytes],
    lane: Callable[[int], None] | None,
    template: Personalised[Any],
    ingest: Ingest,
    settings: ProducerSettings,
    digest: hashlib._Hash,
    ids: re.Pattern[str] = _PSID,
) -> None:
    """``lane``: the check that waits for the count (Messenger's HUMAN_AGENT rule); ``ids``:
    what an id must look like, PSIDs or, for WhatsApp, E.164 (its "+" dropped)."""
    blocks = csvblocks.Blocks(io.BufferedReader(_Hashing(file, digest)))
    header = blocks.header()
    if header is None:
        raise _bad_csv("the CSV is empty")
    id_col, used = _header(header, template)
    names = [name for _, name in used]
    required = [i for i, name in used if name in template.required]
    row_no = 0
    for item in blocks.rows(len(header), id_col, [i for i, _ in used], _SHAPES.get(ids)):
        if isinstance(item, csvblocks.Batch) and not any("" in item.columns[i] for i in required):
            # Checked as a whole: every id in shape, every placeholder fillable.
            row_no += len(item.ids)
            values = _var_dicts(names, [item.columns[i] for i, _ in used]) if used else None
            ingest.add_many(item.ids, values)
        else:  # row by row, for the exact error (or rows the csv module had to read)
            rows = item.rows() if isinstance(item, csvblocks.Batch) else item
            row_no = _add_rows(rows, row_no, id_col, used, template, ingest, ids)
        if len(ingest.seen) > settings.max_recipients:
            intake.check_count(settings.max_recipients + 1, settings)  # as counted row by row
        if len(ingest.encoded) >= _PUSH_EVERY:
            await ingest.flush()
    if not ingest.seen:
        raise _bad_csv("the CSV has a header but no recipients")
    # Before the last chunks are pushed: a refused job leaves nothing behind.
    if lane is not None:
        lane(len(ingest.seen))
    await ingest.flush(final=True)


def _var_dicts(names: list[str], columns: list[list[str]]) -> list[dict[str, str]]:
    """Each row's variables; a dict display per row where it can (twice as fast as dict(zip))."""
    if len(names) == 1:
        (name,), (column,) = names, columns
        return [{name: value} for value in column]
    if len(names) == 2:
        (one, two), (ones, twos) = names, columns
        return [{one: a, two: b} for a, b in zip(ones, twos, strict=True)]
    return list(map(dict, map(zip, repeat(names), zip(*columns, strict=True))))


def _add_rows(
    rows: Iterable[tuple[int, list[str]]],
    row_no: int,
    id_col: int,
    used: list[tuple[int, str]],
    template: Personalised[Any],
    ingest: Ingest,
    ids: re.Pattern[str],
) -> int:
    """Rows one by one, each checked on its own; answers the last row's number."""
    psids: list[str] = []
    var_dicts: list[dict[str, str]] = []
    for line, row in rows:
        row_no += 1
        psid = row[id_col].strip() if id_col < len(row) else ""
        if not ids.match(psid):
            raise _bad_csv(f"row {row_no} (line {line}), column id: {_not_an_id(psid, ids)}")
        if psid[0] == "+":
            psid = psid[1:]
        if used:
            values = {name: row[i].strip() if i < len(row) else "" for i, name in used}
            missing = template.unfillable(values)
            if missing is not None:
                raise ApiError(
                    422,
                    "unfillable_placeholder",
                    f"row {row_no} (line {line}), column {missing}: empty, and "
                    f"{{{{{missing}}}}} has no default",
                    "recipients",
                )
            var_dicts.append(values)
        psids.append(psid)
    ingest.add_many(psids, var_dicts if used else None)
    return row_no


def _not_an_id(text: str, ids: re.Pattern[str]) -> str:
    return f"{text!r} is not a PSID" if ids is _PSID else whatsapp.bad_number(text)


class _Hashing(io.RawIOBase):
    """Reads through to the file, hashing what passes (the upload's idempotency fingerprint)."""

    def __init__(self, file: IO[bytes], digest: Any) -> None:
        self.file = file
        self.digest = digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.file.read(len(buffer))
        self.digest.update(data)
        buffer[: len(data)] = data
        return len(data)
