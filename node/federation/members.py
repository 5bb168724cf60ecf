"""Who the node's partners are now: trusted coordinators' membership logs plus pinned partners.

:class:`Federation` (one per node process) answers the questions the server and the sync client
ask about a partner: which authorised member does this request key belong to
(:meth:`Federation.caller_for`), and which key verifies a partner's node or one of its logs
(:meth:`Federation.node_verifier`, :meth:`Federation.set_verifier`).

Sources, in the order they are asked:

1. this node's own local set ``members`` (a node with one is a coordinator; its records are
   authored by this node's org);
2. for every trust row of kind ``coordinator``, the mirror set ``<coordinator org>:members`` that
   the sync client keeps up to date (an absent mirror is an empty membership);
3. trust rows of kind ``partner``: a pinned partner, treated as an authorised member with roles
   publisher + subscriber and its one pinned vkey. An organisation that any trusted coordinator
   knows (in whatever status) is decided by that coordinator alone: pinning cannot revive a
   partner its coordinator suspended or removed.

Each membership log is folded with :func:`protocol.membership.fold_membership` rules, cached, and
refolded incrementally when the set's size grew. A log that breaks a rule fails closed: that
coordinator then vouches for nobody (logged), rather than for the members of a suspect prefix.

:class:`Coordinator` is the write side on a coordinator node: it validates a new membership
record by applying it to the folded log before appending it through the sequencer.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from node.errors import BadRequest, NotFound
from node.storage import AppendResult, PreparedRecord
from node.storage.federation import FederationStore, TrustAnchor
from node.storage.sql import SqlStore
from protocol.errors import FormatError, ProtocolError
from protocol.membership import Member, MembershipState
from protocol.note import Verifier
from protocol.records import (
    Membership,
    decode_record,
    new_nonce,
    new_record_id,
    record_from_dict,
    timestamp,
)

if TYPE_CHECKING:  # the service imports the sequencer; members.py is imported by the server
    from node.service import NodeService

__all__ = [
    "MEMBERS_SET",
    "PINNED_ROLES",
    "Coordinator",
    "Federation",
    "PartnerIdentity",
    "members_mirror_name",
]

log = logging.getLogger("hashfed.federation")

#: the local set a coordinator keeps its membership records in
MEMBERS_SET = "members"
PINNED_ROLES = ("publisher", "subscriber")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_READ_BATCH = 1000


def members_mirror_name(coordinator_org: str) -> str:
    """The mirror set holding a trusted coordinator's ``members`` log."""
    return f"{coordinator_org}:{MEMBERS_SET}"


@dataclass(frozen=True)
class PartnerIdentity:
    """An authorised partner, as a request's signature identified it."""

    org: str
    name: str
    node_url: str
    roles: tuple[str, ...]
    #: "coordinator:<org>" (whose membership log vouches for it) or "pinned"
    source: str
    member: Member


@dataclass
class _Folded:
    """One membership log read up to ``size``: the state after its longest valid prefix, and
    why the next record was refused (then the log vouches for nobody; see the module doc)."""

    set_id: int
    size: int
    state: MembershipState
    error: str | None = None


@dataclass(frozen=True)
class _View:
    states: tuple[tuple[str, MembershipState], ...]  # (source, state), in the order asked
    pinned: tuple[Member, ...]
    #: organisations that a coordinator with a broken log knew: nobody else may vouch for them
    vetoed: frozenset[str] = frozenset()

    def known_to_coordinator(self, org: str) -> bool:
        return org in self.vetoed or any(state.member(org) is not None for _, state in self.states)


def pinned_member(anchor: TrustAnchor) -> Member:
    """A pinned partner row as a Member: active, no end, publisher + subscriber."""
    return Member(
        org=anchor.org,
        name=anchor.org,
        node_url=anchor.url,
        vkeys=(anchor.vkey,),
        roles=PINNED_ROLES,
        valid_from=_EPOCH,
        valid_until=None,
        status="active",
    )


async def fold_log(
    store: SqlStore, set_id: int, coordinator: str, start: int, size: int,
    state: MembershipState, *, progress: Callable[[MembershipState], None] | None = None,
) -> MembershipState:
    """``state`` after the membership records at ``start .. size-1`` of a stored log.

    Records of other types are skipped (a members log may carry none, but folding only needs the
    membership ones); a record that does not decode is a FormatError naming its index.
    """
    index = start
    while index < size:
        batch = await store.read_entries(set_id, index, min(_READ_BATCH, size - index))
        if not batch:
            raise FormatError(f"membership log ends at {index}, before its size {size}")
        for data in batch:
            try:
                record = decode_record(data)
            except FormatError as e:
                raise FormatError(f"membership record {index}: {e.message}") from e
            if isinstance(record, Membership):
                state = state.apply(record, index)
                if progress is not None:
                    progress(state)  # the caller keeps the valid prefix if a later one fails
            index += 1
    return state


class Federation:
    """Cached membership of every trusted coordinator, plus pinned partners (one per process).

    Every public method refreshes first: one query for the trust rows and one for the
    membership logs' sizes; only when either changed, a fold of the records added since (under
    a lock, see ``_view``).
    """

    def __init__(
        self, store: SqlStore, org: str, *, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.store = store
        self.fed_store = FederationStore(store)
        self.org = org
        self._clock = clock or (lambda: datetime.now(UTC))
        self._folded: dict[tuple[str, str], _Folded] = {}
        self._partial: dict[tuple[str, str], MembershipState] = {}
        self._lock = asyncio.Lock()
        #: the last view, keyed by the trust rows and the membership logs' (id, size) it saw
        self._cached: tuple[tuple[Any, ...], _View] | None = None

    def now(self) -> datetime:
        return self._clock()

    async def _fold(self, name: str, kind: str, coordinator: str) -> _Folded | None:
        try:
            info = await self.store.get_set(name, kind=kind)
        except NotFound:
            self._folded.pop((name, kind), None)
            return None
        cached = self._folded.get((name, kind))
        if cached is not None and cached.set_id == info.id:
            if cached.size == info.size or cached.error is not None:
                # append-only: a log that broke a rule stays broken whatever follows
                return cached
            start, state = cached.size, cached.state
        else:
            start, state = 0, MembershipState(coordinator)
        error = None
        try:
            state = await fold_log(self.store, info.id, coordinator, start, info.size, state,
                                   progress=lambda s: self._keep(name, kind, s))
        except ProtocolError as e:
            error = e.message
            state = self._partial.pop((name, kind), state)
            log.error("membership log %s of %s breaks a rule; trusting none of its members: %s",
                      name, coordinator, e.message)
        self._partial.pop((name, kind), None)
        folded = self._folded[(name, kind)] = _Folded(info.id, info.size, state, error)
        return folded

    def _keep(self, name: str, kind: str, state: MembershipState) -> None:
        self._partial[(name, kind)] = state

    async def _view(self) -> _View:
        """The current view: the cached one if neither the trust rows nor any membership log
        changed since it was built, else a new one (under the lock: folds are incremental).

        The check is two reads on the read pool and takes no lock, so concurrent signed
        requests no longer queue behind each other here (each held the lock for three queries:
        ~41 ms per request with eight in flight against a busy node).
        """
        anchors = tuple(await self.fed_store.list_trust())
        logs = [(MEMBERS_SET, "local")] + [
            (members_mirror_name(a.org), "mirror")
            for a in anchors
            if a.kind == "coordinator" and a.org != self.org
        ]
        key = (anchors, await self.store.set_sizes(logs))
        cached = self._cached
        if cached is not None and cached[0] == key:
            return cached[1]
        async with self._lock:
            cached = self._cached
            if cached is not None and cached[0] == key:  # built meanwhile by another caller
                return cached[1]
            view = await self._build_view(anchors)
            # Keyed by what was read before the build: if anything changed in between, the view
            # is newer than the key, and the next call, reading the newer state, builds again.
            self._cached = (key, view)
            return view

    async def _build_view(self, anchors: Sequence[TrustAnchor]) -> _View:
        """Fold what changed and assemble the view for these trust rows (the caller holds the
        lock)."""
        logs = [(f"coordinator:{self.org}", await self._fold(MEMBERS_SET, "local", self.org))]
        for a in anchors:
            if a.kind == "coordinator" and a.org != self.org:
                folded = await self._fold(members_mirror_name(a.org), "mirror", a.org)
                logs.append((f"coordinator:{a.org}", folded))
        states = tuple((src, f.state) for src, f in logs if f is not None and not f.error)
        vetoed = frozenset(
            org for _, f in logs if f is not None and f.error for org in f.state.members
        )
        pinned = tuple(pinned_member(a) for a in anchors if a.kind == "partner")
        return _View(states, pinned, vetoed)

    async def problems(self) -> dict[str, str]:
        """Membership logs that broke a rule (set name -> why): their coordinators vouch for
        nobody until fixed."""
        await self._view()
        return {name: f.error for (name, _), f in self._folded.items() if f.error is not None}

    async def caller_for(self, key_name: str, key_id: bytes) -> PartnerIdentity | None:
        """The authorised member whose current vkeys hold this (name, key ID), or None.

        Retired keys, suspended, removed or expired members, and unknown keys give None.
        """
        view = await self._view()
        at = self.now()
        for source, state in view.states:
            member = state.member_for_key(key_name, key_id, at)
            if member is not None:
                return _identity(member, source)
        for member in view.pinned:
            if member.verifier_for(key_name, key_id) is None:
                continue
            if view.known_to_coordinator(member.org) or not member.is_authorised(at):
                return None
            return _identity(member, "pinned")
        return None

    async def _authorised(self, org: str) -> Member | None:
        view = await self._view()
        at = self.now()
        for _, state in view.states:
            if state.member(org) is not None:
                return state.authorised(org, at)
        for member in view.pinned:
            if member.org == org:
                return member if member.is_authorised(at) else None
        return None

    async def node_verifier(self, org: str) -> Verifier | None:
        """The node key of an authorised partner (its first current vkey), or None."""
        member = await self._authorised(org)
        return None if member is None or not member.vkeys else Verifier.from_vkey(member.vkeys[0])

    async def set_verifier(self, origin: str) -> Verifier | None:
        """The key that signs a partner's log ``origin`` (``<node origin>/<set>``), or None.

        The partner is the authorised member with a current vkey named after the origin's part
        before its last "/"; the log key is that same public key under the name ``origin``.
        """
        prefix, slash, rest = origin.rpartition("/")
        if not slash or not prefix or not rest:
            return None
        view = await self._view()
        at = self.now()
        candidates = [m for _, s in view.states for m in s.members.values()]
        candidates += [m for m in view.pinned if not view.known_to_coordinator(m.org)]
        for member in candidates:
            if not member.is_authorised(at):
                continue
            for vkey in member.vkeys:
                v = Verifier.from_vkey(vkey)
                if v.name == prefix:
                    return Verifier.from_public_key(origin, v.public_key)
        return None

    async def members(self) -> list[Member]:
        """Every member any source describes, whatever its status (first source wins)."""
        view = await self._view()
        out: dict[str, Member] = {}
        for _, state in view.states:
            for org, member in state.members.items():
                out.setdefault(org, member)
        for member in view.pinned:
            out.setdefault(member.org, member)
        return list(out.values())


def _identity(member: Member, source: str) -> PartnerIdentity:
    return PartnerIdentity(
        org=member.org, name=member.name, node_url=member.node_url, roles=member.roles,
        source=source, member=member,
    )


# -- the coordinator's write side -------------------------------------------------------------

_LOCKS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()

_BODY_KEYS = frozenset(
    {"action", "member", "name", "node_url", "vkeys", "roles", "valid_from", "valid_until",
     "reason"}
)


class Coordinator:
    """Appends membership records to this node's ``members`` set, each checked first.

    A record is applied to the fold of the whole existing log before it is appended; a record the
    fold refuses (rotating an org never admitted, reusing a retired key, anything after a removal)
    is never stored. One lock per service serialises check-then-append within a process; the CLI
    goes through a running server's ``POST /v1/members``, so one process appends.
    """

    def __init__(self, service: NodeService) -> None:
        self.service = service

    def _lock(self) -> asyncio.Lock:
        lock = _LOCKS.get(self.service)
        if lock is None:
            lock = _LOCKS[self.service] = asyncio.Lock()
        return lock

    async def state(self) -> MembershipState:
        """The fold of the whole local ``members`` log (empty if the set does not exist)."""
        store = self.service.store
        try:
            info = await store.get_set(MEMBERS_SET)
        except NotFound:
            return MembershipState(self.service.cfg.org)
        return await fold_log(store, info.id, self.service.cfg.org, 0, info.size,
                              MembershipState(self.service.cfg.org))

    async def apply(
        self,
        action: str,
        member: str,
        *,
        name: str | None = None,
        node_url: str | None = None,
        vkeys: Sequence[str] = (),
        roles: Sequence[str] = (),
        valid_from: str | None = None,
        valid_until: str | None = None,
        reason: str | None = None,
    ) -> tuple[AppendResult, Member]:
        """Append one membership record; the member as it is afterwards.

        FormatError for a malformed record, VerificationError for one the log's rules refuse.
        ``admit`` defaults ``valid_from`` to now and ``roles`` to publisher + subscriber.
        """
        raw: dict[str, Any] = {
            "type": "membership",
            "id": new_record_id(),
            "author": self.service.cfg.org,
            "created": timestamp(),
            "nonce": new_nonce(),
            "action": action,
            "member": member,
        }
        if action == "admit":
            raw["valid_from"] = valid_from or raw["created"]
            raw["roles"] = list(roles or PINNED_ROLES)
        else:
            # Passed through so that the fold refuses them by name (rule 7), not ignored.
            if valid_from is not None:
                raw["valid_from"] = valid_from
            if roles:
                raw["roles"] = list(roles)
        optional = {"name": name, "node_url": node_url, "valid_until": valid_until,
                    "reason": reason}
        raw.update({k: v for k, v in optional.items() if v is not None})
        if vkeys:
            raw["vkeys"] = list(vkeys)
        record = record_from_dict(raw)
        assert isinstance(record, Membership)
        async with self._lock():
            store = self.service.store
            try:
                info = await store.get_set(MEMBERS_SET)
            except NotFound:
                info = await self.service.create_set(
                    MEMBERS_SET, "green", "membership records of this coordinator"
                )
            state = await fold_log(store, info.id, self.service.cfg.org, 0, info.size,
                                   MembershipState(self.service.cfg.org))
            after = state.apply(record, info.size)  # raises before anything is stored
            (result,) = await self.service.sequencer.append(
                MEMBERS_SET, [PreparedRecord.of(record)]
            )
        new = after.member(member)
        assert new is not None
        return result, new

    async def apply_json(self, body: Mapping[str, Any]) -> tuple[AppendResult, Member]:
        """:meth:`apply` from a ``POST /v1/members`` body (BadRequest on wrong shapes)."""
        unknown = sorted(set(body) - _BODY_KEYS)
        if unknown:
            raise BadRequest(f"unknown field {unknown[0]!r}", field=unknown[0])
        for key in ("action", "member"):
            if not isinstance(body.get(key), str):
                raise BadRequest(f"{key} is required (a string)", field=key)
        for key in ("name", "node_url", "valid_from", "valid_until", "reason"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise BadRequest(f"{key} must be a string", field=key)
        for key in ("vkeys", "roles"):
            value = body.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise BadRequest(f"{key} must be a list of strings", field=key)
        return await self.apply(
            body["action"], body["member"], name=body.get("name"),
            node_url=body.get("node_url"), vkeys=body.get("vkeys", []),
            roles=body.get("roles", []), valid_from=body.get("valid_from"),
            valid_until=body.get("valid_until"), reason=body.get("reason"),
        )


def member_json(member: Member) -> dict[str, Any]:
    """A member as JSON (CLI output and the ``POST /v1/members`` answer)."""
    return {
        "org": member.org,
        "name": member.name,
        "node_url": member.node_url,
        "status": member.status,
        "roles": list(member.roles),
        "vkeys": list(member.vkeys),
        "retired_vkeys": list(member.retired_vkeys),
        "valid_from": timestamp(member.valid_from.timestamp()),
        "valid_until": (
            None if member.valid_until is None else timestamp(member.valid_until.timestamp())
        ),
    }
