"""The node's operations, shared by the HTTP API and the CLI (one implementation of each rule).

``NodeService`` turns operator input into records, appends them through the sequencer, and answers
reads (sets, checkpoints, tiles, proofs, lookups) from the store. It knows nothing of HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.bulkinput import EntryInput, entry_dict
from node.config import NodeConfig, load_signer
from node.errors import BadRequest, Conflict, NotFound
from node.sequencer import Sequencer
from node.storage import AppendResult, PreparedRecord, SetInfo, StoredRecord, hash_key
from node.storage.sql import SqlStore
from protocol import hashtypes
from protocol import tiles as tlog
from protocol.errors import FormatError
from protocol.jcs import canonicalize
from protocol.note import Signer, Verifier
from protocol.records import (
    Entry,
    Revocation,
    decode_record,
    new_nonce,
    new_record_id,
    record_from_dict,
    timestamp,
)
from protocol.scan import EntryView, scan_record

TLP_LEVELS = ("clear", "green", "amber", "amber+strict", "red")
ATTESTATION_OPINIONS = ("agree", "disagree", "also_vetted", "sighting")
REVOCATION_REASONS = ("false_positive", "legal_order", "duplicate", "quality", "expired", "other")
_SET_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

#: most records in one publish call (HTTP body or CLI chunk)
MAX_PUBLISH_BATCH = 10_000


def check_set_name(name: str) -> str:
    if _SET_NAME_RE.fullmatch(name) is None:
        raise BadRequest(
            "a set name is 1-63 characters of a-z 0-9 _ -, starting with a letter or digit",
            field="set",
        )
    return name


def check_tlp(tlp: str) -> str:
    value = tlp.lower().removeprefix("tlp:")
    if value not in TLP_LEVELS:
        raise BadRequest(f"TLP must be one of {', '.join(TLP_LEVELS)}", field="tlp")
    return value


@dataclass(frozen=True)
class LookupAnswer:
    set: SetInfo
    stored: StoredRecord
    entry: Entry
    revocation: Revocation | None


class NodeService:
    """Everything a node does, over one store, one signing key and one sequencer."""

    def __init__(self, cfg: NodeConfig, store: SqlStore, signer: Signer) -> None:
        self.cfg = cfg
        self.store = store
        self.signer = signer
        self._set_signers: dict[str, Signer] = {}
        self.sequencer = Sequencer(store, self.signer_for)

    @classmethod
    async def open(cls, cfg: NodeConfig) -> NodeService:
        signer = load_signer(cfg)
        store = await SqlStore.open(cfg.database_url)
        return cls(cfg, store, signer)

    async def close(self) -> None:
        await self.sequencer.stop()
        await self.store.close()

    # -- identity -------------------------------------------------------------------------------

    def signer_for(self, origin: str) -> Signer:
        """The node key under a set's origin name: one key pair, one signed-note name per log."""
        signer = self._set_signers.get(origin)
        if signer is None:
            signer = self._set_signers[origin] = self.signer.with_name(origin)
        return signer

    def verifier_for(self, info: SetInfo) -> Verifier:
        return self.signer_for(info.origin).verifier()

    def set_origin(self, name: str) -> str:
        return f"{self.cfg.origin}/{name}"

    # -- sets -----------------------------------------------------------------------------------

    async def create_set(self, name: str, tlp: str, description: str = "") -> SetInfo:
        check_set_name(name)
        if len(description) > 1000:
            raise BadRequest("description is limited to 1000 characters", field="description")
        return await self.store.create_set(name, self.set_origin(name), check_tlp(tlp), description)

    def set_json(self, info: SetInfo) -> dict[str, Any]:
        return {
            "name": info.name,
            "origin": info.origin,
            "vkey": self.verifier_for(info).vkey(),
            "tlp": info.tlp,
            "description": info.description,
            "size": info.checkpoint_size,
            "created": info.created,
        }

    # -- writes ---------------------------------------------------------------------------------

    def build_entry(self, item: EntryInput, set_origin: str, now: str) -> PreparedRecord:
        """A new entry record and its leaf bytes, from one validated input line.

        The dict is built in exactly the shape the model dumps to (every default present, no
        None), so its canonical JSON *is* the record's encoding. Those bytes are then checked
        with :func:`protocol.scan.scan_record`, which accepts exactly what ``decode_record``
        accepts (and raises the same errors) at a fraction of the cost of building a model:
        bulk imports pay for one check per entry. tests/test_service.py checks that
        ``decode_record(data)`` is the record for generated inputs.
        """
        raw = entry_dict(
            item, org=self.cfg.org, set_origin=set_origin, now=now,
            record_id=new_record_id(), nonce=new_nonce(),
        )
        data = canonicalize(raw)
        record = scan_record(data)  # also the 16 KiB limit (RecordTooLargeError)
        if not isinstance(record, EntryView):  # pragma: no cover - entry_dict sets type "entry"
            raise FormatError("not an entry", field="type")
        return PreparedRecord.bulk(record, data)

    def prepare_entries(
        self, set_name: str, items: Sequence[EntryInput]
    ) -> list[PreparedRecord]:
        """Records for input lines (raises FormatError naming line-relative fields)."""
        origin = self.set_origin(set_name)
        now = timestamp()
        return [self.build_entry(it, origin, now) for it in items]

    async def publish(self, set_name: str, items: Sequence[EntryInput]) -> list[AppendResult]:
        if len(items) > MAX_PUBLISH_BATCH:
            raise BadRequest(f"at most {MAX_PUBLISH_BATCH} entries per call", field="entries")
        await self.store.get_set(set_name)
        return await self.sequencer.append(set_name, self.prepare_entries(set_name, items))

    async def find_active(self, info: SetInfo, hash_type: str, hash_value: str) -> StoredRecord:
        value = hashtypes.normalize_value(hash_type, hash_value)
        for stored in await self.store.find_entries(hash_key(hash_type, value), [info.id]):
            if stored.revoked_by is None:
                return stored
        raise NotFound(f"no active {hash_type} entry with that value in {info.name}")

    async def revoke(
        self,
        set_name: str,
        *,
        entry_id: str | None = None,
        hash_type: str | None = None,
        hash_value: str | None = None,
        reason: str,
        text: str | None = None,
    ) -> AppendResult:
        info = await self.store.get_set(set_name)
        if reason not in REVOCATION_REASONS:
            raise BadRequest(
                f"reason must be one of {', '.join(REVOCATION_REASONS)}", field="reason"
            )
        if entry_id is not None:
            stored = await self.store.get_record(info.id, entry_id)
            if stored is None:
                raise NotFound(f"no record {entry_id} in set {set_name}", field="entry")
        elif hash_type is not None and hash_value is not None:
            stored = await self.find_active(info, hash_type, hash_value)
        else:
            raise BadRequest("name the entry: an entry id, or a hash type and value")
        target = decode_record(stored.data)
        if not isinstance(target, Entry):
            raise Conflict(f"record {entry_id} is a {target.type}, not an entry", field="entry")
        if stored.revoked_by is not None:
            raise Conflict(f"entry {target.id} is already revoked", field="entry")
        raw: dict[str, Any] = {
            "type": "revocation",
            "id": new_record_id(),
            "author": self.cfg.org,
            "created": timestamp(),
            "nonce": new_nonce(),
            "target": target.id,
            "target_hash": {"type": target.hash.type, "value": target.hash.value},
            "role": "author" if target.author == self.cfg.org else "coordinator",
            "reason": reason,
        }
        if text:
            raw["text"] = text
        record = record_from_dict(raw)
        (result,) = await self.sequencer.append(set_name, [PreparedRecord.of(record)])
        return result

    async def attest(
        self,
        set_name: str,
        *,
        target_origin: str,
        target: str,
        hash_type: str,
        hash_value: str,
        opinion: str,
        reason: str | None = None,
        count: int | None = None,
    ) -> AppendResult:
        """Append this org's Attestation about entry ``target`` of log ``target_origin`` to
        the local set ``set_name`` (FormatError for a malformed one, e.g. a disagreement
        without a reason or a sighting without a count)."""
        await self.store.get_set(set_name)
        raw: dict[str, Any] = {
            "type": "attestation",
            "id": new_record_id(),
            "author": self.cfg.org,
            "created": timestamp(),
            "nonce": new_nonce(),
            "target": target,
            "target_origin": target_origin,
            "target_hash": {
                "type": hash_type,
                "value": hashtypes.normalize_value(hash_type, hash_value),
            },
            "opinion": opinion,
        }
        if reason is not None:
            raw["reason"] = reason
        if count is not None:
            raw["count"] = count
        record = record_from_dict(raw)
        (result,) = await self.sequencer.append(set_name, [PreparedRecord.of(record)])
        return result

    # -- reads ----------------------------------------------------------------------------------

    async def view_fields(
        self, ans: LookupAnswer, readable: Collection[int] | None = None
    ) -> dict[str, Any]:
        """What the merged view adds to a match: the set's kind, the entry's org, its
        provenance chain and a summary of the attestations about it.

        Attestations are counted for every identity the signal has had on its way (its record
        here, the original record, and each hop's upstream record), once per attestation, and
        only from sets in ``readable`` (ids of the sets the caller may read; None = all, for the
        operator): an AMBER attestation must not show through a GREEN caller's counts.
        """
        entry = ans.entry
        prov = entry.provenance
        targets = {(ans.stored.origin, entry.id), (prov.node, prov.record)}
        targets.update((hop.origin, hop.record) for hop in prov.chain)
        counts = dict.fromkeys(ATTESTATION_OPINIONS, 0)
        orgs: set[str] = set()
        sightings = 0
        for set_id, _idx, attester, opinion, count in await self.store.attestations_for(
            sorted(targets)
        ):
            if readable is not None and set_id not in readable:
                continue
            counts[opinion] = counts.get(opinion, 0) + 1
            orgs.add(attester)
            sightings += count or 0
        return {
            "kind": ans.set.kind,
            "org": entry.author,
            "provenance": prov.model_dump(mode="json", exclude_none=True),
            "attestations": {"counts": counts, "orgs": sorted(orgs), "sightings": sightings},
        }

    async def lookup(
        self, hash_type: str, hash_value: str, visible: Sequence[SetInfo]
    ) -> list[LookupAnswer]:
        value = hashtypes.normalize_value(hash_type, hash_value)
        ht = hashtypes.get_hash_type(hash_type)
        if ht.max_length and len(value) > ht.max_length:
            raise FormatError(f"{hash_type} value too long", field="hash_value")
        ht.check(value)
        by_id = {s.id: s for s in visible}
        by_name = {s.name: s for s in visible}
        out: list[LookupAnswer] = []
        for stored in await self.store.find_entries(hash_key(hash_type, value), list(by_id)):
            entry = decode_record(stored.data)
            assert isinstance(entry, Entry)
            revocation = None
            info = by_name[stored.set_name]
            if stored.revoked_by is not None:
                rev = await self.store.get_record_at(info.id, stored.revoked_by)
                if rev is not None:
                    r = decode_record(rev.data)
                    revocation = r if isinstance(r, Revocation) else None
            out.append(LookupAnswer(info, stored, entry, revocation))
        return out

    def _check_size(self, info: SetInfo, size: int) -> None:
        if not 0 < size <= info.size:
            raise NotFound(f"tree size {size} is not available (the log has {info.size})",
                           field="size")

    async def inclusion_proof(self, info: SetInfo, index: int, size: int) -> list[bytes]:
        self._check_size(info, size)
        if not 0 <= index < size:
            raise BadRequest(f"index must be below size {size}", field="index")
        refs = tlog.inclusion_proof_tiles(index, size)
        tiles = await self.store.read_tiles(info.id, list(refs))
        return tlog.inclusion_proof(index, size, tiles)

    async def consistency_proof(self, info: SetInfo, old: int, size: int) -> list[bytes]:
        self._check_size(info, size)
        if not 0 < old <= size:
            raise BadRequest(f"old must be between 1 and {size}", field="old")
        refs = tlog.consistency_proof_tiles(old, size)
        tiles = await self.store.read_tiles(info.id, list(refs))
        return tlog.consistency_proof(old, size, tiles)

    async def export(self, info: SetInfo, out: Path) -> int:
        """Write checkpoint, vkey, hash tiles and entry bundles as a tlog-tiles directory.

        Returns the exported tree size (the latest checkpoint's). Files are written to temporary
        names and renamed, so an interrupted export never leaves a truncated tile behind.
        """
        note = info.checkpoint
        if note is None:
            raise NotFound(f"set {info.name} has no checkpoint yet")
        size = info.checkpoint_size
        out.mkdir(parents=True, exist_ok=True)
        _write(out / "checkpoint", note)
        _write(out / "vkey", (self.verifier_for(info).vkey() + "\n").encode())
        refs = tlog.tiles_for_size(size)
        for start in range(0, len(refs), 256):
            chunk = refs[start : start + 256]
            got = await self.store.read_tiles(info.id, chunk)
            for ref in chunk:
                _write(out / ref.path(), got[ref])
        for n in range((size + tlog.TILE_WIDTH - 1) // tlog.TILE_WIDTH):
            width = min(tlog.TILE_WIDTH, size - n * tlog.TILE_WIDTH)
            entries = await self.store.read_entries(info.id, n * tlog.TILE_WIDTH, width)
            ref = tlog.TileRef(0, n, width, is_entries=True)
            _write(out / ref.path(), tlog.encode_entry_bundle(entries))
        # Older checkpoints, re-share receipts, membership log: what the audit checks beyond the
        # tree (imported here: the audit command builds on the service, not the other way).
        from node.cli_audit import export_evidence

        await export_evidence(self, info, out)
        return size


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


__all__ = ["LookupAnswer", "NodeService", "check_set_name", "check_tlp"]
