"""hashfed protocol: records, canonical JSON, Merkle logs, signed checkpoints; pure and offline.

Everything an auditor needs to verify a hashfed node's output without trusting it, importable with
only ``cryptography``, ``pydantic``, ``msgspec`` and ``numpy`` installed (no network, no database,
no asyncio). The names below are the public surface; submodules hold the details and the
lower-level helpers.

Verification functions return ``None`` (or the verified object) or raise a
:class:`~protocol.errors.ProtocolError`: see :mod:`protocol.errors` for the hierarchy. The export
auditor is :mod:`protocol.audit` (``python -m protocol.audit DIR``); it is not imported here, so
that running it as a module does not import it twice.
"""

import importlib as _importlib
import typing as _typing

from protocol.checkpoint import (
    Checkpoint,
    CosignatureSigner,
    CosignatureVerifier,
    add_cosignatures,
    cosignatures,
    parse_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
)
from protocol.equivocation import EquivocationProof, verify_equivocation
from protocol.errors import (
    FormatError,
    InconsistentTreeError,
    ProofError,
    ProtocolError,
    RecordTooLargeError,
    SignatureError,
    VerificationError,
)
from protocol.grammar import MAX_RECORD_SIZE
from protocol.hashtypes import HASH_TYPES, HashType, check_hash
from protocol.jcs import canonicalize, parse_canonical, parse_json
from protocol.membership import Member, MembershipState, fold_membership
from protocol.merkle import (
    CompactRange,
    leaf_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from protocol.mirror import VerifiedTree, verify_bundle, verify_tree_tiles
from protocol.note import Note, Signer, Verifier, open_note, parse_note, sign_note
from protocol.scan import (
    AttestationView,
    EntryView,
    MembershipView,
    RecordView,
    RevocationView,
    scan_record,
    view_to_record,
)
from protocol.tiles import TileRef, decode_entry_bundle, encode_entry_bundle, parse_tile_path
from protocol.verify import (
    AuditSummary,
    LogAuditor,
    check_fork,
    verify_consistency_of,
    verify_inclusion_of,
    verify_log,
    verify_record,
)

if _typing.TYPE_CHECKING:
    from protocol.receipts import Receipt, reshared_entry_fields, verify_receipt_chain
    from protocol.records import (
        Attestation,
        Entry,
        Membership,
        Record,
        Revocation,
        decode_record,
        encode_record,
        record_from_dict,
    )

__version__ = "0.1.0"

# The record models (and receipts, which build on them) need pydantic, which costs about 0.2 s
# to import with the models: their names are loaded on first use (PEP 562), so that an offline
# audit of a clean log, which never builds a model, does not pay for them.
_LAZY = {
    **dict.fromkeys(("Receipt", "reshared_entry_fields", "verify_receipt_chain", "receipts"),
                    "protocol.receipts"),
    **dict.fromkeys(("Attestation", "Entry", "Membership", "Record", "Revocation",
                     "decode_record", "encode_record", "record_from_dict", "records"),
                    "protocol.records"),
}


def __getattr__(name: str) -> _typing.Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'protocol' has no attribute {name!r}")
    module = _importlib.import_module(module_name)
    value = module if module_name.endswith("." + name) else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

__all__ = [
    "HASH_TYPES",
    "MAX_RECORD_SIZE",
    "Attestation",
    "AttestationView",
    "AuditSummary",
    "Checkpoint",
    "CompactRange",
    "CosignatureSigner",
    "CosignatureVerifier",
    "Entry",
    "EntryView",
    "EquivocationProof",
    "FormatError",
    "HashType",
    "InconsistentTreeError",
    "LogAuditor",
    "Member",
    "Membership",
    "MembershipState",
    "MembershipView",
    "Note",
    "ProofError",
    "ProtocolError",
    "Receipt",
    "Record",
    "RecordTooLargeError",
    "RecordView",
    "Revocation",
    "RevocationView",
    "SignatureError",
    "Signer",
    "TileRef",
    "VerificationError",
    "VerifiedTree",
    "Verifier",
    "add_cosignatures",
    "canonicalize",
    "check_fork",
    "check_hash",
    "cosignatures",
    "decode_entry_bundle",
    "decode_record",
    "encode_entry_bundle",
    "encode_record",
    "fold_membership",
    "leaf_hash",
    "open_note",
    "parse_canonical",
    "parse_checkpoint",
    "parse_json",
    "parse_note",
    "parse_tile_path",
    "record_from_dict",
    "reshared_entry_fields",
    "root_from_leaf_hashes",
    "scan_record",
    "sign_checkpoint",
    "sign_note",
    "verify_bundle",
    "verify_checkpoint",
    "verify_consistency",
    "verify_consistency_of",
    "verify_equivocation",
    "verify_inclusion",
    "verify_inclusion_of",
    "verify_log",
    "verify_receipt_chain",
    "verify_record",
    "verify_tree_tiles",
    "view_to_record",
]
