"""Witnesses (c2sp.org/tlog-witness): cosign checkpoints, collect cosignatures, require quorums.

Three roles, all on a node's database (tables of migration 0003):

* **Witness.** ``POST /add-checkpoint`` cosigns a checkpoint of a log it witnesses (table
  ``witness_logs``) if it is consistent with the latest one it cosigned (table ``witness_state``).
  The check and the update are one write transaction (the spec's race of two requests rolling the
  state back cannot happen). A rollback (a smaller tree) or a fork (same size, other root) is
  refused with 409 and both signed notes are kept in ``evidence``. ``hashfed serve`` answers it when
  DIR/witness.key exists; ``hashfed witness`` runs a witness alone.
* **Log.** After the sequencer signs a checkpoint, :class:`CosignatureCollector` sends it to the
  witnesses the node uses (table ``witness_peers``) and merges the cosignatures into the stored
  note, which ``GET /v1/sets/{set}/checkpoint`` then serves. Best effort: background tasks with
  bounded timeouts, the sequencer never waits for a witness.
* **Subscriber.** A mirror can require ``quorum`` cosignatures from named witnesses (table
  ``witness_quorums``); :func:`verify_mirror_checkpoint` is sync's checkpoint check. A checkpoint
  that misses the quorum is shown to the required witnesses it knows a URL for (gossip): a witness
  that cosigned another root for the same size answers with its own view, and the two notes become
  fork evidence that :func:`protocol.verify.check_fork` verifies offline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from aiohttp import web
from sqlalchemy import delete, select, update

from node.backoff import Backoff
from node.config import NodeConfig
from node.errors import BadRequest, NodeError, NotFound, SetupError
from node.storage import SetInfo
from node.storage.schema import (
    checkpoints,
    sets,
    witness_logs,
    witness_peers,
    witness_quorums,
    witness_state,
)
from node.storage.sql import SqlStore, shielded_write
from protocol import merkle
from protocol.checkpoint import (
    Checkpoint,
    CosignatureSigner,
    CosignatureVerifier,
    add_cosignatures,
    cosignatures,
    parse_checkpoint,
    verify_checkpoint,
)
from protocol.errors import (
    FormatError,
    InconsistentTreeError,
    ProofError,
    ProtocolError,
    SignatureError,
)
from protocol.note import NoteSignature, Verifier, split_note
from protocol.records import timestamp
from protocol.verify import check_fork, verify_consistency_of

log = logging.getLogger("hashfed.witness")

__all__ = [
    "WITNESS_KEY_FILE",
    "AddCheckpointRequest",
    "CosignatureCollector",
    "QuorumPolicy",
    "WitnessAnswer",
    "WitnessPeer",
    "WitnessStore",
    "add_witness_routes",
    "create_witness_key",
    "install_witness",
    "load_witness_signer",
    "parse_add_checkpoint",
    "serve_witness",
    "submit_checkpoint",
    "verify_mirror_checkpoint",
    "witness_app",
]

WITNESS_KEY_FILE: Final = "witness.key"
#: tlog-witness: "The client MUST NOT send more than 63 consistency proof lines."
MAX_PROOF_LINES: Final = 63
#: a request body: 64 proof lines and a note of at most 100 signatures fit far below this
MAX_REQUEST: Final = 64 * 1024
#: seconds one request to a witness may take, connection included
WITNESS_TIMEOUT: Final = 5.0
#: a witness that did not answer is asked again after 1, 2, 4 ... up to 60 s (with jitter)
WITNESS_RETRY_BASE: Final = 1.0
WITNESS_RETRY_CAP: Final = 60.0
#: bytes read from a witness's answer at most
MAX_ANSWER: Final = 64 * 1024
SIZE_CONTENT_TYPE: Final = "text/x.tlog.size"
ALL_MIRRORS: Final = "*"

_SIZE_RE: Final = re.compile(rb"0|[1-9][0-9]{0,18}")


# -- the witness key ------------------------------------------------------------------------------


def create_witness_key(cfg: NodeConfig, name: str | None = None) -> CosignatureSigner:
    """Create DIR/witness.key (mode 0600 from the first byte); refuse to replace one.

    The default name is ``<node origin>/witness``: a witness key must never be used under two
    names (tlog-cosignature), so it gets a name of its own, not the node's.
    """
    path = cfg.data_dir / WITNESS_KEY_FILE
    signer = CosignatureSigner.generate(name or f"{cfg.origin}/witness")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise SetupError(f"{path} exists already; refusing to replace a witness key") from e
    with os.fdopen(fd, "w") as f:
        f.write(signer.skey() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return signer


def load_witness_signer(data_dir: Path) -> CosignatureSigner | None:
    """The witness key in ``data_dir``, or None if this node is not a witness."""
    path = data_dir / WITNESS_KEY_FILE
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        return None
    if mode & 0o077:
        raise SetupError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    try:
        return CosignatureSigner.from_skey(path.read_text().strip())
    except FormatError as e:
        raise SetupError(f"{path} is not a witness key: {e.message}") from e


# -- the add-checkpoint request -------------------------------------------------------------------


@dataclass(frozen=True)
class AddCheckpointRequest:
    """A parsed ``POST /add-checkpoint`` body: old size, consistency proof, signed note."""

    old: int
    proof: tuple[bytes, ...]
    note: bytes
    checkpoint: Checkpoint

    def body(self) -> bytes:
        lines = [b"old %d\n" % self.old]
        lines += [base64.b64encode(h) + b"\n" for h in self.proof]
        return b"".join(lines) + b"\n" + self.note


def parse_add_checkpoint(body: bytes) -> AddCheckpointRequest:
    """Parse the tlog-witness request grammar; BadRequest (400) for anything else."""
    head, sep, note = body.partition(b"\n\n")
    if not sep:
        raise BadRequest("the body needs an old size line, proof lines, a blank line and a note")
    lines = (head + b"\n").split(b"\n")[:-1]
    first = lines[0]
    if not first.startswith(b"old ") or _SIZE_RE.fullmatch(first[4:]) is None:
        raise BadRequest("the first line must be 'old <size>' in canonical decimal")
    old = int(first[4:])
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise BadRequest(f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof: list[bytes] = []
    for line in lines[1:]:
        try:
            h = base64.b64decode(line, validate=True)
        except ValueError as e:
            raise BadRequest("a consistency proof line is not base64") from e
        if len(h) != merkle.HASH_SIZE:
            raise BadRequest(f"a consistency proof hash is not {merkle.HASH_SIZE} bytes")
        proof.append(h)
    try:
        text, _ = split_note(note)
        cp = parse_checkpoint(text)
    except FormatError as e:
        raise BadRequest(f"the checkpoint note is malformed: {e.message}") from e
    if old > cp.size:
        raise BadRequest(f"old size {old} is larger than the checkpoint's size {cp.size}")
    return AddCheckpointRequest(old, tuple(proof), note, cp)


@dataclass(frozen=True)
class WitnessAnswer:
    """An add-checkpoint response exactly as tlog-witness prescribes it."""

    status: int
    body: bytes
    content_type: str = "text/plain"

    def response(self) -> web.Response:
        return web.Response(
            status=self.status, body=self.body, headers={"Content-Type": self.content_type}
        )


def _size_conflict(size: int) -> WitnessAnswer:
    return WitnessAnswer(409, b"%d\n" % size, SIZE_CONTENT_TYPE)


# -- the witness's state --------------------------------------------------------------------------


@dataclass(frozen=True)
class WitnessPeer:
    """A witness this node asks for cosignatures."""

    name: str
    vkey: str
    url: str

    @property
    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier.from_vkey(self.vkey)


@dataclass(frozen=True)
class QuorumPolicy:
    """``quorum`` valid cosignatures from ``witnesses`` are required of a mirror's checkpoints."""

    set_name: str
    quorum: int
    witnesses: tuple[CosignatureVerifier, ...]


@dataclass(frozen=True)
class _Verdict:
    answer: WitnessAnswer
    evidence: tuple[str, str, bytes | None] | None = None


class WitnessStore:
    """The witness tables on an open :class:`SqlStore`."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    # -- witnessed logs

    @shielded_write
    async def add_log(self, origin: str, vkey: str) -> None:
        """Witness the log ``origin`` signed by ``vkey`` (replacing its key keeps its state)."""
        verifier = Verifier.from_vkey(vkey)
        if verifier.name != origin:
            raise BadRequest(f"the vkey's name {verifier.name!r} is not the origin {origin!r}")
        now = timestamp()
        async with self.store._write_tx() as conn:
            await conn.execute(delete(witness_logs).where(witness_logs.c.origin == origin))
            await conn.execute(witness_logs.insert().values(origin=origin, vkey=vkey, created=now))
            exists = (
                await conn.execute(
                    select(witness_state.c.origin).where(witness_state.c.origin == origin)
                )
            ).first()
            if exists is None:
                await conn.execute(
                    witness_state.insert().values(
                        origin=origin, size=0, root=merkle.EMPTY_ROOT, note=None, updated=now
                    )
                )

    async def list_logs(self) -> list[dict[str, Any]]:
        query = (
            select(witness_logs.c.origin, witness_logs.c.vkey, witness_state.c.size)
            .join(witness_state, witness_state.c.origin == witness_logs.c.origin)
            .order_by(witness_logs.c.origin)
        )
        async with self.store._read.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [{"origin": r.origin, "vkey": r.vkey, "size": int(r.size)} for r in rows]

    async def latest(self, origin: str) -> bytes | None:
        """The latest note this witness cosigned for ``origin`` (its cosignature included)."""
        async with self.store._read.connect() as conn:
            note = (
                await conn.execute(
                    select(witness_state.c.note).where(witness_state.c.origin == origin)
                )
            ).scalar()
        return None if note is None else bytes(note)

    @shielded_write
    async def add_checkpoint(
        self, req: AddCheckpointRequest, signer: CosignatureSigner, now: int | None = None
    ) -> WitnessAnswer:
        """Answer one add-checkpoint request (tlog-witness), updating the state atomically."""
        origin = req.checkpoint.origin
        async with self.store._read.connect() as conn:
            vkey = (
                await conn.execute(
                    select(witness_logs.c.vkey).where(witness_logs.c.origin == origin)
                )
            ).scalar()
        if vkey is None:
            return WitnessAnswer(404, f"unknown log {origin}\n".encode())
        try:
            verify_checkpoint(req.note, Verifier.from_vkey(str(vkey)))
        except ProtocolError as e:
            return WitnessAnswer(403, f"no valid signature of {origin}: {e.message}\n".encode())
        stamp = int(time.time()) if now is None else now
        async with self.store._write_tx() as conn:
            query = select(witness_state).where(witness_state.c.origin == origin)
            if not self.store.is_sqlite:
                query = query.with_for_update()
            row = (await conn.execute(query)).one()
            verdict = self._judge(req, int(row.size), bytes(row.root), row.note, signer, stamp)
            if verdict.answer.status == 200 and req.checkpoint.size > int(row.size):
                # Store the note with our cosignature: it is what monitors fetch as our view.
                text, _ = split_note(req.note)
                cosigned = add_cosignatures(req.note, [signer.cosign(text, stamp)])
                await conn.execute(
                    update(witness_state)
                    .where(witness_state.c.origin == origin)
                    .values(
                        size=req.checkpoint.size,
                        root=req.checkpoint.root_hash,
                        note=cosigned,
                        updated=timestamp(),
                    )
                )
        if verdict.evidence is not None:
            # After the state transaction: on SQLite the single writer connection is free again.
            kind, detail, stored = verdict.evidence
            # one size with two roots: the two notes alone prove it; a rollback proves nothing
            path = () if kind == "fork" else None
            await self.store.add_evidence(origin, kind, detail, stored, req.note, path)
            log.error("%s (evidence kept, not cosigned)", detail)
        return verdict.answer

    @staticmethod
    def _judge(
        req: AddCheckpointRequest,
        size: int,
        root: bytes,
        stored: bytes | None,
        signer: CosignatureSigner,
        stamp: int,
    ) -> _Verdict:
        cp = req.checkpoint
        if cp.size < size:
            detail = f"rollback of {cp.origin}: size {cp.size} after a cosigned size {size}"
            return _Verdict(_size_conflict(size), ("rollback", detail, stored))
        if cp.size == size and cp.root_hash != root and size > 0:
            detail = f"fork of {cp.origin}: two roots for size {size}"
            return _Verdict(_size_conflict(size), ("fork", detail, stored))
        if req.old != size:
            return _Verdict(_size_conflict(size))
        if req.old == 0 and req.proof:
            return _Verdict(WitnessAnswer(422, b"the proof must be empty when old is 0\n"))
        if req.old > 0:
            try:
                verify_consistency_of(Checkpoint(cp.origin, size, root), cp, req.proof)
            except (ProofError, FormatError) as e:
                return _Verdict(WitnessAnswer(422, f"{e.message}\n".encode()))
        text, _ = split_note(req.note)
        return _Verdict(WitnessAnswer(200, signer.cosign(text, stamp).line()))

    # -- witnesses this node uses

    @shielded_write
    async def use(self, url: str, vkey: str) -> WitnessPeer:
        peer = WitnessPeer(CosignatureVerifier.from_vkey(vkey).name, vkey, url.rstrip("/"))
        async with self.store._write_tx() as conn:
            await conn.execute(delete(witness_peers).where(witness_peers.c.name == peer.name))
            await conn.execute(
                witness_peers.insert().values(
                    name=peer.name, vkey=peer.vkey, url=peer.url, created=timestamp()
                )
            )
        return peer

    async def peers(self) -> list[WitnessPeer]:
        async with self.store._read.connect() as conn:
            rows = (await conn.execute(select(witness_peers).order_by(witness_peers.c.name))).all()
        return [WitnessPeer(str(r.name), str(r.vkey), str(r.url)) for r in rows]

    # -- subscriber quorums

    @shielded_write
    async def require(self, set_name: str, vkeys: Sequence[str], quorum: int) -> QuorumPolicy:
        """Require ``quorum`` of these witnesses for mirror ``set_name`` (``*``: every mirror)."""
        verifiers = tuple(CosignatureVerifier.from_vkey(v) for v in vkeys)
        if len({v.name for v in verifiers}) != len(verifiers):
            raise BadRequest("two witness vkeys share a name", field="witness")
        if not 0 <= quorum <= len(verifiers):
            raise BadRequest(
                f"quorum must be between 0 and the {len(verifiers)} witnesses named",
                field="quorum",
            )
        async with self.store._write_tx() as conn:
            await conn.execute(
                delete(witness_quorums).where(witness_quorums.c.set_name == set_name)
            )
            if verifiers:
                await conn.execute(
                    witness_quorums.insert().values(
                        set_name=set_name,
                        quorum=quorum,
                        vkeys="\n".join(v.vkey() for v in verifiers),
                        created=timestamp(),
                    )
                )
        return QuorumPolicy(set_name, quorum, verifiers)

    async def policy_for(self, set_name: str) -> QuorumPolicy | None:
        """The mirror's own policy, else the one for every mirror, else None."""
        async with self.store._read.connect() as conn:
            rows = (
                await conn.execute(
                    select(witness_quorums).where(
                        witness_quorums.c.set_name.in_([set_name, ALL_MIRRORS])
                    )
                )
            ).all()
        by_name = {str(r.set_name): r for r in rows}
        row = by_name.get(set_name) or by_name.get(ALL_MIRRORS)
        if row is None:
            return None
        verifiers = tuple(CosignatureVerifier.from_vkey(v) for v in str(row.vkeys).split("\n"))
        return QuorumPolicy(str(row.set_name), int(row.quorum), verifiers)


# -- HTTP: the witness side -----------------------------------------------------------------------


@dataclass
class _WitnessContext:
    store: SqlStore
    data_dir: Path
    signer: CosignatureSigner | None = None

    def key(self) -> CosignatureSigner | None:
        # Read at the first request, so that `hashfed witness init` on a running node takes
        # effect without a restart.
        if self.signer is None:
            self.signer = load_witness_signer(self.data_dir)
        return self.signer


_WITNESS: Final = web.AppKey("hashfed_witness", _WitnessContext)


async def _add_checkpoint(request: web.Request) -> web.Response:
    ctx = request.app[_WITNESS]
    signer = ctx.key()
    if signer is None:
        return WitnessAnswer(404, b"this node is not a witness\n").response()
    if request.content_length is not None and request.content_length > MAX_REQUEST:
        return WitnessAnswer(400, b"request body too large\n").response()
    body = await request.content.read(MAX_REQUEST + 1)
    if len(body) > MAX_REQUEST:
        return WitnessAnswer(400, b"request body too large\n").response()
    try:
        req = parse_add_checkpoint(body)
    except BadRequest as e:
        return WitnessAnswer(400, f"{e}\n".encode()).response()
    answer = await WitnessStore(ctx.store).add_checkpoint(req, signer)
    return answer.response()


async def _latest(request: web.Request) -> web.Response:
    """``GET /witness/checkpoint?origin=O``: the latest cosigned note (monitoring; not in the
    C2SP spec yet, which leaves monitor retrieval open)."""
    ctx = request.app[_WITNESS]
    origin = request.query.get("origin", "")
    note = await WitnessStore(ctx.store).latest(origin) if ctx.key() is not None else None
    if note is None:
        return WitnessAnswer(404, f"no cosigned checkpoint of {origin}\n".encode()).response()
    return web.Response(body=note, headers={"Content-Type": "text/plain; charset=utf-8"})


def add_witness_routes(app: web.Application, store: SqlStore, data_dir: Path) -> None:
    """Serve the witness endpoints (404 until DIR/witness.key exists)."""
    app[_WITNESS] = _WitnessContext(store, data_dir)
    app.router.add_post("/add-checkpoint", _add_checkpoint)
    app.router.add_get("/witness/checkpoint", _latest)


def witness_app(store: SqlStore, data_dir: Path) -> web.Application:
    """A standalone witness: only the witness endpoints, over the node database."""
    app = web.Application(client_max_size=MAX_REQUEST)
    add_witness_routes(app, store, data_dir)
    return app


async def serve_witness(
    cfg: NodeConfig, listen: str, *, ready: asyncio.Event | None = None
) -> None:
    """Run a standalone witness on ``listen`` until cancelled."""
    from node.config import parse_listen

    if load_witness_signer(cfg.data_dir) is None:
        raise SetupError(f"{cfg.data_dir} has no {WITNESS_KEY_FILE}: run 'hashfed witness init'")
    host, port = parse_listen(listen)
    store = await SqlStore.open(cfg.database_url)
    runner = web.AppRunner(witness_app(store, cfg.data_dir), access_log=None)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        log.info("hashfed witness serving at %s:%d", host, port)
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await store.close()


# -- HTTP: the client side ------------------------------------------------------------------------


async def _read(resp: aiohttp.ClientResponse) -> bytes:
    data = await resp.content.read(MAX_ANSWER + 1)
    if len(data) > MAX_ANSWER:
        raise NodeError(f"witness answer from {resp.url} is larger than {MAX_ANSWER} bytes")
    return data


async def submit_checkpoint(
    session: aiohttp.ClientSession, url: str, req: AddCheckpointRequest
) -> tuple[int, bytes]:
    """POST ``req`` to a witness's add-checkpoint; (status, body). Transport errors raise."""
    async with session.post(f"{url}/add-checkpoint", data=req.body()) as resp:
        return resp.status, await _read(resp)


async def _fetch_latest(session: aiohttp.ClientSession, url: str, origin: str) -> bytes | None:
    async with session.get(f"{url}/witness/checkpoint?origin={quote(origin, safe='')}") as resp:
        body = await _read(resp)
        return body if resp.status == 200 else None


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WITNESS_TIMEOUT))


def _cosignatures_in(body: bytes, text: bytes, witness: CosignatureVerifier) -> list[NoteSignature]:
    """The valid cosignatures of ``text`` by ``witness`` among signature lines ``body``."""
    try:
        _, sigs = split_note(text + b"\n" + body)
    except FormatError:
        return []
    valid = []
    for sig, _ in sigs:
        with contextlib.suppress(SignatureError, FormatError):
            witness.verify_cosignature(text, sig)
            valid.append(sig)
    return valid


class CosignatureCollector:
    """Sends each new checkpoint of this node to its witnesses and stores what comes back.

    One background task per checkpoint; per (witness, origin) the last size the witness reported
    is remembered, so that the next request carries the right old size and consistency proof.
    A witness that does not answer (network error, timeout, 5xx, 429) is asked again with
    backoff, for as long as this checkpoint is the set's latest: a set that gets no more writes
    must still end up cosigned once the witness is back. A refusal is final for that checkpoint.
    """

    def __init__(self, service: Any) -> None:
        # NodeService (not imported: node.service must not depend on this module's imports)
        self.service = service
        self._known: dict[tuple[str, str], int] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[int]] = set()
        self._closed = False

    def checkpoint_signed(self, set_name: str, note: bytes) -> None:
        if self._closed:
            return
        task = asyncio.create_task(self.collect(set_name, note))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self, _app: web.Application | None = None) -> None:
        """Submit every own checkpoint again; :meth:`collect` asks only the witnesses whose
        cosignature it lacks.

        The node signs at start-up what a crash left uncovered before this collector exists, and
        a crash or stop may have cut a collection short; without this, such a checkpoint would
        wait for the set's next write to be cosigned.
        """
        store: SqlStore = self.service.store
        if not await WitnessStore(store).peers():
            return
        for info in await store.list_sets(kind="local"):
            if info.checkpoint is not None:
                self.checkpoint_signed(info.name, bytes(info.checkpoint))

    async def close(self, _app: web.Application | None = None) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def collect(self, set_name: str, note: bytes) -> int:
        """Ask every witness to cosign ``note`` until each answered or the note is superseded;
        store the valid cosignatures as they come; how many were stored."""
        store: SqlStore = self.service.store
        peers = await WitnessStore(store).peers()
        if not peers:
            return 0
        try:
            text, _ = split_note(note)
            cp = parse_checkpoint(text)
            info = await store.get_set(set_name)
        except (ProtocolError, NodeError):
            log.exception("cannot submit the checkpoint of %s to witnesses", set_name)
            return 0
        verifiers = [p.verifier for p in peers]
        with contextlib.suppress(ProtocolError):  # a note this node signed parses
            have = cosignatures(note, verifiers)
            peers = [p for p, v in zip(peers, verifiers, strict=True) if v.name not in have]
        backoff = Backoff(WITNESS_RETRY_BASE, WITNESS_RETRY_CAP)
        stored = 0
        while peers:
            async with _session() as session:
                found = await asyncio.gather(
                    *(self._one(session, peer, info, note, cp) for peer in peers)
                )
            sigs = [s for group in found if group is not None for s in group]
            if sigs:
                if not await store_cosignatures(store, set_name, text, sigs):
                    break  # a later checkpoint replaced this one; its own task asks for it
                stored += len(sigs)
            peers = [p for p, group in zip(peers, found, strict=True) if group is None]
            if not peers:
                break
            delay = backoff.next_delay()
            log.info(
                "asking %d witness(es) again for %s size %d in %.1f s",
                len(peers), cp.origin, cp.size, delay,
            )
            await asyncio.sleep(delay)
            if not await self._is_latest(set_name, text):
                break
        return stored

    async def _is_latest(self, set_name: str, text: bytes) -> bool:
        try:
            info = await self.service.store.get_set(set_name)
        except NotFound:
            return False
        return info.checkpoint is not None and split_note(bytes(info.checkpoint))[0] == text

    async def _one(
        self,
        session: aiohttp.ClientSession,
        peer: WitnessPeer,
        info: SetInfo,
        note: bytes,
        cp: Checkpoint,
    ) -> list[NoteSignature] | None:
        """The witness's valid cosignatures ([] if it refused), or None if it did not answer."""
        key = (peer.name, cp.origin)
        lock = self._locks.setdefault(key, asyncio.Lock())
        text, _ = split_note(note)
        try:
            async with lock:
                for _attempt in range(2):
                    old = self._known.get(key, 0)
                    if old > cp.size:
                        return []  # the witness has seen a newer checkpoint already
                    proof = (
                        await self.service.consistency_proof(info, old, cp.size)
                        if 0 < old < cp.size
                        else []
                    )
                    req = AddCheckpointRequest(old, tuple(proof), note, cp)
                    status, body = await submit_checkpoint(session, peer.url, req)
                    if status == 200:
                        self._known[key] = cp.size
                        return _cosignatures_in(body, text, peer.verifier)
                    if status == 409 and _SIZE_RE.fullmatch(body.rstrip(b"\n")):
                        self._known[key] = int(body.rstrip(b"\n"))
                        continue
                    log.warning(
                        "witness %s refused %s size %d: %d %s",
                        peer.name, cp.origin, cp.size, status, body[:200].decode(errors="replace"),
                    )
                    return None if status >= 500 or status == 429 else []
        except (aiohttp.ClientError, TimeoutError) as e:
            log.warning("witness %s at %s: %s", peer.name, peer.url, e or type(e).__name__)
            return None
        except (NodeError, ProtocolError) as e:
            log.warning("witness %s at %s: %s", peer.name, peer.url, e)
        return []


@shielded_write
async def store_cosignatures(
    store: SqlStore, set_name: str, text: bytes, sigs: Sequence[NoteSignature]
) -> bool:
    """Merge ``sigs`` into the set's current checkpoint if it is still the note of ``text``.

    Compare-and-swap on the text: a later checkpoint may have been signed meanwhile, and its note
    must not get the cosignatures of an older tree. Updates ``checkpoints`` too, so the note kept
    for that size is the one served.
    """
    async with store._write_tx() as conn:
        row = await store._lock_set(conn, set_name)
        if row.checkpoint is None or split_note(bytes(row.checkpoint))[0] != text:
            return False
        merged = add_cosignatures(bytes(row.checkpoint), list(sigs))
        await conn.execute(update(sets).where(sets.c.id == row.id).values(checkpoint=merged))
        await conn.execute(
            update(checkpoints)
            .where(checkpoints.c.set_id == row.id, checkpoints.c.size == int(row.checkpoint_size))
            .values(note=merged)
        )
    return True


# -- the subscriber side --------------------------------------------------------------------------


async def verify_mirror_checkpoint(
    store: SqlStore, info: SetInfo, note: bytes, log_key: Verifier
) -> Checkpoint:
    """Sync's checkpoint check: the log's signature and, if required, the witness quorum.

    A checkpoint that misses the quorum is shown to the required witnesses that the node also
    uses (``witness use``): the witness stores fork evidence if it cosigned another root for the
    size, and its own cosigned note is compared here; two validly signed roots for one size raise
    InconsistentTreeError with both notes (also kept in ``evidence``). SignatureError otherwise.
    """
    policy = await WitnessStore(store).policy_for(info.name)
    if policy is None or policy.quorum == 0:
        return verify_checkpoint(note, log_key)
    try:
        return verify_checkpoint(note, log_key, witnesses=policy.witnesses, quorum=policy.quorum)
    except SignatureError:
        cp = verify_checkpoint(note, log_key)  # a bad log signature is the simpler error
        await _cross_check(store, policy, note, cp, log_key)
        raise


async def _cross_check(
    store: SqlStore, policy: QuorumPolicy, note: bytes, cp: Checkpoint, log_key: Verifier
) -> None:
    names = {w.name for w in policy.witnesses}
    peers = [p for p in await WitnessStore(store).peers() if p.name in names]
    if not peers:
        return
    async with _session() as session:
        for peer in peers:
            try:
                # Gossip: old = size, no proof. A witness at this size with another root keeps
                # the fork as evidence; one at the same root cosigns (ignored here: the log
                # should have collected it); anything else is a 409 that says nothing.
                req = AddCheckpointRequest(cp.size, (), note, cp)
                await submit_checkpoint(session, peer.url, req)
                theirs = await _fetch_latest(session, peer.url, cp.origin)
            except (aiohttp.ClientError, TimeoutError, NodeError) as e:
                log.warning("witness %s at %s: %s", peer.name, peer.url, e)
                continue
            if theirs is None:
                continue
            try:
                check_fork(theirs, note, log_key)
            except InconsistentTreeError as e:
                detail = f"split view of {cp.origin}: witness {peer.name} cosigned another root"
                await store.add_evidence(cp.origin, "fork", f"{detail}: {e.message}", theirs, note,
                                         e.path)
                raise InconsistentTreeError(
                    f"{detail} for size {cp.size}", evidence=(theirs, note)
                ) from e
            except ProtocolError:
                continue


async def witness_evidence(store: SqlStore) -> list[dict[str, Any]]:
    """Every evidence row (the witness's and the sync client's alike)."""
    return await store.list_evidence()


def require_witness_key(cfg: NodeConfig) -> CosignatureSigner:
    signer = load_witness_signer(cfg.data_dir)
    if signer is None:
        raise NotFound(f"{cfg.data_dir} has no {WITNESS_KEY_FILE}: run 'hashfed witness init'")
    return signer


def install_witness(app: web.Application, service: Any) -> CosignatureCollector:
    """Make a node app a witness too and have it collect cosignatures on its own checkpoints.

    Chains with the sequencer hook already in place (call after the metrics and push hooks).
    """
    add_witness_routes(app, service.store, service.cfg.data_dir)
    collector = CosignatureCollector(service)
    sequencer = service.sequencer
    previous = sequencer.on_checkpoint

    def on_checkpoint(set_name: str, note: bytes) -> None:
        if previous is not None:
            previous(set_name, note)
        collector.checkpoint_signed(set_name, note)

    sequencer.on_checkpoint = on_checkpoint
    app.on_startup.append(collector.start)
    app.on_shutdown.append(collector.close)
    return collector
