"""Subscriptions and the verified sync client: copy a partner's log into a mirror, verify first.

A subscription is a mirror set (``sets.kind = 'mirror'``, name ``<partner org>:<set>``) that holds
the partner's log byte for byte at the same indices. :func:`sync_once` brings one mirror up to the
partner's latest signed checkpoint. Nothing reaches the database before it is tied to that
checkpoint's signed root (design.md "Sync"):

1. ``GET checkpoint`` and verify the note with the partner's set key (:func:`set_verifier`).
   For a mirror at size ``m`` and a checkpoint of size ``n``: ``n < m`` is a rollback; ``n == m``
   with another root is a fork; both keep the two notes as evidence and refuse.
2. Fetch the level-1+ tiles and the partial level-0 tile at ``n`` and check they hash to the root
   (:func:`protocol.mirror.verify_tree_tiles`): a verified hash for every 256-leaf block. If
   ``0 < m < n``, build the RFC 9162 consistency proof ``m -> n`` from the partner's tiles (every
   level-0 tile it uses is first checked against its verified block hash, so a failing proof is the
   partner's doing, not a tampered tile) and verify it against the mirror's stored root: failure
   is a fork (evidence kept).
3. Fetch entry bundles from ``m`` to ``n`` (a few ahead, consumed in order). Each is checked
   against its verified block (resuming mid-block: the mirror's own leaf hashes of that block are
   the prefix), every leaf must decode as a canonical record (:func:`protocol.scan.scan_record`,
   which accepts exactly what :func:`protocol.records.decode_record` does: no non-hash records,
   16 KiB limit), and only then is it stored with ``SqlStore.append_mirror``, in batches of up to
   BATCH_RECORDS leaves; the last append adopts the partner's note as the mirror's checkpoint.

Crash safety: ``append_mirror`` advances the mirror's size (the cursor) in the same transaction as
the leaves, so a sync killed between batches leaves a mirror at a batch boundary that the next
run resumes from: no gaps, no duplicates. A mirror may then be larger than its adopted checkpoint
until the next sync finishes; its stored root at its size is still verified data.

Memory: one batch of leaves, a few entry bundles, the level-1+ tiles (``n / 256`` hashes) and the
verified block hashes.

Failures are recorded on the mirror (``set_sync_error``) and raised: :class:`~node.federation.fetch.
PeerError` for transport failures (the caller backs off and retries), a
:class:`~protocol.errors.ProtocolError` for answers that do not verify.

The partner's key: a subscription pins the partner's node vkey in the ``trust`` table
(``kind = 'partner'``) unless membership already vouches for it; the set's log key is the same key
under the set origin, which must start with the node vkey's name + ``/`` (design.md "Identity").
:func:`set_verifier` is the one place that resolves it (membership and pins via
:class:`~node.federation.members.Federation`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import weakref
from collections import Counter, deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from sqlalchemy import select, update

from node.backoff import Backoff
from node.config import check_org
from node.errors import Conflict, NodeError, NotFound, SetupError, Unavailable
from node.federation.fetch import PeerClient, PeerError
from node.federation.members import MEMBERS_SET, Federation
from node.federation.prepare import Checked as _Checked
from node.federation.prepare import check_bundle
from node.service import NodeService, check_set_name, check_tlp
from node.storage import MirrorLeaves, SetInfo
from node.storage.federation import FederationStore
from node.storage.schema import sets
from node.storage.sql import SqlStore, shielded_write
from node.witness import verify_mirror_checkpoint
from protocol import merkle
from protocol import tiles as tlog
from protocol.checkpoint import Checkpoint
from protocol.equivocation import consistency_evidence, evidence_tiles
from protocol.errors import (
    FormatError,
    InconsistentTreeError,
    ProofError,
    ProtocolError,
    SignatureError,
)
from protocol.mirror import (
    VerifiedTree,
    mirror_tiles_needed,
    verify_bundle_hashes,
    verify_tree_tiles,
)
from protocol.note import Verifier
from protocol.records import timestamp
from protocol.scan import scan_record
from protocol.tiles import TILE_HEIGHT, TILE_WIDTH, TileRef
from protocol.verify import check_fork, verify_consistency_of

log = logging.getLogger("hashfed.sync")

__all__ = [
    "Backoff",
    "MirrorStatus",
    "SyncResult",
    "list_subscriptions",
    "pin_partner",
    "pinned_partner_vkey",
    "set_verifier",
    "subscribe",
    "sync_counters",
    "sync_once",
]

#: tiles fetched at once while verifying a tree
TILE_CONCURRENCY: Final = 8
#: entry bundles fetched ahead of the one being verified
BUNDLE_PREFETCH: Final = 4
#: leaves (or leaf bytes) per append_mirror transaction; see _Sync._copy_entries
BATCH_RECORDS: Final = 32_768
BATCH_BYTES: Final = 24 << 20
#: a sync of at least this many leaves checks records in worker processes (node.federation.
#: prepare), which then work while this process stores; smaller ones are not worth starting them
PARALLEL_MIN_LEAVES = 65_536
#: with workers, bundles in flight (being fetched or checked, or done) ahead of the one being
#: stored: enough to keep the workers busy through one append; ~128 x 140 KB of leaves at most
PARALLEL_AHEAD: Final = 128
#: of those, HTTP requests open at once: a subscriber stays a polite client of its partner
BUNDLE_CONCURRENCY: Final = 8
PARTNER: Final = "partner"

#: process-wide counts of sync outcomes and evidence kinds (rendered by whoever exposes metrics):
#: keys "synced", "up_to_date", "failed", "evidence:fork", "evidence:rollback", "records"
sync_counters: Counter[str] = Counter()


@dataclass(frozen=True)
class SyncResult:
    """What one :func:`sync_once` did."""

    mirror: str
    origin: str
    #: mirror size before and after
    before: int
    after: int
    #: the partner's checkpoint size (== after on success)
    checkpoint_size: int
    #: entry bundles fetched
    bundles: int

    @property
    def appended(self) -> int:
        return self.after - self.before


@dataclass(frozen=True)
class MirrorStatus:
    """A subscription as ``hashfed subscriptions`` lists it."""

    info: SetInfo
    synced_at: str | None
    sync_error: str | None


# -- the partner's key


_federations: weakref.WeakKeyDictionary[NodeService, Federation] = weakref.WeakKeyDictionary()


def federation_of(service: NodeService) -> Federation:
    """The process's :class:`Federation` for ``service`` (it caches folded membership logs)."""
    fed = _federations.get(service)
    if fed is None:
        fed = _federations[service] = Federation(service.store, service.cfg.org)
    return fed


async def pinned_partner_vkey(store: SqlStore, org: str) -> str | None:
    """The node vkey pinned for partner ``org`` (trust row of kind ``partner``), if any."""
    for anchor in await FederationStore(store).list_trust(PARTNER):
        if anchor.org == org:
            return anchor.vkey
    return None


async def pin_partner(store: SqlStore, org: str, url: str, vkey: str) -> None:
    """Pin partner ``org``'s node vkey. Conflict if another key is pinned for it already:
    replacing a partner's key is a decision (rotation), not a side effect of subscribing."""
    current = await pinned_partner_vkey(store, org)
    if current is not None:
        if Verifier.from_vkey(current) != Verifier.from_vkey(vkey):
            raise Conflict(
                f"partner {org} is pinned to another key ({current}); remove that pin first",
                field="vkey",
            )
        return
    await FederationStore(store).add_trust(org, PARTNER, url, vkey)


def derive_set_verifier(node_key: Verifier, set_origin: str) -> Verifier:
    """A partner's set key: its node key under the set origin, which must extend the node's name.

    Without the prefix check a partner could sign logs under anybody's origin.
    """
    if not set_origin.startswith(node_key.name + "/"):
        raise SignatureError(
            f"set origin {set_origin!r} is not under the partner's node name {node_key.name!r}",
            field="origin",
        )
    return Verifier.from_public_key(set_origin, node_key.public_key)


async def set_verifier(service: NodeService, info: SetInfo) -> Verifier:
    """The key that must sign the mirrored log ``info``: the one place that decides it.

    A trusted coordinator's ``members`` log: the coordinator's pinned key (trust row). Any other
    log: the key of an authorised partner whose node name prefixes the origin, from membership
    or a pinned partner (:meth:`Federation.set_verifier`). SetupError if there is none (not
    pinned, or no longer authorised: a suspended partner's log is not followed).
    """
    org = info.remote_org or ""
    if info.remote_set == MEMBERS_SET:
        for anchor in await FederationStore(service.store).list_trust("coordinator"):
            if anchor.org == org:
                return derive_set_verifier(Verifier.from_vkey(anchor.vkey), info.origin)
    verifier = await federation_of(service).set_verifier(info.origin)
    if verifier is None:
        raise SetupError(
            f"no authorised partner key signs {info.origin} (partner {org!r} is not pinned or "
            "not a current member): subscribe again with --vkey VKEY"
        )
    return verifier


# -- subscribing ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _peer(
    url: str, signing: NodeService | None, peer: PeerClient | None
) -> AsyncIterator[PeerClient]:
    """``peer`` if given (tests, callers with their own timeouts), else a client for ``url``
    that signs with ``signing``'s node key (None: unsigned)."""
    if peer is not None:
        yield peer
        return
    async with PeerClient(url, None if signing is None else signing.signer) as client:
        yield client


def _str_field(obj: Any, key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise PeerError(f"{where} has no {key!r} string", transient=False)
    return value


async def subscribe(
    service: NodeService,
    url: str,
    set_name: str,
    *,
    vkey: str | None = None,
    reshare_into: str | None = None,
    reshare_policy: str | None = None,
    peer: PeerClient | None = None,
) -> SetInfo:
    """Create the mirror ``<org>:<set>`` of a partner's set (empty; :func:`sync_once` fills it).

    The partner's node key: ``vkey`` (pinned now) or the key already pinned for its org. Either
    way the key the partner presents at ``GET /v1/node`` must be that key, and the set's origin
    and vkey must derive from it. Nothing is trusted on first use.
    """
    check_set_name(set_name)
    url = url.rstrip("/")
    pinned = Verifier.from_vkey(vkey) if vkey is not None else None
    async with _peer(url, None, peer) as client:
        node = await client.node_info()
        try:
            # Unsigned first: a clear set is public, and a partner that does not know our key
            # would refuse a signed request (401) even for it.
            remote = await client.set_info(set_name)
        except PeerError as e:
            if e.http_status != 401 or peer is not None:
                raise
            async with _peer(url, service, None) as signed:
                remote = await signed.set_info(set_name)
    org = check_org(_str_field(node, "org", f"{url}/v1/node"))
    presented = Verifier.from_vkey(_str_field(node, "vkey", f"{url}/v1/node"))
    if pinned is None:
        pinned = await federation_of(service).node_verifier(org)
        if pinned is None:
            raise SetupError(
                f"partner {org} at {url} presents key {presented.vkey()}, which is neither "
                "pinned nor vouched for by a coordinator: check it with the partner out of band "
                "and pass --vkey"
            )
    if presented != pinned:
        raise SignatureError(
            f"partner {org} at {url} presents key {presented.vkey()}, not the pinned "
            f"{pinned.vkey()}"
        )
    origin = _str_field(remote, "origin", f"set {set_name}")
    set_key = derive_set_verifier(pinned, origin)
    if remote.get("vkey") != set_key.vkey():
        raise SignatureError(f"set {set_name} of {org} announces another key than {pinned.name}")
    tlp = check_tlp(_str_field(remote, "tlp", f"set {set_name}"))
    if reshare_into is not None:
        from node.federation.reshare import check_reshare_target

        # NotFound: re-share into an existing set only; BadRequest: never from amber+strict or
        # red, never into a less restrictive set
        check_reshare_target(tlp, await service.store.get_set(reshare_into))
    if vkey is not None:
        await pin_partner(service.store, org, url, pinned.vkey())
    return await service.store.create_mirror(
        f"{org}:{set_name}",
        origin,
        remote_url=url,
        remote_org=org,
        remote_set=set_name,
        tlp=tlp,
        reshare_policy=reshare_policy,
        reshare_into=reshare_into,
    )


async def list_subscriptions(store: SqlStore) -> list[MirrorStatus]:
    """Every mirror with its last sync time and error."""
    infos = await store.list_sets(kind="mirror")
    async with store._read.connect() as conn:
        rows = (
            await conn.execute(
                select(sets.c.name, sets.c.synced_at, sets.c.sync_error).where(
                    sets.c.kind == "mirror"
                )
            )
        ).all()
    status = {str(r.name): (r.synced_at, r.sync_error) for r in rows}
    return [MirrorStatus(i, *status.get(i.name, (None, None))) for i in infos]


@shielded_write
async def _record_attempt(store: SqlStore, name: str, error: str | None) -> None:
    async with store._write_tx() as conn:
        await conn.execute(
            update(sets)
            .where(sets.c.name == name, sets.c.kind == "mirror")
            .values(synced_at=timestamp(), sync_error=error)
        )


# -- syncing --------------------------------------------------------------------------------------


async def sync_once(
    service: NodeService, mirror_name: str, *, peer: PeerClient | None = None
) -> SyncResult:
    """Bring mirror ``mirror_name`` up to its partner's latest checkpoint (see the module doc).

    Raises after recording the error on the mirror: PeerError (transport; retry later with
    backoff), or a ProtocolError subclass naming what did not verify (InconsistentTreeError for a
    fork or rollback, whose notes are kept in ``evidence``).
    """
    store = service.store
    info = await store.get_set(mirror_name, kind="mirror")
    try:
        verifier = await set_verifier(service, info)
        # Clear sets are public: no signature, so that partners who do not know our key
        # (they would refuse a signature they cannot check) still serve them.
        signing = None if info.tlp == "clear" else service
        async with _peer(info.remote_url or "", signing, peer) as client:
            result = await _Sync(store, info, verifier, client).run()
            if info.reshare_into is not None:
                await _reshare_after_sync(service, mirror_name, result, client)
    except (ProtocolError, NodeError) as e:
        sync_counters["failed"] += 1
        message = e.diagnostics() if isinstance(e, ProtocolError) else str(e)
        with contextlib.suppress(NodeError):
            await _record_attempt(store, mirror_name, f"{type(e).__name__}: {message}")
        raise
    sync_counters["synced" if result.appended else "up_to_date"] += 1
    if not result.appended:
        # append_mirror stamps synced_at when it stores anything; an idle sync stamps it here.
        await _record_attempt(store, mirror_name, None)
    return result


#: mirrors whose re-share pass already caught up in this process (see _reshare_after_sync)
_reshare_caught_up: weakref.WeakKeyDictionary[NodeService, set[str]] = weakref.WeakKeyDictionary()


async def _reshare_after_sync(
    service: NodeService, mirror_name: str, result: SyncResult, client: PeerClient
) -> None:
    """Re-share what the sync appended (node.federation.reshare), once the mirror adopted the
    partner's checkpoint. The first pass of a process also catches up on a pass that a crash
    cut short; after that an idle sync costs nothing."""
    from node.federation.reshare import reshare_synced

    done = _reshare_caught_up.setdefault(service, set())
    if not result.appended and mirror_name in done:
        return
    mirror = await service.store.get_set(mirror_name, kind="mirror")
    await reshare_synced(service, mirror, result.before, peer=client)
    done.add(mirror_name)


class _Sync:
    """One sync of one mirror (the steps of the module docstring)."""

    def __init__(
        self, store: SqlStore, info: SetInfo, verifier: Verifier, client: PeerClient
    ) -> None:
        self.store = store
        self.info = info
        self.verifier = verifier
        self.client = client
        self.remote_set = info.remote_set or ""
        self.bundles = 0

    async def run(self) -> SyncResult:
        info = self.info
        note = await self.client.checkpoint(self.remote_set)
        # The log's signature, and the witness quorum if the mirror requires one (node.witness).
        cp = await verify_mirror_checkpoint(self.store, info, note, self.verifier)
        m, n = info.size, cp.size
        if n < m:
            await self._evidence(
                "rollback",
                f"checkpoint of size {n} after the mirror verified size {m}",
                note,
            )
        if n == m:
            if cp.root_hash != info.root:
                await self._fork_same_size(note)
            if info.checkpoint_size < n or info.checkpoint is None:
                await self.store.append_mirror(info.name, m, [], checkpoint=(note, n, cp.root_hash))
            return self._result(m, n)

        tiles = await self._fetch_tiles(mirror_tiles_needed(n))
        tree = verify_tree_tiles(n, cp.root_hash, tiles)
        if m > 0:
            await self._check_consistency(tree, tiles, cp, note)
        del tiles  # only the verified block hashes are needed from here on
        await self._copy_entries(tree, note)
        return self._result(m, n)

    def _result(self, before: int, n: int) -> SyncResult:
        return SyncResult(self.info.name, self.info.origin, before, n, n, self.bundles)

    async def _fetch_tiles(self, refs: Sequence[TileRef]) -> dict[TileRef, bytes]:
        limit = asyncio.Semaphore(TILE_CONCURRENCY)

        async def one(ref: TileRef) -> bytes:
            async with limit:
                return await self.client.tile(self.remote_set, ref)

        fetched = await asyncio.gather(*(one(r) for r in refs))
        return dict(zip(refs, fetched, strict=True))

    async def _check_consistency(
        self, tree: VerifiedTree, tiles: dict[TileRef, bytes], cp: Checkpoint, note: bytes
    ) -> None:
        info = self.info
        m, n = info.size, cp.size
        # evidence_tiles: the consistency proof's tiles and, for a power-of-two m, those of the
        # first subtree, so that a fork's path can be kept as offline-checkable evidence
        needed = evidence_tiles(m, n)
        extra = [r for r in sorted(needed, key=lambda r: (r.level, r.n)) if r not in tiles]
        tiles.update(await self._fetch_tiles(extra))
        for ref in extra:
            # Only full level-0 tiles can be missing from mirror_tiles_needed(n); each is a block
            # whose hash is verified, so the proof below is built from verified hashes only.
            data = tiles[ref]
            if (
                ref.level != 0
                or not ref.is_full
                or ref.n >= len(tree.block_hashes)
                or len(data) != ref.byte_length
                or merkle.root_from_concatenated_hashes(data) != tree.block_hashes[ref.n]
            ):
                raise ProofError(
                    f"tile {ref.path()} of {info.origin} does not hash to its verified block",
                    field=ref.path(),
                )
        proof = tlog.consistency_proof(m, n, tiles)
        old = Checkpoint(info.origin, m, info.root)
        try:
            verify_consistency_of(old, cp, proof)
        except ProofError as e:
            # The tiles are verified against n's signed root, so their path to m is the larger
            # tree's own: with both notes, anyone can check the fork (protocol.equivocation).
            # Only if the kept note is for m itself: after an interrupted sync the mirror can be
            # past its last adopted note, and the fork may lie in leaves that note does not sign.
            await self._evidence(
                "fork",
                f"the checkpoint of size {n} does not extend the mirror's verified tree of size "
                f"{m} ({e.message})",
                note,
                path=consistency_evidence(m, n, tiles) if info.checkpoint_size == m else None,
            )

    async def _fork_same_size(self, note: bytes) -> None:
        info = self.info
        if info.checkpoint is not None and info.checkpoint_size == info.size:
            try:
                check_fork(info.checkpoint, note, self.verifier)
            except InconsistentTreeError as e:
                await self._evidence("fork", e.message, note, path=())
        await self._evidence("fork", f"two roots for tree size {info.size}", note)

    async def _evidence(
        self, kind: str, detail: str, note: bytes, *, path: tuple[bytes, ...] | None = None
    ) -> None:
        """Keep the stored and the new note, count it, and refuse (always raises).

        ``path`` as in InconsistentTreeError: set only when the stored note and ``note`` prove
        equivocation (with that path); a rollback, or a fork against a tree whose note was not
        kept, is refused and logged all the same."""
        info = self.info
        message = f"{kind} in {info.origin}: {detail}"
        if info.checkpoint is None:
            path = None
        await self.store.add_evidence(info.origin, kind, message, info.checkpoint, note, path)
        sync_counters[f"evidence:{kind}"] += 1
        log.error("%s (evidence kept; mirror %s not updated)", message, info.name)
        pair = (info.checkpoint, note) if info.checkpoint is not None else (note,)
        raise InconsistentTreeError(message, evidence=pair, path=path)

    async def _block_prefix(self, block: int, offset: int) -> list[bytes]:
        """The mirror's own leaf hashes of ``block`` (its first ``offset`` leaves)."""
        ref = TileRef(0, block, offset)
        data = (await self.store.read_tiles(self.info.id, [ref])).get(ref)
        if data is None:
            raise NotFound(f"mirror {self.info.name} lacks its level-0 tile {ref.path()}")
        return [data[i : i + merkle.HASH_SIZE] for i in range(0, len(data), merkle.HASH_SIZE)]

    async def _copy_entries(self, tree: VerifiedTree, note: bytes) -> None:
        """Fetch, verify and store the bundles from the mirror's size to ``tree.size``.

        Bundles are fetched ahead (BUNDLE_PREFETCH) and consumed in order. Appends are large
        (BATCH_RECORDS leaves or BATCH_BYTES, whichever comes first) because each commit writes
        every index page it touched: 256-leaf commits cost SQLite several times the write volume
        of 32k-leaf ones on a million-entry mirror (bench/README.md, "Sync").

        Each bundle's records are checked and its leaves hashed by
        :func:`node.federation.prepare.check_bundle`: in this process for a small sync, and for
        one of PARALLEL_MIN_LEAVES or more in worker processes, up to PARALLEL_AHEAD bundles
        ahead, so they work while this process stores the previous batch. (Overlapping in
        threads was measured too: no gain, as both halves hold the GIL.) Either way the hashes
        are verified against the tree here before anything else, and a record flagged is checked
        again here for the exact error (:meth:`_prepared`); what is stored is this process's own
        split of the very bytes that were checked.

        Crash safety: each append is at exactly the size the previous one left and only the last
        carries the partner's note. A crash leaves the mirror at the end of the last committed
        batch, which the next run resumes. Memory: one batch, the bundles ahead and the verified
        block hashes.
        """
        info = self.info
        position = info.size
        first = position >> TILE_HEIGHT
        blocks = iter(range(first, tree.bundle_count))
        pool = _worker_pool() if tree.size - position >= PARALLEL_MIN_LEAVES else None
        ahead = PARALLEL_AHEAD if pool is not None else BUNDLE_PREFETCH
        inflight: deque[tuple[int, int, asyncio.Task[tuple[bytes, _Checked]]]] = deque()
        batch: list[MirrorLeaves] = []
        batch_leaves = batch_bytes = 0
        batch_start = position

        http_slots = asyncio.Semaphore(BUNDLE_CONCURRENCY)

        async def fetch(ref: TileRef, offset: int) -> tuple[bytes, _Checked]:
            async with http_slots:
                data = await self.client.bundle(self.remote_set, ref)
            base = (ref.n << TILE_HEIGHT) + offset
            if pool is None:
                return data, check_bundle(data, ref.width, offset, base)
            loop = asyncio.get_running_loop()
            try:
                checked = await loop.run_in_executor(
                    pool, check_bundle, data, ref.width, offset, base
                )
            except BrokenProcessPool as e:  # a worker was killed (out of memory, a signal)
                raise Unavailable(
                    f"a record-check worker process of the sync of {info.name} stopped"
                    " unexpectedly; nothing of this batch was stored and the sync will resume"
                ) from e
            return data, checked

        def fetch_ahead() -> None:
            while len(inflight) < ahead:
                block = next(blocks, None)
                if block is None:
                    return
                offset = position - (block << TILE_HEIGHT) if block == first else 0
                task = asyncio.ensure_future(fetch(tree.bundle_ref(block), offset))
                inflight.append((block, offset, task))

        try:
            fetch_ahead()
            while inflight:
                block, offset, task = inflight.popleft()
                data, checked = await task
                fetch_ahead()
                self.bundles += 1
                prefix = await self._block_prefix(block, offset) if offset else []
                leaves = self._prepared(tree, block, data, offset, prefix, checked)
                batch.append(leaves)
                batch_leaves += len(leaves.rows)
                batch_bytes += len(data)
                position += len(leaves.rows)
                last = block == tree.bundle_count - 1
                if last or batch_leaves >= BATCH_RECORDS or batch_bytes >= BATCH_BYTES:
                    await self.store.append_mirror(
                        info.name,
                        batch_start,
                        batch,
                        checkpoint=(note, tree.size, tree.root) if last else None,
                    )
                    sync_counters["records"] += batch_leaves
                    batch, batch_leaves, batch_bytes, batch_start = [], 0, 0, position
        finally:
            for _, _, pending in inflight:
                pending.cancel()
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        if position != tree.size:  # pragma: no cover - bundle_ref widths always sum to size
            raise ProofError(f"mirror {info.name} ended at {position}, not {tree.size}")

    def _prepared(
        self,
        tree: VerifiedTree,
        block: int,
        data: bytes,
        offset: int,
        prefix: list[bytes],
        checked: _Checked,
    ) -> MirrorLeaves:
        """The leaves ``offset..`` of bundle ``block`` as check_bundle checked them: its hashes
        verified against the tree first, then the first record it flagged (if any) checked here
        for the exact error; a partial bundle's rows get the bytes of this process's own split.
        """
        hashes, rows, records, bad, root = checked
        width = tree.bundle_ref(block).width
        if not hashes:  # check_bundle could not split it: the strict decode here names why
            tlog.decode_entry_bundle(data, width)
            raise RuntimeError(f"bundle {block}: check_bundle and decode disagree on it")
        # A whole bundle's root, computed by check_bundle from the very hashes it returned, is
        # compared here; anything else (resumed mid-block, the final partial bundle, a
        # mismatch, which then raises its error) is verified here in full. ProofError first,
        # before any FormatError.
        whole = offset == 0 and width == TILE_WIDTH
        if (
            not whole
            or root is None
            or block >= len(tree.block_hashes)
            or len(hashes) != width * merkle.HASH_SIZE
            or root != tree.block_hashes[block]
        ):
            verify_bundle_hashes(tree, block, hashes, prefix=prefix)
        base = (block << TILE_HEIGHT) + offset
        if bad >= 0:
            leaves = tlog.decode_entry_bundle(data, width)[offset:]
            self._raise_record_error(leaves[bad], base + bad)
        if whole:
            # verified above against the tree: this block's hash is the signed tree's, and its
            # leaves are the strict split of these very bytes, which the store keeps as they are
            return MirrorLeaves(base, rows, hashes, list(records), data, tree.block_hashes[block])
        leaves = tlog.decode_entry_bundle(data, width)[offset:]
        rows = [(*r[:4], leaf) for r, leaf in zip(rows, leaves, strict=True)]
        return MirrorLeaves(base, rows, hashes, list(records))

    def _raise_record_error(self, leaf: bytes, index: int) -> NoReturn:
        """The error of leaf ``index``, which check_bundle refused, naming the leaf."""
        try:
            scan_record(leaf)
        except FormatError as e:
            inner = f" ({e.field})" if e.field else ""
            raise type(e)(
                f"leaf {index} of {self.info.origin} is not a valid record: {e.message}{inner}",
                field=f"index {index}",
            ) from e
        # check_bundle refused what scan_record accepts here: a bug; never store around it.
        raise RuntimeError(f"leaf {index}: check_bundle and scan_record disagree on its record")


def _worker_pool() -> concurrent.futures.ProcessPoolExecutor:
    """Worker processes for one large sync: all cores but the one this process stores with.

    Started fresh ("spawn": this process has threads, which a fork would copy mid-state) and shut
    down when the sync ends; starting them costs well under a second, against minutes of sync.
    """
    workers = max(1, min((os.cpu_count() or 2) - 1, 4))
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn")
    )
