"""Re-sharing: republish a mirror's new upstream entries into a local set, with receipts.

A mirror whose ``reshare_into`` names a local set hands every sync's new leaves to
:func:`reshare_synced` (called by :func:`node.federation.sync.sync_once` once the mirror has
adopted the partner's checkpoint, which every receipt needs):

* an upstream **entry** that is still active becomes this node's entry in ``reshare_into``: the
  fields of :func:`protocol.receipts.reshared_entry_fields` (same hash and metadata, provenance with
  one hop appended) plus a fresh id, author (our org), created and nonce. Its
  :class:`~protocol.receipts.Receipt` (the upstream leaf, the mirror's adopted checkpoint note, the
  inclusion proof from the mirror's tiles, and, for an entry that was itself re-shared, the
  upstream node's receipt from ``GET /v1/sets/{set}/receipts/{index}``) is verified with
  :func:`protocol.receipts.verify_receipt_chain` before anything is appended: a node never
  republishes provenance it cannot prove. The receipt is kept in ``reshares`` under the new entry's
  (set, index).
* an upstream **revocation** of an entry this node re-shared makes it append its own revocation of
  its copy (reason copied, text ``upstream <origin> revoked <id>``): a node never keeps serving an
  entry its origin revoked.

Crash safety and idempotence. The append (sequencer) and the receipt row are two transactions:

* a crash before the append leaves nothing; the next pass re-shares the entry;
* a crash between them leaves our entry without a receipt; the next pass builds the entry again,
  the store answers ``duplicate`` with the existing index (same hash, still active), and the
  receipt is stored for that entry if its last hop names the same upstream record;
* an entry whose upstream record is already in ``reshares`` is never re-shared again.

A pass covers the leaves the sync appended, and starts earlier when the previous pass did not get
to its end (a crash after the mirror adopted its checkpoint): it resumes after the newest upstream
leaf that has a receipt (from 0 if there is none). Revocations found again are skipped when our copy
is already revoked.

Policy. A subscription may carry a :class:`ResharePolicy`: only entries with one of the given
labels, at least N reviews, confirmed vetting, and/or attested (agree / also_vetted) by at least k
organisations other than the author. Entries failing the attestation threshold are kept in
``reshare_pending`` and reconsidered on every pass, since attestations usually arrive after the
entry; entries failing the other rules are skipped for good (they cannot change: records are
immutable).

TLP: re-sharing is allowed from ``clear``, ``green`` and ``amber`` mirrors (design.md "Scope"), and
only into a local set at least as restrictive as the mirror (an amber entry never lands in a green
set). :func:`check_reshare_target` is checked when subscribing and again on every pass.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from node.errors import BadRequest, Conflict
from node.federation.fetch import PeerClient, PeerError
from node.service import TLP_LEVELS, NodeService
from node.storage import PreparedRecord, SetInfo
from protocol.errors import FormatError, VerificationError
from protocol.jcs import canonicalize
from protocol.note import Verifier
from protocol.receipts import MAX_RECEIPT_SIZE, Receipt, reshared_entry_fields, verify_receipt_chain
from protocol.records import (
    Entry,
    Revocation,
    decode_record,
    entry_from_dict,
    new_nonce,
    new_record_id,
    timestamp,
)

log = logging.getLogger("hashfed.reshare")

__all__ = [
    "NEVER_RESHARED",
    "ResharePolicy",
    "ReshareResult",
    "check_reshare_target",
    "reshare_counters",
    "reshare_synced",
]

#: TLP levels whose entries are never re-shared (design.md "Scope")
NEVER_RESHARED: Final = frozenset({"amber+strict", "red"})
#: mirror leaves read at once during a pass
_PAGE: Final = 256

#: process-wide counts: "reshared", "revoked", "skipped:<why>"
reshare_counters: Counter[str] = Counter()


class ResharePolicy(BaseModel):
    """Which upstream entries a subscription re-shares (empty policy: every active entry)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    #: re-share only entries carrying one of these labels ("ns:value", or "ns:*" for a namespace)
    labels: tuple[str, ...] = ()
    min_reviews: int = Field(default=0, ge=0, le=1000)
    confirmed_only: bool = False
    #: distinct organisations other than the author that attested agree or also_vetted
    min_attestations: int = Field(default=0, ge=0, le=100)

    @classmethod
    def from_json(cls, text: str | None) -> ResharePolicy:
        return cls() if not text else cls.model_validate_json(text)

    def to_json(self) -> str | None:
        return None if self == ResharePolicy() else self.model_dump_json()

    def static_refusal(self, entry: Entry) -> str | None:
        """Why the entry itself can never qualify (labels, vetting), or None."""
        if self.labels and not any(_label_matches(p, label)
                                   for p in self.labels for label in entry.labels):
            return "labels"
        if self.confirmed_only and entry.vetting.status != "confirmed":
            return "unconfirmed"
        if entry.vetting.reviews < self.min_reviews:
            return "reviews"
        return None


def _label_matches(pattern: str, label: str) -> bool:
    if pattern.endswith(":*"):
        return label.startswith(pattern[:-1])
    return pattern == label


@dataclass(frozen=True)
class ReshareResult:
    """What one :func:`reshare_synced` pass did."""

    reshared: int = 0
    revoked: int = 0
    skipped: int = 0


def check_reshare_target(mirror_tlp: str, target: SetInfo) -> None:
    """BadRequest unless entries of a ``mirror_tlp`` log may be re-shared into ``target``."""
    if mirror_tlp in NEVER_RESHARED:
        raise BadRequest(
            f"TLP:{mirror_tlp.upper()} entries are never re-shared", field="reshare_into"
        )
    if target.kind != "local":
        raise BadRequest("re-share into a local set, not a mirror", field="reshare_into")
    if TLP_LEVELS.index(target.tlp) < TLP_LEVELS.index(mirror_tlp):
        raise BadRequest(
            f"set {target.name} is TLP:{target.tlp.upper()}, less restrictive than the "
            f"TLP:{mirror_tlp.upper()} it would re-share",
            field="reshare_into",
        )


async def reshare_synced(
    service: NodeService, mirror: SetInfo, before: int, *, peer: PeerClient | None = None
) -> ReshareResult:
    """Re-share the entries and propagate the revocations the mirror gained since ``before``.

    ``mirror`` is the mirror as the sync left it (its checkpoint adopted). Raises NodeError for
    a target set that is gone or not allowed, PeerError when an upstream receipt cannot be
    fetched (the next sync retries: nothing is lost, see the module docstring).
    """
    if mirror.reshare_into is None or mirror.checkpoint is None:
        return ReshareResult()
    target = await service.store.get_set(mirror.reshare_into)
    check_reshare_target(mirror.tlp, target)
    start = min(before, await _resume_point(service, mirror))
    end = mirror.checkpoint_size
    pass_ = _Pass(service, mirror, target, peer)
    try:
        # Entries held back for attestations first: they may qualify now.
        for index in await service.store.list_pending(mirror.id):
            if index >= start:
                break  # the page loop below sees it
            for stored in await service.store.read_records(mirror.id, index, 1):
                record = decode_record(stored.data)
                if isinstance(record, Entry):
                    await pass_.entry(record, index, revoked=stored.revoked_by is not None)
        for page in range(start, end, _PAGE):
            for stored in await service.store.read_records(
                mirror.id, page, min(_PAGE, end - page)
            ):
                record = decode_record(stored.data)
                if isinstance(record, Entry):
                    await pass_.entry(record, stored.index, revoked=stored.revoked_by is not None)
                elif isinstance(record, Revocation):
                    await pass_.revocation(record)
    finally:
        await pass_.close()
    return ReshareResult(pass_.reshared, pass_.revoked, pass_.skipped)


async def _resume_point(service: NodeService, mirror: SetInfo) -> int:
    data = await service.store.last_reshare_receipt(mirror.origin)
    if data is None:
        return 0
    try:
        return Receipt.from_json(data).index + 1
    except FormatError:  # pragma: no cover - we wrote it; rescan rather than trust it
        return 0


class _Pass:
    """One pass over a mirror's new leaves (shares the upstream client and resolved keys)."""

    def __init__(
        self, service: NodeService, mirror: SetInfo, target: SetInfo, peer: PeerClient | None
    ) -> None:
        self.service = service
        self.policy = ResharePolicy.from_json(mirror.reshare_policy)
        self.mirror = mirror
        self.target = target
        self._peer = peer
        self._own_peer: PeerClient | None = None
        self._keys: dict[str, Verifier] = {}
        self.reshared = self.revoked = self.skipped = 0

    async def close(self) -> None:
        if self._own_peer is not None:
            await self._own_peer.close()

    def _skip(self, why: str, detail: str) -> None:
        self.skipped += 1
        reshare_counters[f"skipped:{why}"] += 1
        log.warning("not re-sharing from %s: %s", self.mirror.origin, detail)

    async def _client(self) -> PeerClient:
        if self._peer is not None:
            return self._peer
        if self._own_peer is None:
            signing = None if self.mirror.tlp == "clear" else self.service.signer
            self._own_peer = PeerClient(self.mirror.remote_url or "", signing)
            await self._own_peer.__aenter__()
        return self._own_peer

    async def _upstream_receipt(self, index: int) -> Receipt:
        client = await self._client()
        path = f"/v1/sets/{self.mirror.remote_set}/receipts/{index}"
        data = await client.get(path, MAX_RECEIPT_SIZE)
        try:
            return Receipt.from_json(data)
        except FormatError as e:
            raise PeerError(
                f"{self.mirror.remote_url}{path}: not a receipt: {e.diagnostics()}",
                transient=False,
            ) from e

    async def _key_map(self, receipt: Receipt) -> dict[str, Verifier] | None:
        """Keys of every log in the chain, or None if one is unknown to this node."""
        from node.federation.sync import federation_of, set_verifier

        r: Receipt | None = receipt
        while r is not None:
            if r.origin not in self._keys:
                if r.origin == self.mirror.origin:
                    key: Verifier | None = await set_verifier(self.service, self.mirror)
                else:
                    key = await federation_of(self.service).set_verifier(r.origin)
                if key is None:
                    return None
                self._keys[r.origin] = key
            r = r.upstream
        return self._keys

    async def entry(self, upstream: Entry, index: int, *, revoked: bool) -> None:
        store = self.service.store
        if revoked:
            await store.drop_pending(self.mirror.id, index)
            return  # its origin withdrew it: nothing to pass on
        if await store.find_reshares(self.mirror.origin, upstream.id):
            return  # re-shared by an earlier pass
        refusal = self.policy.static_refusal(upstream)
        if refusal is not None:
            self._skip(f"policy:{refusal}", f"entry {upstream.id}: policy ({refusal})")
            return
        if self.policy.min_attestations and (
            await self._attesters(upstream) < self.policy.min_attestations
        ):
            await store.add_pending(self.mirror.id, index)  # reconsidered on every pass
            self._skip("policy:attestations", f"entry {upstream.id}: not enough attestations")
            return
        await store.drop_pending(self.mirror.id, index)
        proof = await self.service.inclusion_proof(
            self.mirror, index, self.mirror.checkpoint_size
        )
        assert self.mirror.checkpoint is not None
        receipt = Receipt(
            origin=self.mirror.origin,
            index=index,
            leaf=(await store.read_entries(self.mirror.id, index, 1))[0],
            checkpoint=self.mirror.checkpoint,
            proof=tuple(proof),
            upstream=(
                await self._upstream_receipt(index) if upstream.provenance.chain else None
            ),
        )
        try:
            fields = reshared_entry_fields(
                upstream,
                org=self.service.cfg.org,
                upstream_origin=self.mirror.origin,
                at=timestamp(),
            )
        except FormatError as e:
            self._skip("chain", f"entry {upstream.id}: {e.diagnostics()}")
            return
        raw: dict[str, Any] = {
            **fields,
            "id": new_record_id(),
            "author": self.service.cfg.org,
            "created": fields["provenance"]["chain"][-1]["at"],
            "nonce": new_nonce(),
        }
        ours = entry_from_dict(raw)
        keys = await self._key_map(receipt)
        if keys is None:
            self._skip("unknown_key", f"entry {upstream.id}: a log in its chain has no known key")
            return
        try:
            verify_receipt_chain(ours, receipt, keys.__getitem__)
        except VerificationError as e:
            self._skip("unverified", f"entry {upstream.id}: {e.diagnostics()}")
            return
        (result,) = await self.service.sequencer.append(
            self.target.name, [PreparedRecord.of(ours, canonicalize(raw))]
        )
        if result.status == "duplicate" and not await self._is_our_copy(result.index, upstream):
            # The hash is already active in the target set (published here, or re-shared from
            # another partner): one active entry per hash and set.
            self._skip("duplicate", f"entry {upstream.id}: hash already in {self.target.name}")
            return
        await store.add_reshare(
            self.target.id, result.index, self.mirror.origin, upstream.id, receipt.to_json()
        )
        self.reshared += 1
        reshare_counters["reshared"] += 1

    async def _attesters(self, upstream: Entry) -> int:
        """Organisations other than the author that said agree or also_vetted about it."""
        prov = upstream.provenance
        targets = {(self.mirror.origin, upstream.id), (prov.node, prov.record)}
        targets.update((hop.origin, hop.record) for hop in prov.chain)
        rows = await self.service.store.attestations_for(sorted(targets))
        return len({
            attester for _s, _i, attester, opinion, _c in rows
            if opinion in ("agree", "also_vetted") and attester != upstream.author
        })

    async def _is_our_copy(self, index: int, upstream: Entry) -> bool:
        """Whether the entry at ``index`` of the target set re-shares ``upstream`` from this
        mirror (a copy appended just before a crash lost its receipt row)."""
        stored = await self.service.store.get_record_at(self.target.id, index)
        if stored is None:
            return False
        record = decode_record(stored.data)
        if not isinstance(record, Entry) or not record.provenance.chain:
            return False
        hop = record.provenance.chain[-1]
        return (hop.org, hop.origin, hop.record) == (
            self.service.cfg.org, self.mirror.origin, upstream.id
        )

    async def revocation(self, upstream: Revocation) -> None:
        store = self.service.store
        for set_id, index in await store.find_reshares(self.mirror.origin, upstream.target):
            stored = await store.get_record_at(set_id, index)
            if stored is None or stored.revoked_by is not None:
                continue
            ours = decode_record(stored.data)
            info = self.target if set_id == self.target.id else await self._set_by_id(set_id)
            if info is None:
                continue
            try:
                await self.service.revoke(
                    info.name,
                    entry_id=ours.id,
                    reason=upstream.reason,
                    text=f"upstream {self.mirror.origin} revoked {upstream.target}",
                )
            except Conflict:
                continue  # revoked meanwhile (another pass, the operator): the goal holds
            self.revoked += 1
            reshare_counters["revoked"] += 1

    async def _set_by_id(self, set_id: int) -> SetInfo | None:
        for info in await self.service.store.list_sets():
            if info.id == set_id:
                return info
        return None

