"""The public surface of `protocol` is deliberate: adding or dropping a name is a visible change."""

from __future__ import annotations

import pkgutil

import protocol


def test_exported_names_are_pinned() -> None:
    # Submodules become attributes of the package once anything imports them: not exports.
    submodules = {m.name for m in pkgutil.iter_modules(protocol.__path__)}
    exported = {name for name in dir(protocol) if not name.startswith("_")}
    assert exported - submodules == set(protocol.__all__)
    for name in protocol.__all__:
        assert getattr(protocol, name) is not None


def test_fast_record_views_are_exported() -> None:
    # node/ (sync, publish) builds on these names: renaming one is a breaking change.
    pinned = {
        "AttestationView",
        "EntryView",
        "MembershipView",
        "RecordView",
        "RevocationView",
        "scan_record",
        "view_to_record",
    }
    assert pinned <= set(protocol.__all__)
