"""The one exception family that everything in ``protocol`` raises.

Hierarchy::

    ProtocolError                 base; .diagnostics() is the text a CLI or HTTP layer shows
     ├── FormatError              input does not parse or break the grammar/schema (.field names it)
     │    └── RecordTooLargeError a record over the documented size limit
     └── VerificationError        well-formed input that fails a cryptographic/structural check
          ├── SignatureError      missing, bad or unknown-key signature; quorum not met
          ├── ProofError          an inclusion or consistency proof does not verify
          └── InconsistentTreeError two signed views of one log that cannot both be true
                                   (fork or rollback); carries both as evidence

Foreign exceptions (ValueError, binascii.Error, UnicodeDecodeError, InvalidSignature, pydantic's
ValidationError) never escape: they are wrapped at the boundary with ``raise ... from e``.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error raised by the protocol package."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def diagnostics(self) -> str:
        """A one-paragraph explanation suitable for showing to a person."""
        if self.field:
            return f"{self.message} (field: {self.field})"
        return self.message

    def __str__(self) -> str:
        return self.diagnostics()


class FormatError(ProtocolError):
    """Input could not be parsed, or does not follow the grammar or schema."""


class RecordTooLargeError(FormatError):
    """A record's canonical encoding exceeds the size limit."""


class VerificationError(ProtocolError):
    """Well-formed input failed a cryptographic or structural check."""


class SignatureError(VerificationError):
    """A signature is missing, invalid, from an unknown key, or a quorum was not met."""


class ProofError(VerificationError):
    """An inclusion or consistency proof does not verify."""


class InconsistentTreeError(VerificationError):
    """Two signed views of one log cannot both be true: a fork or a rollback.

    ``evidence`` holds the exact signed bytes (e.g. two checkpoint notes) that prove it, so that the
    pair can be stored and shown to anyone.

    ``path`` says whether those two notes prove that the log equivocated, for
    :mod:`protocol.equivocation`: ``()`` when the notes alone do (one size, two roots), the
    consistency path from the larger tree when their sizes differ, and None when the detector
    cannot show it (a rollback: both notes may be true; or the larger tree was not at hand).
    """

    def __init__(
        self,
        message: str,
        *,
        evidence: tuple[bytes, ...] = (),
        path: tuple[bytes, ...] | None = None,
    ) -> None:
        super().__init__(message)
        self.evidence = evidence
        self.path = path
