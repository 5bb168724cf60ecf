"""Offline audit of a tlog-tiles export directory: ``python -m protocol.audit DIR [--json]``.

The directory holds one log as a C2SP tlog-tiles snapshot::

    DIR/checkpoint            the signed checkpoint note being audited
    DIR/vkey                  the log's signed-note verifier key, one line (better: pin it, --vkey)
    DIR/tile/<L>/<N>[.p/<W>]  hash tiles            (paths exactly as TileRef.path() writes them)
    DIR/tile/entries/<N>[.p/<W>]  entry bundles
    DIR/checkpoints/*         optional: older signed checkpoints this auditor kept
    DIR/receipts/<index>.json optional: re-share receipts (checked with --upstream-vkey)
    DIR/members/              optional: the coordinator's membership log, itself an export

With ``--upstream DIR`` (an export of a log this one re-shares from) the audit also checks that
every revocation there of a re-shared entry, below the upstream size the receipts adopted, is
revoked here too. ``--vkey``, ``--upstream-vkey`` and ``--members-vkey`` accept a node's vkey: a
node signs each of its sets' logs with that key under the set's origin.

The audit (1) verifies the checkpoint's signature, (2) streams every entry bundle in index order
through :class:`protocol.verify.LogAuditor` (every record is validated and the revocation rules
checked; for large logs worker processes read and scan the bundles, a bounded number ahead, and
this process applies the log's rules in order), (3) checks that the leaves lead to the
checkpoint's root and that every stored hash tile equals the tile recomputed from the leaves, and
(4) proves every older checkpoint consistent with the current one from the (now verified) tiles.

Files that can only be explained by a larger tree than the checkpoint's (tiles of a log that kept
growing after the checkpoint was copied) are not covered by any signature: they are listed as
unverified, not failed. Any other file under ``tile/`` that is not a tile path fails the audit.

Memory: the auditor's revocation state (see LogAuditor) plus one entry per stored tile file
(O(n / 256)). This module reads files and nothing else: no network, no database.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import gc
import itertools
import json
import multiprocessing
import os
import sys
import traceback
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from protocol import merkle, tiles
from protocol.checkpoint import Checkpoint
from protocol.equivocation import consistency_evidence, evidence_tiles, proof_of
from protocol.errors import (
    FormatError,
    InconsistentTreeError,
    ProofError,
    ProtocolError,
    SignatureError,
    VerificationError,
)
from protocol.grammar import parse_timestamp
from protocol.membership import MembershipState
from protocol.note import Verifier
from protocol.tiles import TILE_WIDTH, TileRef
from protocol.verify import (
    AuditSummary,
    LogAuditor,
    ScannedBundle,
    scan_bundle,
    verify_checkpoint_note,
    verify_consistency_of,
    verify_record,
)

__all__ = ["ExportAuditSummary", "audit_directory", "main"]

# Leaf hashes handed to tiles.update_tiles at once: 64 bundles, 512 KiB of hashes. Large enough
# that the per-call overhead vanishes, small enough to keep the audit's memory flat.
_BATCH_LEAVES = 64 * TILE_WIDTH
_FULL_TILE_BYTES = TILE_WIDTH * merkle.HASH_SIZE

_Position = tuple[bool, int, int]  # (is_entries, level, n)

#: below this many leaves, starting worker processes costs more than it saves
_PARALLEL_MIN_LEAVES = 20_000


@dataclass(frozen=True)
class ExportAuditSummary(AuditSummary):
    """An :class:`AuditSummary` plus what the directory audit checked and with which key."""

    #: the vkey the checkpoint was verified with
    vkey: str = ""
    #: where that key came from: "pinned" (given by the caller) or the vkey file's path
    key_source: str = ""
    bundles: int = 0
    hash_tiles: int = 0
    #: older checkpoints (file names under checkpoints/) proved consistent with the current one
    older_checkpoints: tuple[str, ...] = ()
    #: tile files that lie beyond the checkpoint's tree size, so no signature covers them
    unverified_files: tuple[str, ...] = ()
    #: the checks that ran (optional ones run only when their evidence is in the directory)
    checks: tuple[str, ...] = ()
    #: re-share receipts (receipts/<index>.json) whose chain verified back to the original
    receipts: int = 0
    #: records whose author was checked against the membership log in members/
    members_checked: int = 0
    #: the size of the membership log used, and where it came from: "members/" (the export's
    #: own copy, as fresh as the exporter's mirror of it) or the ``members_dir`` given
    members_size: int = 0
    members_source: str = ""
    #: upstream logs (origins) whose exports (--upstream) were audited for revocation propagation
    upstream_logs: tuple[str, ...] = ()
    #: re-shared entries whose upstream revoked them and that are revoked here too
    upstream_revocations: int = 0
    #: upstream revocations of re-shared entries, not (yet) here, at or beyond the largest
    #: upstream checkpoint in the receipts: this log may not have seen them, so they do not fail
    upstream_revocations_newer: int = 0

    @property
    def key_pinned(self) -> bool:
        return self.key_source == "pinned"

    def as_dict(self) -> dict[str, object]:
        out = super().as_dict()
        out.update(
            vkey=self.vkey,
            key_source=self.key_source,
            key_pinned=self.key_pinned,
            bundles=self.bundles,
            hash_tiles=self.hash_tiles,
            older_checkpoints=list(self.older_checkpoints),
            unverified_files=list(self.unverified_files),
            checks=list(self.checks),
            receipts=self.receipts,
            members_checked=self.members_checked,
            members_size=self.members_size,
            members_source=self.members_source,
            upstream_logs=list(self.upstream_logs),
            upstream_revocations=self.upstream_revocations,
            upstream_revocations_newer=self.upstream_revocations_newer,
        )
        return out


def _with_context(e: ProtocolError, text: str) -> ProtocolError:
    """The same kind of error with ``text`` appended to its message (evidence kept)."""
    if isinstance(e, InconsistentTreeError):
        return InconsistentTreeError(f"{e.message} {text}", evidence=e.evidence,
                                     path=e.path)
    return type(e)(f"{e.message} {text}", field=e.field)


def _in_subdirectory(e: ProtocolError, name: str, text: str) -> ProtocolError:
    """``e`` about the log in DIR/``name``: context appended, its field prefixed with ``name/``."""
    out = _with_context(e, text)
    out.field = f"{name}/{e.field}" if e.field else None
    return out


def _read_file(path: Path | str) -> bytes:
    """The whole file, with plain system calls: an audit reads ~8,000 files, and building the
    buffered file object of open() cost more than the read itself (37 against 15 µs per 8 KiB
    hash tile)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        # size + 1: a file of the size stat gave is read whole, and then one more read sees its
        # end; a file that grew meanwhile is read on until its end all the same.
        parts = [os.read(fd, os.fstat(fd).st_size + 1)]
        while parts[-1]:
            parts.append(os.read(fd, 1 << 20))
    finally:
        os.close(fd)
    return parts[0] if len(parts) == 2 else b"".join(parts)


def _read(path: Path | str, what: str) -> bytes:
    try:
        return _read_file(path)
    except FileNotFoundError as e:
        raise FormatError(f"{what} {path} is missing", field=str(path)) from e
    except OSError as e:
        raise FormatError(f"cannot read {what} {path}: {e.strerror}", field=str(path)) from e


def _origin_of(note: bytes) -> str:
    """The origin line of a checkpoint note (unverified: only to pick the key to verify it)."""
    return note.split(b"\n", 1)[0].decode("utf-8", "replace")


def _log_key(key: Verifier, origin: str) -> Verifier:
    """``key``, or, if it is a node's key and ``origin`` one of that node's sets, the set's key.

    A node signs each set's log with its one key under the set's origin (design.md "Identity"), so
    the node vkey an operator publishes pins all of its sets.
    """
    if origin != key.name and origin.startswith(key.name + "/"):
        return Verifier.from_public_key(origin, key.public_key)
    return key


def _load_verifier(root: Path, trusted_vkey: str | None, origin: str) -> tuple[Verifier, str]:
    if trusted_vkey is not None:
        return _log_key(Verifier.from_vkey(trusted_vkey.strip()), origin), "pinned"
    vkey_path = root / "vkey"
    raw = _read(vkey_path, "verifier key file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{vkey_path} is not UTF-8", field=str(vkey_path)) from e
    text = text.removesuffix("\n").removesuffix("\r")
    if "\n" in text:
        raise FormatError(f"{vkey_path} must hold exactly one line", field=str(vkey_path))
    try:
        return Verifier.from_vkey(text), str(vkey_path)
    except FormatError as e:
        raise FormatError(f"{vkey_path}: {e.message}", field=str(vkey_path)) from e


def _stored_tiles(root: Path) -> dict[_Position, list[int]]:
    """Every file under DIR/tile/, by position, with the widths stored there (ascending)."""
    stored: dict[_Position, list[int]] = {}
    tile_dir = root / "tile"
    for dirpath, _dirnames, filenames in os.walk(tile_dir):
        folder = Path(dirpath).relative_to(root).as_posix()  # once per folder, not per file
        for name in filenames:
            rel = f"{folder}/{name}"
            try:
                ref = tiles.parse_tile_path(rel)
            except FormatError as e:
                raise FormatError(
                    f"unexpected file {rel} in the tile directory: {e.message}", field=rel
                ) from e
            stored.setdefault((ref.is_entries, ref.level, ref.n), []).append(ref.width)
    for widths in stored.values():
        widths.sort()
    return stored


class _Export:
    """The stored tile files of one export directory, consumed as the audit verifies them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stored = _stored_tiles(root)
        self._prefix = os.path.join(root, "")

    def path(self, ref: TileRef) -> Path:
        return self.root / ref.path()

    def file(self, ref: TileRef) -> str:
        """:meth:`path` as a string, for the thousands of files an audit reads."""
        return self._prefix + ref.path()

    def read_position(self, ref: TileRef) -> tuple[TileRef, bytes, list[tuple[TileRef, bytes]]]:
        """The file for ``ref`` (or, missing that, the narrowest wider one at its position, which
        starts with the same data) and the narrower stale partial files at the same position.

        The position is then forgotten: whatever is still stored at the end was never checked.
        """
        main_ref, stale_refs = self.locate_position(ref)
        what = "entry bundle" if ref.is_entries else "hash tile"
        data = _read(self.file(main_ref), what)
        return main_ref, data, [(r, _read(self.file(r), what)) for r in stale_refs]

    def locate_position(self, ref: TileRef) -> tuple[TileRef, list[TileRef]]:
        """:meth:`read_position` without reading: the refs of the file to use and the stale ones
        (so that a worker process can read the file)."""
        widths = self.stored.pop((ref.is_entries, ref.level, ref.n), [])
        what = "entry bundle" if ref.is_entries else "hash tile"
        usable = [w for w in widths if w >= ref.width]
        if not usable:
            have = "".join(
                f" (only {TileRef(ref.level, ref.n, w, ref.is_entries).path()} is there: the "
                f"export holds less than the checkpoint's tree)"
                for w in widths[-1:]
            )
            raise FormatError(f"{what} {ref.path()} is missing{have}", field=ref.path())
        main_ref = TileRef(ref.level, ref.n, usable[0], ref.is_entries)
        # Wider files beyond the one used cover leaves after the checkpoint: nothing signs them.
        for w in usable[1:]:
            self.stored.setdefault((ref.is_entries, ref.level, ref.n), []).append(w)
        stale = [TileRef(ref.level, ref.n, w, ref.is_entries) for w in widths if w < ref.width]
        return main_ref, stale

    def unverified(self) -> tuple[str, ...]:
        return tuple(
            sorted(
                TileRef(level, n, w, is_entries).path()
                for (is_entries, level, n), widths in self.stored.items()
                for w in widths
            )
        )

    def tiles_for(self, refs: set[TileRef]) -> dict[TileRef, bytes]:
        """Read the hash tiles ``refs`` (or wider ones at the same position) for proof building."""
        out: dict[TileRef, bytes] = {}
        for ref in refs:
            path = self.path(ref)
            if path.is_file():
                out[ref] = _read(path, "hash tile")
                continue
            for w in range(ref.width + 1, TILE_WIDTH + 1):
                wider = TileRef(ref.level, ref.n, w)
                if self.path(wider).is_file():
                    out[wider] = _read(self.path(wider), "hash tile")
                    break
        return out


class _TileChecker:
    """Recomputes the hash tiles bundle by bundle and compares them with the stored files.

    A mismatch is remembered, not raised at once: until the root has been compared with the
    signed checkpoint it is unknown whether the tile or the entries were altered.

    Each bundle arrives as its level-0 tile (its leaf hashes, concatenated) and, when full, its
    subtree hash, which is the next level's entry: the levels above are the tiles of the tree
    whose leaves are the full bundles' subtree hashes, one tile level lower (tile L of the log
    holds hashes at height 8L, tile L-1 of that tree the same hashes at height 8(L-1) above
    height 8). So the tree work here is per bundle, not per leaf.
    """

    def __init__(self, export: _Export) -> None:
        self.export = export
        self.size = 0
        #: the level-0 tile of a partial last bundle (only the last one may be partial)
        self.partial = b""
        #: the right-edge tiles of the tree of full bundles' subtree hashes (levels shifted by 1)
        self.upper_edge: dict[TileRef, bytes] = {}
        self.checked = 0
        self.first_mismatch: tuple[TileRef, str] | None = None
        # A stale partial entry bundle that differs; kept apart because the hash tiles point at
        # the exact leaf, so they make the better hint when the root does not match.
        self.bundle_mismatch: tuple[TileRef, str] | None = None

    def add(self, bundles: Sequence[tuple[bytes, bytes | None]]) -> None:
        """Add bundles in order: (leaf hashes concatenated, subtree hash if known, else None)."""
        roots: list[bytes] = []
        for hashes, subtree in bundles:
            n = self.size >> tiles.TILE_HEIGHT
            self.size += len(hashes) // merkle.HASH_SIZE
            if len(hashes) == _FULL_TILE_BYTES:
                self._check(TileRef(0, n, TILE_WIDTH), hashes)
                roots.append(
                    subtree if subtree is not None else merkle.root_from_concatenated_hashes(hashes)
                )
            else:
                self.partial = hashes
        if not roots:
            return
        upper_size = self.size >> tiles.TILE_HEIGHT
        out = tiles.update_tiles(upper_size - len(roots), self.upper_edge, roots)
        self.upper_edge = {
            ref: out[ref] if ref in out else self.upper_edge[ref]
            for ref in tiles.right_edge_tiles(upper_size)
        }
        for ref, data in out.items():
            if ref.is_full:
                self._check(TileRef(ref.level + 1, ref.n, TILE_WIDTH), data)

    def finish(self) -> None:
        """Check the right-edge (partial) tiles, which exist only at the final size."""
        for ref in tiles.right_edge_tiles(self.size):
            if ref.level == 0:
                self._check(ref, self.partial)
            else:
                self._check(ref, self.upper_edge[TileRef(ref.level - 1, ref.n, ref.width)])

    def _check(self, ref: TileRef, data: bytes) -> None:
        used, stored, stale = self.export.read_position(ref)
        self.checked += 1 + len(stale)
        for file_ref, file_data in [(used, stored), *stale]:
            if len(file_data) != file_ref.byte_length:
                raise FormatError(
                    f"hash tile {file_ref.path()} is {len(file_data)} bytes, not "
                    f"{file_ref.byte_length}",
                    field=file_ref.path(),
                )
            n = min(len(file_data), len(data))
            if file_data[:n] != data[:n] and self.first_mismatch is None:
                at = next(i for i in range(0, n, 32) if file_data[i : i + 32] != data[i : i + 32])
                self.first_mismatch = (file_ref, self._describe(file_ref, at // 32))

    @staticmethod
    def _describe(ref: TileRef, offset: int) -> str:
        first = (ref.n * TILE_WIDTH + offset) << (tiles.TILE_HEIGHT * ref.level)
        if ref.level == 0:
            bundle = TileRef(0, ref.n, TILE_WIDTH, is_entries=True).path()
            return f"hash {offset} (leaf {first}, in entry bundle {bundle})"
        return f"hash {offset} (the subtree starting at leaf {first})"


def _bundles(
    export: _Export, size: int, checker: _TileChecker
) -> Iterator[tuple[TileRef, list[bytes]]]:
    """Each entry bundle of a tree of ``size`` with exactly its entries below ``size``.

    Stale partial bundles at the same position must be byte prefixes of the bundle (entries are
    length-prefixed, so the first w entries are exactly a prefix); a difference is handed to the
    checker's deferred mismatch, since which of the two files is wrong is only known once the
    root has been compared with the checkpoint.
    """
    for n in range(-(-size // TILE_WIDTH)):
        ref = tiles.tile_ref_at(0, n, size, is_entries=True)
        used, data, stale = export.read_position(ref)
        try:
            entries = tiles.decode_entry_bundle(data, used.width)
        except FormatError as e:
            raise FormatError(f"entry bundle {used.path()}: {e.message}", field=used.path()) from e
        _check_stale_bundles(checker, used, data, stale)
        yield used, entries[: ref.width]


def _check_stale_bundles(
    checker: _TileChecker, used: TileRef, data: bytes, stale: list[tuple[TileRef, bytes]]
) -> None:
    """Stale partial bundles must decode and be byte prefixes of the bundle ``used``."""
    for stale_ref, stale_data in stale:
        try:
            tiles.decode_entry_bundle(stale_data, stale_ref.width)
        except FormatError as e:
            raise FormatError(
                f"entry bundle {stale_ref.path()}: {e.message}", field=stale_ref.path()
            ) from e
        if stale_data != data[: len(stale_data)] and checker.bundle_mismatch is None:
            checker.bundle_mismatch = (
                stale_ref,
                f"its entries, which are not the first {stale_ref.width} of {used.path()}",
            )


def _check_older(
    export: _Export,
    log: Verifier,
    cp: Checkpoint,
    note: bytes,
    on_checked: Callable[[str], None],
) -> None:
    older_dir = export.root / "checkpoints"
    if not older_dir.is_dir():
        return
    for path in sorted(p for p in older_dir.iterdir() if p.is_file()):
        old_note = _read(path, "older checkpoint")
        try:
            old = verify_checkpoint_note(old_note, log)
        except (FormatError, VerificationError) as e:
            raise _with_context(e, f"(older checkpoint {path})") from e
        _require_prefix(export, old, old_note, cp, note, f"older checkpoint {path}",
                        "the current checkpoint")
        on_checked(path.name)


def _require_prefix(
    export: _Export,
    old: Checkpoint,
    old_note: bytes,
    new: Checkpoint,
    new_note: bytes,
    old_name: str,
    new_name: str,
) -> None:
    """Nothing if the signed ``old`` is a prefix of ``new``, whose tiles ``export`` holds and
    has already checked against it; else InconsistentTreeError with both notes as evidence and,
    when they prove a fork, its ``path`` (protocol.equivocation): ``()`` for one size with two
    roots, the larger tree's consistency path for two sizes, None for a rollback (``old`` is
    the larger: both may be true). ``old_name`` and ``new_name`` say what the two are."""
    try:
        proof = (tiles.consistency_proof(old.size, new.size, export.tiles_for(
            tiles.consistency_proof_tiles(old.size, new.size))) if old.size < new.size else [])
        verify_consistency_of(old, new, proof)
    except InconsistentTreeError as e:  # one size with two roots, or a rollback
        raise InconsistentTreeError(
            f"{e.message} ({old_name} vs {new_name})",
            evidence=(old_note, new_note),
            path=() if old.size == new.size else None,
        ) from e
    except ProofError as e:
        # The proof comes from tiles already checked against ``new``, so a failure means the
        # smaller signed root is not a prefix of that tree: a fork.
        try:
            path: tuple[bytes, ...] | None = consistency_evidence(
                old.size, new.size, export.tiles_for(evidence_tiles(old.size, new.size))
            )
        except ProtocolError:
            path = None
        raise InconsistentTreeError(
            f"fork in {new.origin}: {old_name} (size {old.size}) is not a prefix of {new_name}"
            f" (size {new.size}): {e.message}",
            evidence=(old_note, new_note),
            path=path,
        ) from e


@dataclass(frozen=True)
class _Reshare:
    """One verified receipt: which downstream entry re-shares which upstream leaf, seen where."""

    index: int  # the downstream leaf
    entry_id: str  # the downstream entry's id
    origin: str  # the log it was re-shared from (the receipt's, not its upstream's)
    upstream_index: int
    upstream_id: str
    leaf: bytes
    checkpoint: bytes  # that log's checkpoint note the re-sharer had adopted
    checkpoint_size: int


class _Receipts:
    """receipts/<index>.json: each re-shared entry's chain, verified with the upstream keys.

    The check is on when receipts/ exists or upstream keys were given; then every entry whose
    provenance chain is not empty (a re-share) must have a receipt, so that deleting a receipt
    file cannot hide an unprovable re-share.
    """

    def __init__(self, root: Path, upstream_vkeys: Sequence[str], *, revocations: bool) -> None:
        self.dir = root / "receipts"
        self.wanted: dict[int, Path] = {}
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                stem = p.name.removesuffix(".json")
                if not (p.is_file() and p.name.endswith(".json") and stem.isdigit()):
                    raise FormatError(f"unexpected file {p} in receipts/", field=str(p))
                self.wanted[int(stem)] = p
        self.keys = [Verifier.from_vkey(v.strip()) for v in upstream_vkeys]
        self.active = self.dir.is_dir() or bool(self.keys)
        #: also collect the ids this log revokes (for the upstream revocation check)
        self.collect_revocations = revocations
        self.leaves: dict[int, bytes] = {}
        self.verified = 0
        self.reshares: list[_Reshare] = []
        self.revoked_ids: set[str] = set()

    def take(self, base: int, entries: Sequence[bytes]) -> None:
        for i, data in enumerate(entries):
            index = base + i
            if index in self.wanted:
                self.leaves[index] = data
            # Cheap byte tests first: the records are already validated, only few need parsing.
            if b'"chain"' in data or (self.collect_revocations and b'"revocation"' in data):
                value = json.loads(data)
                if value["type"] == "entry" and value["provenance"].get("chain"):
                    if index not in self.wanted:
                        raise VerificationError(
                            f"leaf {index} is a re-shared entry (its provenance chain has "
                            f"{len(value['provenance']['chain'])} hops) but there is no receipt "
                            f"receipts/{index}.json for it",
                            field=f"index {index}",
                        )
                elif value["type"] == "revocation":
                    self.revoked_ids.add(value["target"])

    def key_for_origin(self, origin: str) -> Verifier:
        for key in self.keys:
            if origin == key.name:
                return key
            if origin.startswith(key.name + "/"):
                # A node's key signs each of its sets' logs under the set's origin.
                return Verifier.from_public_key(origin, key.public_key)
        raise SignatureError(f"no --upstream-vkey for the log {origin}")

    def finish(self, size: int) -> None:
        # pydantic (records, receipts) only when there are receipts to check: see scan.py.
        from protocol.receipts import Receipt, verify_receipt_chain
        from protocol.records import Entry

        for index, path in sorted(self.wanted.items()):
            where = f"receipt {path.name} (leaf {index})"
            if index >= size:
                raise FormatError(f"{where} names a leaf beyond the checkpoint", field=str(path))
            record = verify_record(self.leaves[index])
            if not isinstance(record, Entry):
                raise VerificationError(f"{where}: leaf {index} is a {record.type}, not an entry",
                                        field=f"index {index}")
            try:
                receipt = Receipt.from_json(_read(path, "receipt"))
                verify_receipt_chain(record, receipt, self.key_for_origin)
                # Verified above with this very key, so this cannot fail; it gives the size.
                cp = verify_checkpoint_note(receipt.checkpoint,
                                            self.key_for_origin(receipt.origin))
            except ProtocolError as e:
                # The field names the record (what a report shows); the hop stays in the text.
                hop = f" [{e.field}]" if e.field else ""
                out = _with_context(e, "")
                out.message, out.field = f"{where}{hop}: {e.message}", f"index {index}"
                out.args = (out.message,)
                raise out from e
            self.verified += 1
            upstream_id = record.provenance.chain[-1].record
            self.reshares.append(_Reshare(
                index, record.id, receipt.origin, receipt.index, upstream_id, receipt.leaf,
                receipt.checkpoint, cp.size,
            ))


@dataclass(frozen=True)
class _UpstreamResult:
    origin: str
    propagated: int
    newer: int


def _check_upstream(
    root: Path,
    receipts: _Receipts,
    *,
    upstream_vkeys: Sequence[str],
    members_vkey: str | None,
    workers: int | None,
) -> _UpstreamResult:
    """Every revocation in the upstream export ``root`` of an entry this log re-shared from it
    must appear here, unless it is newer than what this log had adopted of the upstream (then it
    is counted as newer; one that did appear counts as propagated wherever it lies).

    The upstream export is audited in full with its pinned key (from ``upstream_vkeys``). "Adopted"
    is the largest upstream checkpoint in the receipts from that log: the export must reach it and
    be consistent with it (else the comparison would be with another history), and only
    revocations at upstream leaves below its size count; a later one could not have been seen.
    """
    note = _read(root / "checkpoint", "checkpoint")
    origin = _origin_of(note)
    key = receipts.key_for_origin(origin)
    summary = audit_directory(root, trusted_vkey=key.vkey(), upstream_vkeys=upstream_vkeys,
                              members_vkey=members_vkey, workers=workers)
    cp = verify_checkpoint_note(note, key)
    mine = [r for r in receipts.reshares if r.origin == origin]
    if not mine:
        return _UpstreamResult(origin, 0, 0)
    adopted = max(mine, key=lambda r: r.checkpoint_size)
    bound = adopted.checkpoint_size
    if summary.size < bound:
        raise VerificationError(
            f"the upstream export is older (size {summary.size}) than the checkpoint of size "
            f"{bound} that this log's receipt for leaf {adopted.index} adopted: export "
            f"{origin} again"
        )
    old = verify_checkpoint_note(adopted.checkpoint, key)
    export = _Export(root)
    _require_prefix(export, old, adopted.checkpoint, cp, note,
                    f"the checkpoint in the receipt for leaf {adopted.index}",
                    "the upstream export's tree")
    by_upstream_index = {r.upstream_index: r for r in mine}
    wanted_ids = {r.upstream_id for r in mine}
    revoked: dict[str, tuple[int, str]] = {}
    for ref, entries in _bundles(export, cp.size, _TileChecker(export)):
        for i, data in enumerate(entries):
            index = ref.n * TILE_WIDTH + i
            r = by_upstream_index.get(index)
            if r is not None and r.leaf != data:
                raise VerificationError(
                    f"leaf {r.index}: its receipt proves leaf {index} of {origin}, which holds "
                    f"other bytes in the upstream export",
                    field=f"index {r.index}",
                )
            if b'"revocation"' not in data:
                continue
            value = json.loads(data)
            if value["type"] == "revocation" and value["target"] in wanted_ids:
                revoked.setdefault(value["target"], (index, value["reason"]))
    propagated = newer = 0
    for r in sorted(mine, key=lambda r: r.index):
        if r.upstream_id not in revoked:
            continue
        at, reason = revoked[r.upstream_id]
        if r.entry_id in receipts.revoked_ids:
            propagated += 1
        elif at >= bound:
            # Beyond what the receipts show this log had adopted: it may not have seen it yet.
            newer += 1
        else:
            raise VerificationError(
                f"leaf {r.index} re-shares {r.upstream_id} from {origin}, which revoked it "
                f"(upstream revocation at leaf {at} of {origin}, reason {reason}, below the "
                f"adopted checkpoint size {bound}), but this log never revokes {r.entry_id}",
                field=f"index {r.index}",
            )
    return _UpstreamResult(origin, propagated, newer)


def _check_members_prefix(copy: Path, fresh: Path, vkey: str | None) -> None:
    """The export's members/ must be a prefix of the auditor's fresher copy of that log."""
    fresh_note = _read(fresh / "checkpoint", "checkpoint")
    log, _ = _load_verifier(fresh, vkey, _origin_of(fresh_note))
    new = verify_checkpoint_note(fresh_note, log)
    old_note = _read(copy / "checkpoint", "members/ checkpoint")
    try:
        old = verify_checkpoint_note(old_note, log)
    except (FormatError, VerificationError) as e:
        raise _in_subdirectory(
            e, "members", "(members/ checkpoint, with the given log's key)"
        ) from e
    if old.size > new.size:
        raise VerificationError(
            f"the membership log given ({fresh}, size {new.size}) is older than the export's "
            f"members/ (size {old.size}): fetch it from the coordinator again",
            field="members",
        )
    _require_prefix(_Export(fresh), old, old_note, new, fresh_note, "the export's members/",
                    f"the membership log given ({fresh})")


class _Members:
    """members/: the coordinator's membership log, itself audited, then folded in time order.

    Every record's author must be an authorised member at the record's ``created`` time (the
    coordinator itself always is). The fold is kept per membership record, and each record is
    checked against the state built from the membership records created at or before it.
    """

    def __init__(self, root: Path, vkey: str | None) -> None:
        from protocol.records import Membership  # pydantic: only with a members log

        self.summary = audit_directory(root, trusted_vkey=vkey)
        records: list[tuple[int, Membership]] = []
        export = _Export(root)
        for ref, entries in _bundles(export, self.summary.size, _TileChecker(export)):
            for i, data in enumerate(entries):
                rec = verify_record(data)
                if isinstance(rec, Membership):
                    records.append((ref.n * TILE_WIDTH + i, rec))
        self.coordinator = records[0][1].author if records else ""
        # States after each membership record, in created order (fold order is log order).
        self.times: list[str] = []
        self.states: list[MembershipState] = []
        state = MembershipState(self.coordinator or "none")
        for index, rec in records:
            state = state.apply(rec, index)
            self.times.append(rec.created)
            self.states.append(state)
        self.checked = 0

    def check(self, base: int, entries: Sequence[bytes]) -> None:
        for i, data in enumerate(entries):
            value = json.loads(data)
            author, created = value["author"], value["created"]
            self.checked += 1
            if author == self.coordinator:
                continue
            at = bisect.bisect_right(self.times, created)
            member = self.states[at - 1].member(author) if at else None
            if member is None or not member.is_authorised(parse_timestamp(created)):
                raise VerificationError(
                    f"leaf {base + i}: author {author} was not an authorised member of "
                    f"{self.coordinator or 'the federation'} at {created}",
                    field=f"index {base + i}",
                )


#: what a worker needs to scan one entry bundle: the file's path, the file's width, the leaves
#: wanted from it, the first leaf's index, whether to return the leaves, whether the file's bytes
_Task = tuple[str, int, int, int, bool, bool]
#: a scanned bundle: (message, field) of a FormatError about the file, or None; the scan; the
#: leaves and the file's bytes if asked for
_Scan = tuple[tuple[str, str | None] | None, ScannedBundle | None, list[bytes] | None, bytes | None]
#: bundles per message to a worker, and messages in flight per worker: enough that a worker
#: never waits for the parent, few enough that memory stays flat (a scan is about 20 KB)
_CHUNK = 2
_DEPTH = 8


def _scan_file(task: _Task) -> _Scan:
    """Read, split and scan one entry bundle: the part of an audit that needs no other bundle.

    Only the file name crosses to a worker and only the condensed scan comes back: copying the
    leaves between processes would cost the parent more than scanning them costs a worker.
    """
    path, width, count, first, want_leaves, want_data = task
    try:
        data = _read(path, "entry bundle")
    except FormatError as e:
        return (e.message, e.field), None, None, None
    try:
        split = tiles.decode_entry_bundle(data, width)
    except FormatError as e:
        name = TileRef(0, first // TILE_WIDTH, width, is_entries=True).path()
        return (f"entry bundle {name}: {e.message}", name), None, None, None
    entries = split[:count]
    return (
        None,
        scan_bundle(entries, first),
        entries if want_leaves else None,
        data if want_data else None,
    )


def _worker(conn: Connection, parent_ends: Sequence[Connection] = ()) -> None:
    """A worker process: scan each batch of bundles the parent sends, until it sends None or
    closes its end."""
    # A forked worker holds copies of the parent's ends of its own pipe and of the workers' before
    # it. Closed here, so that when the parent closes its ends (a failed audit stops early) this
    # worker reads end-of-file and exits, instead of waiting for a message that never comes.
    for end in parent_ends:
        end.close()
    # The objects inherited from the parent are never garbage here: keep the collector from
    # walking them (and so from copying their pages on write) in every full collection.
    gc.freeze()
    try:
        while (tasks := conn.recv()) is not None:
            try:
                conn.send([_scan_file(t) for t in tasks])
            except (BrokenPipeError, ConnectionResetError):
                raise
            except Exception:  # a bug, not bad data: hand the parent the traceback
                conn.send(RuntimeError(traceback.format_exc()))
    except (EOFError, BrokenPipeError, ConnectionResetError, KeyboardInterrupt):
        pass  # the parent stopped early (a failed audit): nothing is waiting for the results


_Meta = tuple[TileRef, TileRef, list[TileRef]]  # (wanted ref, file used, stale narrower files)


def _scans(
    tasks: Iterator[tuple[_Task, _Meta]], size: int, workers: int | None
) -> Generator[tuple[_Meta, _Scan], None, None]:
    """Each bundle's scan, in order, from worker processes for large logs.

    Record validation and hashing are nearly all of an audit's time and need nothing but one
    bundle, so they are spread over processes; the log-level rules stay in order in this one.
    Bundles go round-robin to the workers, at most _DEPTH messages each in flight, and come back
    in order. An error while listing the bundles (a missing file) is raised in its place, after
    the bundles before it: errors come in index order, however far the workers run ahead.
    """
    n = workers if workers is not None else min(os.cpu_count() or 1, 4)
    if n <= 1 or size < _PARALLEL_MIN_LEAVES:
        for task, meta in tasks:
            yield meta, _scan_file(task)
        return
    ctx = (
        multiprocessing.get_context("fork")
        if "fork" in multiprocessing.get_all_start_methods()
        else multiprocessing.get_context("spawn")
    )
    conns: list[Connection] = []
    procs: list[BaseProcess] = []
    try:
        for _ in range(n):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(theirs, [*conns, mine]), daemon=True)
            proc.start()
            theirs.close()
            conns.append(mine)
            procs.append(proc)
        inflight: deque[tuple[int, list[_Meta]]] = deque()
        error: ProtocolError | None = None
        sent = 0

        def submit() -> None:
            nonlocal error, sent
            batch: list[tuple[_Task, _Meta]] = []
            if error is None:
                try:
                    batch.extend(itertools.islice(tasks, _CHUNK))
                except ProtocolError as e:
                    error = e
            if batch:
                conns[sent % n].send([task for task, _meta in batch])
                inflight.append((sent % n, [meta for _task, meta in batch]))
                sent += 1

        for _ in range(n * _DEPTH):
            submit()
        while inflight:
            w, metas = inflight.popleft()
            results = conns[w].recv()
            if isinstance(results, BaseException):
                raise results
            submit()
            yield from zip(metas, results, strict=True)
        if error is not None:
            raise error
        for conn in conns:
            conn.send(None)
    finally:
        for conn in conns:
            conn.close()
        for worker in procs:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()
                worker.join()


def _bundle_tasks(
    export: _Export, size: int, want_leaves: bool
) -> Iterator[tuple[_Task, _Meta]]:
    """The scan task of each entry bundle of a tree of ``size`` (see _bundles)."""
    for n in range(-(-size // TILE_WIDTH)):
        ref = tiles.tile_ref_at(0, n, size, is_entries=True)
        used, stale = export.locate_position(ref)
        task = (export.file(used), used.width, ref.width, n * TILE_WIDTH, want_leaves,
                bool(stale))
        yield task, (ref, used, stale)


def _reread(export: _Export, used: TileRef, count: int) -> Callable[[], list[bytes]]:
    """The leaves of a bundle again, for the rare bundle whose per-leaf check must run here."""
    return lambda: tiles.decode_entry_bundle(
        _read(export.path(used), "entry bundle"), used.width
    )[:count]


def audit_directory(
    path: Path,
    *,
    trusted_vkey: str | None = None,
    upstream_vkeys: Sequence[str] = (),
    members_vkey: str | None = None,
    upstream_dirs: Sequence[Path] = (),
    workers: int | None = None,
    members_dir: Path | None = None,
) -> ExportAuditSummary:
    """Audit the tlog-tiles export in ``path``; return the summary or raise a ProtocolError.

    ``trusted_vkey`` (the log's vkey obtained out of band) overrides ``DIR/vkey``; a key read from
    the directory itself only proves that the directory is self-consistent, and the summary says
    which was used.

    FormatError: a file is missing, unreadable, or malformed (the message names it; a bad record
    names its leaf index). SignatureError: the checkpoint is not signed by the key. ProofError:
    the leaves do not lead to the checkpoint's root, or a stored hash tile differs from the one
    recomputed from them. InconsistentTreeError: an older checkpoint is a fork or a rollback
    (``evidence`` holds both notes). VerificationError: a revocation breaks the log's rules.

    Beyond the tree, when their evidence is there (``checks`` in the summary lists what ran):

    * receipts/ (or ``upstream_vkeys`` given): every re-shared entry has a receipt whose chain
      verifies back to the original with ``upstream_vkeys`` (node or set vkeys);
    * members/: the coordinator's log, audited with ``members_vkey``; every record's author was
      an authorised member at the record's ``created`` time. ``members_dir``: an export of that
      log the auditor fetched from the coordinator itself, used instead of members/, which is
      only as fresh as the exporter's mirror (a suspended member cannot sync the suspension);
      members/, when there too, must be a prefix of it (InconsistentTreeError otherwise, with
      evidence), and not larger (VerificationError: fetch it again);
    * ``upstream_dirs``: exports of the logs this one re-shares from, each audited with its key
      from ``upstream_vkeys``; every revocation there of an entry this log re-shared, at a leaf
      below the largest checkpoint size of that log in the receipts, is revoked here too.

    Failures about a record of this log have ``field`` "index N"; failures inside members/ have
    their field prefixed "members/", inside an upstream export "upstream/".
    """
    root = Path(path)
    if not root.is_dir():
        raise FormatError(f"{root} is not a directory", field=str(root))
    note = _read(root / "checkpoint", "checkpoint")
    log, key_source = _load_verifier(root, trusted_vkey, _origin_of(note))
    try:
        cp = verify_checkpoint_note(note, log)
    except (FormatError, VerificationError) as e:
        raise _with_context(e, f"({root / 'checkpoint'})") from e

    checks = ["signature", "records", "revocations", "root", "hash tiles"]
    receipts = _Receipts(root, upstream_vkeys, revocations=bool(upstream_dirs))
    members: _Members | None = None
    members_source = "members/"
    if members_dir is not None:
        members_source = str(members_dir)
        try:
            members = _Members(Path(members_dir), members_vkey)
        except ProtocolError as e:
            raise _in_subdirectory(e, "members", f"(membership log in {members_dir})") from e
        if (root / "members" / "checkpoint").is_file():
            _check_members_prefix(root / "members", Path(members_dir), members_vkey)
    elif (root / "members" / "checkpoint").is_file():
        try:
            members = _Members(root / "members", members_vkey)
        except ProtocolError as e:
            # Prefixed field: "index k" alone would read as a record of this log, not members/.
            raise _in_subdirectory(e, "members", "(membership log in members/)") from e
    export = _Export(root)
    auditor = LogAuditor(cp.origin)
    checker = _TileChecker(export)
    pending: list[tuple[bytes, bytes | None]] = []
    pending_leaves = 0
    bundles = 0
    want_leaves = receipts.active or members is not None
    tasks = _bundle_tasks(export, cp.size, want_leaves)
    with contextlib.closing(_scans(tasks, cp.size, workers)) as scans:
        for (ref, used, stale), (error, scanned, entries, data) in scans:
            if error is not None:
                raise FormatError(error[0], field=error[1])
            assert scanned is not None
            if stale:
                assert data is not None
                stale_data = [(r, _read(export.path(r), "entry bundle")) for r in stale]
                _check_stale_bundles(checker, used, data, stale_data)
            bundles += 1
            try:
                hashes, subtree = auditor.add_scanned(scanned, _reread(export, used, ref.width))
                if entries is not None and receipts.active:
                    receipts.take(ref.n * TILE_WIDTH, entries)
                if entries is not None and members is not None:
                    members.check(ref.n * TILE_WIDTH, entries)
            except (FormatError, VerificationError) as e:
                raise _with_context(e, f"(entry bundle {used.path()})") from e
            pending.append((hashes, subtree))
            pending_leaves += ref.width
            if pending_leaves >= _BATCH_LEAVES:
                checker.add(pending)
                pending, pending_leaves = [], 0
    checker.add(pending)
    checker.finish()

    mismatch = checker.first_mismatch or checker.bundle_mismatch
    try:
        summary = auditor.finish(cp)
    except ProofError as e:
        if mismatch is not None:
            tile, where = mismatch
            raise ProofError(
                f"{e.message}; the first difference from the stored tiles is in "
                f"{tile.path()} at {where}"
            ) from e
        raise
    if mismatch is not None:
        tile, where = mismatch
        raise ProofError(
            f"{'entry bundle' if tile.is_entries else 'hash tile'} {tile.path()} does not match "
            f"the tiles recomputed from the entries, which do match the signed root: it differs "
            f"at {where}",
        )
    # Stored widths beyond the signed size stay in export.stored; read them off before the
    # proofs below look at tiles (which only reads, so the listing is unchanged).
    unverified = export.unverified()
    older: list[str] = []
    _check_older(export, log, cp, note, older.append)
    if (root / "checkpoints").is_dir():
        checks.append("older checkpoints")
    if receipts.active:
        receipts.finish(cp.size)
        checks.append("re-share receipts")
    if members is not None:
        checks.append("membership")
    upstream: list[_UpstreamResult] = []
    for up in upstream_dirs:
        if not receipts.active:
            raise FormatError(
                "checking upstream revocations needs the receipts (receipts/ or --upstream-vkey)",
                field="upstream",
            )
        try:
            upstream.append(_check_upstream(
                Path(up), receipts, upstream_vkeys=upstream_vkeys, members_vkey=members_vkey,
                workers=workers,
            ))
        except ProtocolError as e:
            if e.field is not None and e.field.startswith("index "):
                # A record of this log (the downstream) is at fault: keep its index as the field.
                raise _with_context(e, f"(upstream export {up})") from e
            raise _in_subdirectory(e, "upstream", f"(upstream export {up})") from e
    if upstream_dirs:
        checks.append("upstream revocations")

    base = {f.name: getattr(summary, f.name) for f in fields(AuditSummary)}
    return ExportAuditSummary(
        **base,
        vkey=log.vkey(),
        key_source=key_source,
        bundles=bundles,
        hash_tiles=checker.checked,
        older_checkpoints=tuple(older),
        unverified_files=unverified,
        checks=tuple(checks),
        receipts=receipts.verified,
        members_checked=members.checked if members is not None else 0,
        members_size=members.summary.size if members is not None else 0,
        members_source=members_source if members is not None else "",
        upstream_logs=tuple(u.origin for u in upstream),
        upstream_revocations=sum(u.propagated for u in upstream),
        upstream_revocations_newer=sum(u.newer for u in upstream),
    )


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def _ran(s: ExportAuditSummary, check: str, text: str) -> str:
    return text if check in s.checks else "not checked"


def _members_text(s: ExportAuditSummary) -> str:
    return (f"{s.members_checked} records by members (membership log of size {s.members_size} "
            f"from {s.members_source})")


def _upstream_text(s: ExportAuditSummary) -> str:
    return (
        f"{s.upstream_revocations} upstream revocations propagated, "
        f"{s.upstream_revocations_newer} newer than the adopted checkpoint (not counted), from "
        f"{', '.join(s.upstream_logs) or 'no re-shared log'}"
    )


def _report(root: Path, s: ExportAuditSummary) -> str:
    key = (
        "pinned by the caller"
        if s.key_pinned
        else f"read from {s.key_source}: NOT PINNED, this only shows the export is "
        "self-consistent; pass --vkey with the key obtained out of band"
    )
    lines = [
        f"audit of {root}: PASS",
        f"  log          {s.origin}",
        f"  key          {s.vkey} ({key})",
        f"  checkpoint   size {s.size}, root {s.root_hash.hex()}",
        f"  checked      {s.size} leaves in {s.bundles} entry bundles, {s.hash_tiles} hash tiles",
        f"  older        {len(s.older_checkpoints)} older checkpoints consistent"
        + (f" ({', '.join(s.older_checkpoints)})" if s.older_checkpoints else ""),
        f"  checks       {', '.join(s.checks)}",
        f"  records      {_counts(s.record_types)}",
        f"  entries      {s.entries} ({s.active} active, {s.revoked} revoked)",
        f"  hash types   {_counts(s.hash_types)}",
        f"  revocations  {_counts(s.revocation_reasons)}",
        f"  labels       {_counts(s.labels)}",
        f"  authors      {_counts(s.authors)}",
        f"  receipts     {_ran(s, 're-share receipts', f'{s.receipts} verified to the original')}",
        f"  membership   {_ran(s, 'membership', _members_text(s))}",
        f"  upstream     {_ran(s, 'upstream revocations', _upstream_text(s))}",
    ]
    if s.unverified_files:
        lines.append(
            f"  unverified   {len(s.unverified_files)} tile files lie beyond the checkpoint and "
            f"are covered by no signature (first: {s.unverified_files[0]})"
        )
    return "\n".join(lines)


def _main_equivocation(
    parser: argparse.ArgumentParser, path: Path, vkey: str | None, as_json: bool
) -> int:
    """Check one equivocation proof file: exit 0 if it proves equivocation, 1 if it does not."""
    # Imported here: only this command needs it, and the audit of a directory does not.
    from protocol.equivocation import EquivocationProof, verify_equivocation

    if vkey is None:
        parser.error("--equivocation needs --vkey (the log's key, obtained out of band)")
    try:
        log = Verifier.from_vkey(vkey.strip())
    except FormatError as e:
        parser.error(f"--vkey: {e.diagnostics()}")
    try:
        proof = EquivocationProof.from_json(_read(path, "equivocation proof"))
        verify_equivocation(proof, log)
    except ProtocolError as e:
        if as_json:
            print(json.dumps({"ok": False, "equivocation": False,
                              "error": {"type": type(e).__name__, "message": e.message}}))
        else:
            print(f"{path}: NOT PROVEN\n  {type(e).__name__}: {e.diagnostics()}")
        return 1
    if as_json:
        print(json.dumps({"ok": True, "equivocation": True, "origin": log.name}))
    else:
        print(f"{path}: PROVEN: {log.name} signed two checkpoints that cannot both be true")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the audit from the command line: exit 0 if it passes, 1 if it fails, 2 on misuse."""
    parser = argparse.ArgumentParser(
        prog="python -m protocol.audit",
        description="Audit a tlog-tiles export directory of a hashfed log, offline.",
    )
    parser.add_argument("directory", type=Path, nargs="?", help="the export directory")
    parser.add_argument(
        "--equivocation",
        metavar="FILE",
        type=Path,
        help="instead of a directory: check one equivocation proof (needs --vkey)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--vkey",
        metavar="VKEY",
        help="the log's verifier key, obtained out of band (overrides DIR/vkey)",
    )
    parser.add_argument(
        "--upstream-vkey", metavar="VKEY", action="append", default=[],
        help="a node vkey of an upstream log, to verify re-share receipts (repeatable)",
    )
    parser.add_argument(
        "--members-vkey", metavar="VKEY",
        help="the coordinator's members-log vkey (overrides DIR/members/vkey)",
    )
    parser.add_argument(
        "--members", metavar="DIR", type=Path,
        help="an export of the coordinator's members log fetched from the coordinator itself: "
             "used instead of DIR/members/ (which must be a prefix of it)",
    )
    parser.add_argument(
        "--upstream", metavar="DIR", type=Path, action="append", default=[],
        help="an export of a log this one re-shares from, verified with its --upstream-vkey: "
        "check that its revocations of re-shared entries appear here (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.equivocation is not None:
        return _main_equivocation(parser, args.equivocation, args.vkey, args.json)
    if args.directory is None:
        parser.error("give an export directory, or --equivocation FILE --vkey VKEY")
    root: Path = args.directory
    if not root.is_dir():
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {root} is not a directory", file=sys.stderr)
        return 2
    if args.vkey is not None:
        try:
            Verifier.from_vkey(args.vkey.strip())
        except FormatError as e:
            parser.print_usage(sys.stderr)
            print(f"{parser.prog}: error: --vkey: {e.diagnostics()}", file=sys.stderr)
            return 2
    # The one place audit errors become output.
    try:
        summary = audit_directory(
            root,
            trusted_vkey=args.vkey,
            upstream_vkeys=args.upstream_vkey,
            members_vkey=args.members_vkey,
            members_dir=args.members,
            upstream_dirs=args.upstream,
        )
    except ProtocolError as e:
        if args.json:
            error: dict[str, object] = {"type": type(e).__name__, "message": e.message}
            if e.field:
                error["field"] = e.field
            if isinstance(e, InconsistentTreeError) and e.evidence:
                error["evidence"] = [x.decode("utf-8", "replace") for x in e.evidence]
                proof = proof_of(e)
                if proof is not None:  # save it as a file: --equivocation FILE checks it
                    error["equivocation_proof"] = proof.to_dict()
            print(json.dumps({"ok": False, "error": error}, indent=2))
        else:
            print(f"audit of {root}: FAIL\n  {type(e).__name__}: {e.diagnostics()}")
        return 1
    if args.json:
        print(json.dumps({"ok": True, "summary": summary.as_dict()}, indent=2))
    else:
        print(_report(root, summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

