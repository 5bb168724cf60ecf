"""Who is calling: the operator bearer token today, partner signatures (RFC 9421) later.

Every read and write handler asks this module, never the header itself, so that adding partner
callers later changes one file. Rules:

* TLP ``clear`` sets are readable by anyone; every other level only by the operator.
* Writes need the operator token.
* A request that presents credentials which do not check out is refused (401) even where an
  anonymous request would pass: a client with a stale token should hear about it, not silently see
  less.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from aiohttp import web

from node.errors import Unauthorized
from node.storage import SetInfo

PUBLIC_TLP = "clear"


@dataclass(frozen=True)
class Caller:
    """The authenticated identity behind one request."""

    is_operator: bool

    def can_read(self, info: SetInfo) -> bool:
        return info.tlp == PUBLIC_TLP or self.is_operator


ANONYMOUS = Caller(is_operator=False)
OPERATOR = Caller(is_operator=True)


class Authenticator:
    """Checks the ``Authorization`` header against the operator token."""

    def __init__(self, operator_token: str) -> None:
        if not operator_token:
            raise ValueError("the operator token must not be empty")
        self._token = operator_token.encode()

    def caller(self, request: web.Request) -> Caller:
        header = request.headers.get("Authorization")
        if header is None:
            return ANONYMOUS
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        # compare_digest: the time taken must not tell how much of a guessed token was right.
        if not hmac.compare_digest(token.strip().encode(), self._token):
            raise Unauthorized("the token is not valid for this node")
        return OPERATOR

    def require_operator(self, request: web.Request) -> Caller:
        caller = self.caller(request)
        if not caller.is_operator:
            raise Unauthorized("this operation needs the operator token (Authorization: Bearer)")
        return caller

    def require_read(self, request: web.Request, info: SetInfo) -> Caller:
        caller = self.caller(request)
        if not caller.can_read(info):
            raise Unauthorized(
                f"set {info.name} is TLP:{info.tlp.upper()}; reading it needs the operator token"
            )
        return caller
