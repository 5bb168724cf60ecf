"""Tests for protocol.membership: folding a coordinator's membership records (rules 1-10)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import FormatError, VerificationError
from protocol.membership import Member, MembershipState, fold_membership
from protocol.note import Signer
from protocol.records import Membership, new_nonce, new_record_id

COORD = "coordinator.example"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ts(d: datetime) -> str:
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


def key(name: str = "node.example.org") -> Signer:
    return Signer.generate(name)


def rec(action: str, member: str, **fields: Any) -> Membership:
    author = fields.pop("author", COORD)
    if action == "admit":
        fields.setdefault("name", f"Org {member}")
        fields.setdefault("node_url", f"https://{member}")
        fields.setdefault("roles", ("publisher", "subscriber"))
        fields.setdefault("valid_from", ts(T0))
    return Membership(
        id=new_record_id(),
        author=author,
        created=ts(T0),
        nonce=new_nonce(),
        action=action,
        member=member,
        **fields,
    )


def fold(*records: Membership) -> MembershipState:
    return fold_membership(COORD, enumerate(records))


AT = T0 + timedelta(days=1)


def test_admit_creates_an_active_member() -> None:
    k = key()
    until = T0 + timedelta(days=30)
    state = fold(rec("admit", "a.org", vkeys=(k.verifier().vkey(),), valid_until=ts(until)))
    m = state.member("a.org")
    assert m is not None
    assert (m.org, m.name, m.node_url, m.status) == (
        "a.org",
        "Org a.org",
        "https://a.org",
        "active",
    )
    assert m.vkeys == (k.verifier().vkey(),) and m.retired_vkeys == ()
    assert (m.valid_from, m.valid_until) == (T0, until)
    assert m.roles == ("publisher", "subscriber")
    assert state.authorised("a.org", AT) is m
    assert state.authorised("a.org", T0) is m  # valid_from is inclusive
    assert state.authorised("a.org", T0 - timedelta(seconds=1)) is None
    assert state.authorised("a.org", until) is None  # valid_until is exclusive
    assert state.authorised("b.org", AT) is None and state.member("b.org") is None
    assert state.member_for_key(k.name, k.key_id, AT) is m
    assert state.member_for_key(k.name, k.key_id, until) is None
    assert state.member_for_key(k.name, b"\0\0\0\0", AT) is None
    assert state.member_for_key("other", k.key_id, AT) is None
    v = m.verifier_for(k.name, k.key_id)
    assert v is not None and v.vkey() == k.verifier().vkey()
    assert m.verifier_for(k.name, b"\0\0\0\0") is None


def test_open_ended_membership() -> None:
    k = key()
    state = fold(rec("admit", "a.org", vkeys=(k.verifier().vkey(),)))
    assert state.authorised("a.org", T0 + timedelta(days=36500)) is not None


def test_only_the_coordinator_counts() -> None:
    k = key()
    good = rec("admit", "a.org", vkeys=(k.verifier().vkey(),))
    forged = rec("suspend", "a.org", author="a.org")
    with pytest.raises(VerificationError, match=r"membership record 1: authored by a.org"):
        fold(good, forged)


def test_unknown_org_actions_are_refused() -> None:
    for action, fields in (
        ("rotate", {"vkeys": (key().verifier().vkey(),)}),
        ("suspend", {}),
        ("remove", {}),
    ):
        with pytest.raises(
            VerificationError, match=r"membership record 0: cannot .* never admitted"
        ):
            fold(rec(action, "ghost.org", **fields))


def test_rotation_retires_old_keys() -> None:
    k1, k2, k3 = key(), key(), key()
    state = fold(
        rec("admit", "a.org", vkeys=(k1.verifier().vkey(), k2.verifier().vkey())),
        rec("rotate", "a.org", vkeys=(k2.verifier().vkey(), k3.verifier().vkey())),
    )
    m = state.member("a.org")
    assert m is not None
    assert m.vkeys == (k2.verifier().vkey(), k3.verifier().vkey())
    assert m.retired_vkeys == (k1.verifier().vkey(),)
    assert state.member_for_key(k1.name, k1.key_id, AT) is None
    assert state.member_for_key(k2.name, k2.key_id, AT) is m
    assert state.member_for_key(k3.name, k3.key_id, AT) is m
    assert m.status == "active" and m.name == "Org a.org"  # nothing else changed


def test_retired_keys_never_come_back() -> None:
    k1, k2 = key(), key()
    base = (
        rec("admit", "a.org", vkeys=(k1.verifier().vkey(),)),
        rec("rotate", "a.org", vkeys=(k2.verifier().vkey(),)),
    )
    with pytest.raises(VerificationError, match=r"record 2: key .* was retired"):
        fold(*base, rec("rotate", "a.org", vkeys=(k1.verifier().vkey(),)))
    with pytest.raises(VerificationError, match=r"record 2: key .* was retired"):
        fold(*base, rec("admit", "a.org", vkeys=(k1.verifier().vkey(),)))
    # The same public key under another name is the same (possibly compromised) key.
    renamed = k1.with_name("renamed.example.org")
    with pytest.raises(VerificationError, match=r"record 2: .*retired public key"):
        fold(*base, rec("rotate", "a.org", vkeys=(renamed.verifier().vkey(),)))


def test_suspension_and_readmission() -> None:
    k1, k2 = key(), key()
    admitted = rec("admit", "a.org", vkeys=(k1.verifier().vkey(),))
    suspended = fold(admitted, rec("suspend", "a.org", reason="late payment"))
    m = suspended.member("a.org")
    assert m is not None and m.status == "suspended"
    assert suspended.authorised("a.org", AT) is None
    assert suspended.member_for_key(k1.name, k1.key_id, AT) is None
    # Suspending twice is harmless; a suspended member's keys can still be rotated.
    again = suspended.apply(rec("suspend", "a.org"), 2).apply(
        rec("rotate", "a.org", vkeys=(k2.verifier().vkey(),)), 3
    )
    assert again.member_for_key(k2.name, k2.key_id, AT) is None
    # Re-admission replaces every detail, lifts the suspension and retires dropped keys.
    readmit = rec(
        "admit",
        "a.org",
        name="Renamed",
        node_url="https://new.a.org",
        roles=("subscriber",),
        vkeys=(k2.verifier().vkey(),),
        valid_from=ts(T0 + timedelta(days=2)),
    )
    state = again.apply(readmit, 4)
    m = state.member("a.org")
    assert m is not None
    assert (m.status, m.name, m.node_url, m.roles) == (
        "active",
        "Renamed",
        "https://new.a.org",
        ("subscriber",),
    )
    assert m.retired_vkeys == (k1.verifier().vkey(),)
    assert state.authorised("a.org", AT) is None  # the new validity starts later
    assert state.member_for_key(k2.name, k2.key_id, T0 + timedelta(days=3)) is m


def test_readmission_of_an_active_member_retires_dropped_keys() -> None:
    k1, k2 = key(), key()
    state = fold(
        rec("admit", "a.org", vkeys=(k1.verifier().vkey(),)),
        rec("admit", "a.org", vkeys=(k2.verifier().vkey(),)),
    )
    m = state.member("a.org")
    assert m is not None and m.retired_vkeys == (k1.verifier().vkey(),)
    assert state.member_for_key(k1.name, k1.key_id, AT) is None


def test_removal_is_final() -> None:
    k = key()
    state = fold(rec("admit", "a.org", vkeys=(k.verifier().vkey(),)), rec("remove", "a.org"))
    m = state.member("a.org")
    assert m is not None and m.status == "removed"
    assert state.authorised("a.org", AT) is None
    assert state.member_for_key(k.name, k.key_id, AT) is None
    for later in (
        rec("admit", "a.org", vkeys=(key().verifier().vkey(),)),
        rec("suspend", "a.org"),
        rec("remove", "a.org"),
        rec("rotate", "a.org", vkeys=(key().verifier().vkey(),)),
    ):
        with pytest.raises(VerificationError, match=r"record 5: a.org was removed"):
            state.apply(later, 5)
    # A removed member's keys still belong to it.
    with pytest.raises(VerificationError, match=r"already a key of a.org"):
        state.apply(rec("admit", "b.org", vkeys=(k.verifier().vkey(),)), 6)


def test_a_key_belongs_to_one_org() -> None:
    k = key()
    a = rec("admit", "a.org", vkeys=(k.verifier().vkey(),))
    with pytest.raises(VerificationError, match=r"record 1: key .* already a key of a.org"):
        fold(a, rec("admit", "b.org", vkeys=(k.verifier().vkey(),)))
    with pytest.raises(
        VerificationError, match=r"record 1: the public key .* already a key of a.org"
    ):
        fold(a, rec("admit", "b.org", vkeys=(k.with_name("b.example").verifier().vkey(),)))
    # ... also after a.org rotated it away.
    rotated = rec("rotate", "a.org", vkeys=(key().verifier().vkey(),))
    with pytest.raises(VerificationError, match=r"record 2: .*already a key of a.org"):
        fold(a, rotated, rec("admit", "b.org", vkeys=(k.verifier().vkey(),)))


def test_vkeys_must_parse_and_not_repeat() -> None:
    good = key().verifier().vkey()
    name, kid, b64 = good.split("+", 2)
    wrong_id = f"{name}+{'0' * 8 if kid != '0' * 8 else '1' * 8}+{b64}"
    with pytest.raises(
        FormatError, match=r"membership record 0: vkeys\[1\] is not an Ed25519 vkey"
    ):
        fold(rec("admit", "a.org", vkeys=(good, wrong_id)))
    with pytest.raises(FormatError, match=r"record 0: vkeys must not repeat"):
        fold(rec("admit", "a.org", vkeys=(good, good)))


def test_records_carry_only_what_their_action_uses() -> None:
    k = key()
    state = fold(rec("admit", "a.org", vkeys=(k.verifier().vkey(),)))
    for bad in (
        rec("rotate", "a.org", vkeys=(key().verifier().vkey(),), valid_until=ts(AT)),
        rec("rotate", "a.org", vkeys=(key().verifier().vkey(),), roles=("auditor",)),
        rec("suspend", "a.org", vkeys=(key().verifier().vkey(),)),
        rec("remove", "a.org", name="x"),
    ):
        with pytest.raises(FormatError, match=r"record 1: a .* record must not carry"):
            state.apply(bad, 1)


def test_state_is_immutable() -> None:
    k = key()
    empty = MembershipState(COORD)
    state = empty.apply(rec("admit", "a.org", vkeys=(k.verifier().vkey(),)), 0)
    assert dict(empty.members) == {}
    assert set(state.members) == {"a.org"}
    with pytest.raises(TypeError):
        state.members["b.org"] = state.members["a.org"]  # type: ignore[index]
    # A refused record leaves the state as it was.
    with pytest.raises(VerificationError):
        state.apply(rec("remove", "ghost.org"), 1)
    assert set(state.members) == {"a.org"}


def test_bad_arguments() -> None:
    k = key()
    state = fold(rec("admit", "a.org", vkeys=(k.verifier().vkey(),)))
    with pytest.raises(FormatError):
        state.authorised("a.org", datetime(2026, 1, 2))  # naive on purpose
    with pytest.raises(FormatError):
        state.member_for_key(k.name, k.key_id, datetime(2026, 1, 2))
    assert state.member_for_key(k.name, "not bytes", AT) is None  # type: ignore[arg-type]
    with pytest.raises(FormatError, match=r"indices must increase"):
        fold_membership(
            COORD,
            [
                (3, rec("admit", "a.org", vkeys=(k.verifier().vkey(),))),
                (3, rec("suspend", "a.org")),
            ],
        )
    with pytest.raises(FormatError):
        MembershipState("")
    with pytest.raises(FormatError):
        state.apply("not a record", 1)  # type: ignore[arg-type]
    m = state.member("a.org")
    assert m is not None
    with pytest.raises(FormatError):
        MembershipState(COORD, {"b.org": m})
    with pytest.raises(FormatError):
        Member("a.org", "A", "https://a", ("junk",), (), T0, None, "active")
    with pytest.raises(FormatError):
        Member("a.org", "A", "https://a", m.vkeys, (), T0, T0, "active")
    with pytest.raises(FormatError):
        Member("a.org", "A", "https://a", m.vkeys, (), T0, None, "gone")  # type: ignore[arg-type]
    with pytest.raises(FormatError):
        Member("a.org", "A", "https://a", m.vkeys, (), T0, None, "active", m.vkeys)


# --- against a plain reference model ------------------------------------------------------------

ORGS = ["a.org", "b.org", "c.org"]
steps = st.lists(
    st.tuples(st.sampled_from(["admit", "rotate", "suspend", "remove"]), st.sampled_from(ORGS)),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(steps=steps)
def test_random_histories_match_a_reference_model(steps: list[tuple[str, str]]) -> None:
    """With a fresh key for every admit/rotate, the fold agrees with a dict of (status, keys)."""
    state = MembershipState(COORD)
    model: dict[str, tuple[str, list[Signer], list[Signer]]] = {}  # org -> (status, keys, retired)
    for index, (action, org) in enumerate(steps):
        fresh = [key()]
        vkeys = tuple(s.verifier().vkey() for s in fresh)
        record = rec(action, org, **({"vkeys": vkeys} if action in ("admit", "rotate") else {}))
        current = model.get(org)
        if (current is None and action != "admit") or (current and current[0] == "removed"):
            with pytest.raises(VerificationError):
                state.apply(record, index)
            continue
        state = state.apply(record, index)
        if action in ("admit", "rotate"):
            status = "active" if action == "admit" else (current[0] if current else "active")
            retired = (current[2] + current[1]) if current else []
            model[org] = (status, fresh, retired)
        else:
            assert current is not None
            model[org] = ("suspended" if action == "suspend" else "removed", current[1], current[2])
    for org, (status, keys, retired) in model.items():
        member = state.member(org)
        assert member is not None and member.status == status
        assert member.vkeys == tuple(s.verifier().vkey() for s in keys)
        assert member.retired_vkeys == tuple(s.verifier().vkey() for s in retired)
        for s in keys:
            found = state.member_for_key(s.name, s.key_id, AT)
            assert found is (member if status == "active" else None)
        for s in retired:
            assert state.member_for_key(s.name, s.key_id, AT) is None
