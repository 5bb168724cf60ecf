"""The node's error family, and the one place where errors become HTTP or CLI output.

Hierarchy::

    NodeError                    base; .status is the HTTP status, .code a stable machine name
     ├── BadRequest        400   malformed input (wraps protocol.FormatError)
     │    └── TooLarge     413   a body or a file over a documented limit
     ├── Unauthorized      401   no or wrong credentials
     ├── Forbidden         403   known caller, no access
     ├── NotFound          404   no such set, record, tile or proof size
     ├── Conflict          409   the request contradicts the log (e.g. revoking a revoked entry)
     ├── SetupError        500   the node's data directory or database is not usable (CLI: exit 2)
     └── Unavailable       503   the node cannot serve now (not ready, database down)

protocol.ProtocolError subclasses are mapped here too: FormatError -> 400, VerificationError -> 422.
Every HTTP error body has one shape: {"error": {"code": ..., "message": ..., "field"?: ...,
"details"?: ...}} (field and details only when there is something to say).
"""

from __future__ import annotations

from typing import Any

from protocol.errors import FormatError, ProtocolError, RecordTooLargeError, VerificationError


class NodeError(Exception):
    """Base class of every error the node raises on purpose."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, field: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details

    def __str__(self) -> str:
        return self.message if not self.field else f"{self.message} (field: {self.field})"


class BadRequest(NodeError):
    status = 400
    code = "bad_request"


class TooLarge(BadRequest):
    status = 413
    code = "too_large"


class Unauthorized(NodeError):
    status = 401
    code = "unauthorized"


class Forbidden(NodeError):
    status = 403
    code = "forbidden"


class NotFound(NodeError):
    status = 404
    code = "not_found"


class Conflict(NodeError):
    status = 409
    code = "conflict"


class SetupError(NodeError):
    status = 500
    code = "setup"


class Unavailable(NodeError):
    status = 503
    code = "unavailable"


def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for any exception: the single error-to-HTTP mapping."""
    if isinstance(exc, NodeError):
        status, code, message, field = exc.status, exc.code, exc.message, exc.field
        details = exc.details
    elif isinstance(exc, RecordTooLargeError):
        status, code, message, field, details = 413, "too_large", exc.message, exc.field, None
    elif isinstance(exc, FormatError):
        status, code, message, field, details = 400, "bad_request", exc.message, exc.field, None
    elif isinstance(exc, VerificationError):
        status, code, message, field, details = 422, "verification_failed", exc.message, None, None
    elif isinstance(exc, ProtocolError):
        status, code, message, field, details = 400, "bad_request", exc.message, exc.field, None
    else:
        # Never leak internals (paths, SQL) to a peer: the log has the traceback.
        status, code, message, field, details = 500, "internal", "internal error", None, None
    err: dict[str, Any] = {"code": code, "message": message}
    if field:
        err["field"] = field
    if details is not None:
        err["details"] = details
    return status, {"error": err}


def cli_message(exc: BaseException) -> tuple[int, str]:
    """(exit status, one line) for any exception: the single error-to-CLI mapping."""
    if isinstance(exc, SetupError):
        return 2, f"error: {exc}"
    if isinstance(exc, NodeError):
        return 1, f"error: {exc}"
    if isinstance(exc, ProtocolError):
        return 1, f"error: {exc.diagnostics()}"
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted"
    return 3, f"internal error: {type(exc).__name__}: {exc}"
