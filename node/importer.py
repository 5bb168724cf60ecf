"""Bulk import straight into this node's store: every line validated and built once.

Used by ``hashfed publish`` when no server runs on the data directory. Pass 1 turns each input line
into its final entry record (one Entry-model validation, the same that any record gets) and spools
the canonical bytes to a private temporary file; any bad line and nothing is published. Pass 2
appends the spooled records in chunks through the sequencer, without validating them again: they
are the bytes pass 1 validated, in this process, moments before.

Memory stays flat: one chunk of records at a time. A crash during pass 2 leaves a prefix of the
file published (each chunk is one durable transaction); running the same file again appends only
the rest, because an entry whose hash is already active in the set is a duplicate, not a new leaf.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Iterator
from typing import IO

from node.bulkinput import BulkInputError, iter_inputs
from node.service import NodeService
from node.storage import PreparedRecord, spooled_entry
from protocol.errors import FormatError
from protocol.records import timestamp

_HEADER = struct.Struct(">32s16sI")  # record id (ascii hex), hash key, length of the leaf bytes
MAX_REPORTED = 20


class StagedImport:
    """Records built from a whole input file, spooled to a private temporary file."""

    def __init__(self) -> None:
        # mode 0600, unlinked at once: nobody else can read or change it between the passes
        self._file: IO[bytes] = tempfile.TemporaryFile(prefix="hashfed-import-")  # noqa: SIM115
        self.count = 0

    def add(self, item: PreparedRecord) -> None:
        assert item.hash_key is not None
        self._file.write(_HEADER.pack(item.record.id.encode(), item.hash_key, len(item.data)))
        self._file.write(item.data)
        self.count += 1

    def chunks(self, size: int) -> Iterator[list[PreparedRecord]]:
        self._file.seek(0)
        chunk: list[PreparedRecord] = []
        for _ in range(self.count):
            rid, key, length = _HEADER.unpack(self._file.read(_HEADER.size))
            chunk.append(spooled_entry(rid.decode(), self._file.read(length), key))
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def close(self) -> None:
        self._file.close()


def stage(service: NodeService, set_name: str, stream: IO[bytes], fmt: str) -> StagedImport:
    """Pass 1: build every line's record; BulkInputError (nothing staged) if any line is bad."""
    from node.bulkinput import input_error

    origin = service.set_origin(set_name)
    now = timestamp()
    staged = StagedImport()
    errors: list[tuple[int, str]] = []
    bad = 0
    try:
        for n, item in iter_inputs(stream, fmt, complete=False):
            if isinstance(item, Exception):
                problem: Exception | None = item
            else:
                try:
                    staged.add(service.build_entry(item, origin, now))
                    problem = None
                except FormatError as e:
                    problem = input_error(e)
            if problem is not None:
                bad += 1
                if len(errors) < MAX_REPORTED:
                    errors.append((n, str(problem)))
        if bad:
            raise BulkInputError(errors, bad)
    except BaseException:
        staged.close()
        raise
    return staged
