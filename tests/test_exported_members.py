"""The public surface of `protocol` is deliberate: adding or dropping a name is a visible change."""

from __future__ import annotations

import protocol


def test_exported_names_are_pinned() -> None:
    exported = {name for name in dir(protocol) if not name.startswith("_")}
    submodules = {
        "checkpoint", "equivocation", "errors", "hashtypes", "jcs", "membership", "merkle", "mirror",
        "note", "receipts", "records", "tiles", "verify",
    }
    assert exported - submodules == set(protocol.__all__)
    for name in protocol.__all__:
        assert getattr(protocol, name) is not None
