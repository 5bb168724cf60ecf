"""Folding a coordinator's membership records into who is a partner now, and with which keys.

A coordinator publishes ``membership`` records in its ``members`` set; every node that trusts the
coordinator folds them, in log order, into a :class:`MembershipState` with :func:`fold_membership`
(or one at a time with :meth:`MembershipState.apply`). The state answers the two questions a node
asks on every federation request: is this organisation a partner at this time
(:meth:`MembershipState.authorised`), and which partner does this signing key belong to
(:meth:`MembershipState.member_for_key`).

Rules (each violation refuses the record and so the whole fold, naming the record's leaf index):

1. Only records whose ``author`` is the coordinator count; any other author is a
   VerificationError. Folding does not skip records, since a log that carries a forged one is
   itself suspect.
2. ``admit`` of an organisation never seen before creates it, ``active``, with the record's name,
   node URL, vkeys, roles and validity (no ``valid_until``: no end).
3. ``admit`` of an organisation that is present and not removed is a **re-admission**: it replaces
   all of those details and sets the status to ``active``, lifting a suspension. Vkeys the member
   held and the new record does not list again are retired (rule 8).
4. ``rotate`` replaces the member's vkeys with the record's; keys not listed again are retired. It
   changes nothing else, and applies to an active or suspended member.
5. ``suspend`` sets the status to ``suspended`` (a later ``admit`` lifts it); suspending a
   suspended member changes nothing. ``remove`` sets ``removed``, and removal is final: any later
   record about that organisation, ``admit`` included, is a VerificationError.
6. ``rotate``, ``suspend`` or ``remove`` of an organisation that was never admitted is a
   VerificationError.
7. A record carries only the details its action uses: ``rotate`` only ``vkeys`` (and ``reason``);
   ``suspend`` and ``remove`` only ``reason``. Anything else is a FormatError rather than being
   silently ignored, since a reader could otherwise believe e.g. a ``valid_until`` took effect.
8. Every vkey must parse with :meth:`protocol.note.Verifier.from_vkey` (FormatError), and a record
   must not list one twice. A key belongs to one organisation forever: a vkey with the same key
   name and key ID, or with the same public key, as one that another organisation holds or ever
   held is refused (VerificationError). A retired key (same vkey or same public key) never becomes
   current again, for its own organisation either: a key is rotated away because it may be
   compromised.
9. A member is **authorised** at time ``t`` exactly when its status is ``active`` and
   ``valid_from <= t < valid_until``. The status is the one after the last record folded; ``t``
   only selects the validity window, it does not replay history.
10. :meth:`MembershipState.member_for_key` finds a member only by a *current* vkey: retired keys,
    suspended or removed members and times outside the validity window give ``None``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from protocol.errors import FormatError, ProtocolError, VerificationError
from protocol.grammar import parse_timestamp
from protocol.note import Verifier

if TYPE_CHECKING:
    from protocol.records import Membership

__all__ = [
    "Member",
    "MemberStatus",
    "MembershipState",
    "fold_membership",
]

MemberStatus = Literal["active", "suspended", "removed"]
_STATUSES = frozenset({"active", "suspended", "removed"})

#: the record fields each action may carry besides ``member`` and ``reason`` (rule 7)
_DETAILS = ("name", "node_url", "vkeys", "roles", "valid_from", "valid_until")
_ALLOWED: Mapping[str, frozenset[str]] = {
    "admit": frozenset(_DETAILS),
    "rotate": frozenset({"vkeys"}),
    "suspend": frozenset(),
    "remove": frozenset(),
}


@functools.lru_cache(maxsize=4096)
def _key(vkey: str) -> tuple[str, bytes, bytes]:
    """(key name, key ID, public key) of a vkey; FormatError if it is not an Ed25519 vkey.

    Cached: the state re-indexes every key on each record, and parsing is the costly part.
    """
    v = Verifier.from_vkey(vkey)
    return v.name, v.key_id, v.public_key


def _check_time(at: object, field_name: str) -> datetime:
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise FormatError("expected a timezone-aware datetime", field=field_name)
    return at


def _str_tuple(value: object, field_name: str) -> tuple[str, ...]:
    if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
        raise FormatError("expected a tuple of strings", field=field_name)
    return value


@dataclass(frozen=True)
class Member:
    """One organisation as the coordinator's records describe it now."""

    org: str
    name: str
    node_url: str
    #: the current signed-note verifier keys (``name+keyid+base64``)
    vkeys: tuple[str, ...]
    roles: tuple[str, ...]
    valid_from: datetime
    valid_until: datetime | None
    status: MemberStatus
    #: every vkey rotated away, in the order it was retired; refused from then on
    retired_vkeys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("org", "name", "node_url"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise FormatError(f"{name} must be a non-empty string", field=name)
        _str_tuple(self.roles, "roles")
        for name in ("vkeys", "retired_vkeys"):
            for i, vkey in enumerate(_str_tuple(getattr(self, name), name)):
                try:
                    _key(vkey)
                except FormatError as e:
                    raise FormatError(
                        f"{name}[{i}] is not an Ed25519 vkey: {e.message}", field=f"{name}[{i}]"
                    ) from e
        if set(self.vkeys) & set(self.retired_vkeys):
            raise FormatError("a vkey cannot be both current and retired", field="vkeys")
        _check_time(self.valid_from, "valid_from")
        if self.valid_until is not None and _check_time(self.valid_until, "valid_until") <= (
            self.valid_from
        ):
            raise FormatError("valid_until must be after valid_from", field="valid_until")
        if self.status not in _STATUSES:
            raise FormatError(f"unknown member status {self.status!r}", field="status")

    def is_authorised(self, at: datetime) -> bool:
        """Active, and ``valid_from <= at < valid_until`` (rule 9)."""
        _check_time(at, "at")
        return (
            self.status == "active"
            and self.valid_from <= at
            and (self.valid_until is None or at < self.valid_until)
        )

    def verifier_for(self, key_name: str, key_id: bytes) -> Verifier | None:
        """The verifier of the current vkey with this signed-note (name, key ID), if any."""
        for vkey in self.vkeys:
            name, kid, public_key = _key(vkey)
            if (name, kid) == (key_name, key_id):
                return Verifier.from_public_key(name, public_key)
        return None


def _index_keys(members: Mapping[str, Member]) -> dict[tuple[str, bytes], str]:
    """(key name, key ID) of every current vkey -> its org, checking rule 8 across all members."""
    current: dict[tuple[str, bytes], str] = {}
    by_id: dict[tuple[str, bytes], tuple[str, str]] = {}  # -> (org, vkey)
    by_public: dict[bytes, str] = {}
    for org, member in members.items():
        retired_public = set()
        for vkey in member.retired_vkeys + member.vkeys:
            name, kid, public_key = _key(vkey)
            owner, first = by_id.setdefault((name, kid), (org, vkey))
            if owner != org:
                raise VerificationError(
                    f"key {name}+{kid.hex()} of {org} is already a key of {owner}", field="vkeys"
                )
            if first != vkey:
                # Two public keys behind one (name, key ID): a signature could not say which.
                raise VerificationError(
                    f"{org} has two different keys named {name}+{kid.hex()}", field="vkeys"
                )
            owner = by_public.setdefault(public_key, org)
            if owner != org:
                raise VerificationError(
                    f"the public key of {vkey} ({org}) is already a key of {owner}", field="vkeys"
                )
        for vkey in member.retired_vkeys:
            retired_public.add(_key(vkey)[2])
        for vkey in member.vkeys:
            name, kid, public_key = _key(vkey)
            if public_key in retired_public:
                raise VerificationError(
                    f"key {vkey} of {org} reuses a retired public key", field="vkeys"
                )
            current[(name, kid)] = org
    return current


@dataclass(frozen=True)
class MembershipState:
    """Every member a coordinator's records describe, after some prefix of its ``members`` log.

    Immutable: :meth:`apply` returns a new state. Build the empty state with
    ``MembershipState(coordinator)``.
    """

    #: the coordinator's organisation id: only records it authored count
    coordinator: str
    members: Mapping[str, Member] = field(default_factory=dict)
    _keys: Mapping[tuple[str, bytes], str] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        if not isinstance(self.coordinator, str) or not self.coordinator:
            raise FormatError("coordinator must be an organisation id", field="coordinator")
        if not isinstance(self.members, Mapping):
            raise FormatError("members must be a mapping", field="members")
        members = dict(self.members)
        for org, member in members.items():
            if not isinstance(member, Member) or member.org != org:
                raise FormatError(
                    f"members[{org!r}] must be the Member of {org!r}", field="members"
                )
        object.__setattr__(self, "members", MappingProxyType(members))
        object.__setattr__(self, "_keys", MappingProxyType(_index_keys(members)))

    __hash__ = None  # type: ignore[assignment]  # holds mappings

    def member(self, org: str) -> Member | None:
        """The member ``org`` whatever its status, or None if it was never admitted."""
        return self.members.get(org)

    def authorised(self, org: str, at: datetime) -> Member | None:
        """The member ``org`` if it is authorised at ``at`` (rule 9), else None."""
        member = self.members.get(org)
        return member if member is not None and member.is_authorised(at) else None

    def member_for_key(self, key_name: str, key_id: bytes, at: datetime) -> Member | None:
        """The authorised member whose current vkeys include this signed-note (name, key ID).

        Retired keys, suspended or removed members and expired memberships give None (rule 10).
        """
        _check_time(at, "at")
        if not isinstance(key_name, str) or not isinstance(key_id, bytes | bytearray):
            return None
        org = self._keys.get((key_name, bytes(key_id)))
        return None if org is None else self.authorised(org, at)

    def apply(self, record: Membership, index: int) -> MembershipState:
        """The state after ``record``, leaf ``index`` of the coordinator's ``members`` log.

        FormatError or VerificationError naming the index if the record breaks a rule (see the
        module docstring); ``self`` is unchanged either way.
        """
        where = f"membership record {index}"
        try:
            return self._apply(record)
        except ProtocolError as e:
            raise type(e)(f"{where}: {e.message}", field=e.field) from e

    def _apply(self, record: Membership) -> MembershipState:
        from protocol.records import Membership  # pydantic: imported when first needed

        if not isinstance(record, Membership):
            raise FormatError("not a membership record", field="type")
        if record.author != self.coordinator:
            raise VerificationError(
                f"authored by {record.author}, not by the coordinator {self.coordinator}",
                field="author",
            )
        present = {
            name
            for name in _DETAILS
            if getattr(record, name) not in (None, ())  # absent fields are None or ()
        }
        extra = sorted(present - _ALLOWED[record.action])
        if extra:
            raise FormatError(
                f"a {record.action} record must not carry {', '.join(extra)}", field=extra[0]
            )
        if len(set(record.vkeys)) != len(record.vkeys):
            raise FormatError("vkeys must not repeat", field="vkeys")
        for i, vkey in enumerate(record.vkeys):
            try:
                _key(vkey)
            except FormatError as e:
                raise FormatError(
                    f"vkeys[{i}] is not an Ed25519 vkey: {e.message}", field=f"vkeys[{i}]"
                ) from e

        org = record.member
        old = self.members.get(org)
        if old is not None and old.status == "removed":
            raise VerificationError(f"{org} was removed, and removal is final", field="member")
        if old is None and record.action != "admit":
            raise VerificationError(f"cannot {record.action} {org}: it was never admitted")
        reused = [vkey for vkey in record.vkeys if old is not None and vkey in old.retired_vkeys]
        if reused:
            raise VerificationError(
                f"key {reused[0]} of {org} was retired and cannot be used again", field="vkeys"
            )

        new: Member
        if record.action == "admit":
            assert record.name is not None and record.node_url is not None  # the model checks
            assert record.valid_from is not None
            retired = old.retired_vkeys if old is not None else ()
            new = Member(
                org=org,
                name=record.name,
                node_url=record.node_url,
                vkeys=record.vkeys,
                roles=record.roles,
                valid_from=parse_timestamp(record.valid_from),
                valid_until=(
                    None if record.valid_until is None else parse_timestamp(record.valid_until)
                ),
                status="active",
                retired_vkeys=_retire(retired, old.vkeys if old else (), record.vkeys),
            )
        else:
            assert old is not None
            if record.action == "rotate":
                new = replace(
                    old,
                    vkeys=record.vkeys,
                    retired_vkeys=_retire(old.retired_vkeys, old.vkeys, record.vkeys),
                )
            elif record.action == "suspend":
                new = replace(old, status="suspended")
            else:
                new = replace(old, status="removed")
        return MembershipState(self.coordinator, {**self.members, org: new})


def _retire(
    retired: tuple[str, ...], old: tuple[str, ...], new: tuple[str, ...]
) -> tuple[str, ...]:
    """``retired`` plus every key of ``old`` that ``new`` does not list again, in order."""
    keep = set(new) | set(retired)
    return retired + tuple(vkey for vkey in old if vkey not in keep)


def fold_membership(coordinator: str, records: Iterable[tuple[int, Membership]]) -> MembershipState:
    """Fold ``(leaf index, record)`` pairs of the coordinator's ``members`` log, in log order.

    Indices must increase strictly (other record types in the log are simply not passed in). The
    first record that breaks a rule raises, naming its index.
    """
    state = MembershipState(coordinator)
    last = -1
    for index, record in records:
        if not isinstance(index, int) or isinstance(index, bool) or index <= last:
            raise FormatError(
                f"membership record {index!r}: indices must increase (previous {last})",
                field="index",
            )
        state = state.apply(record, index)
        last = index
    return state
