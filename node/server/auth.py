"""Who is calling: the operator (bearer token), a partner (RFC 9421 signature), or anyone.

Every read and write handler asks this module, never the header itself. Rules:

* A request with ``Signature-Input`` / ``Signature`` is a partner request. :meth:`Authenticator.
  authenticate` (run by the middleware, since it needs the database) verifies it with
  :mod:`node.federation.httpsig`, finds the signing key among the current keys of authorised
  members (:class:`node.federation.members.Federation`), and records the nonce in ``seen_nonces``
  (shared by every process on the database): unknown or retired key, suspended, removed or
  expired member, bad or stale signature, digest mismatch or a replayed nonce are all 401.
* Scope: TLP ``clear`` sets are readable by anyone; ``green`` by the operator and any authorised
  partner; ``amber``, ``amber+strict`` and ``red`` by the operator and the partners granted the
  set (``set_grants``). A partner reading outside its scope gets 403; an anonymous caller 401.
* Writes need the operator token (a partner asking gets 403, an anonymous caller 401).
* A request that presents credentials which do not check out is refused (401) even where an
  anonymous request would pass: a client with a stale token or key should hear about it, not
  silently see less. A request carrying both a token and a signature is refused too.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from aiohttp.typedefs import Middleware
from yarl import URL

from node.errors import Forbidden, Unauthorized
from node.federation import httpsig
from node.federation.members import Federation, PartnerIdentity
from node.storage import SetInfo

log = logging.getLogger("hashfed.auth")

PUBLIC_TLP = "clear"
MEMBER_TLP = "green"
#: seconds between deletions of expired nonces (each process prunes on its own schedule)
NONCE_PRUNE_INTERVAL = 60

CallerKind = Literal["operator", "partner", "anonymous"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Caller:
    """The authenticated identity behind one request."""

    kind: CallerKind
    #: the partner's organisation (partners only)
    org: str | None = None
    #: ids of the local sets the partner holds a grant for (partners only)
    granted: frozenset[int] = field(default_factory=frozenset)
    partner: PartnerIdentity | None = None

    @property
    def is_operator(self) -> bool:
        return self.kind == "operator"

    @property
    def is_partner(self) -> bool:
        return self.kind == "partner"

    def can_read(self, info: SetInfo) -> bool:
        if info.tlp == PUBLIC_TLP or self.is_operator:
            return True
        if not self.is_partner:
            return False
        return info.tlp == MEMBER_TLP or info.id in self.granted


ANONYMOUS = Caller(kind="anonymous")
OPERATOR = Caller(kind="operator")

#: the verified partner caller of a signed request, set by :meth:`Authenticator.authenticate`
CALLER = web.RequestKey("hashfed_caller", Caller)


def _is_signed(request: web.Request) -> bool:
    return "Signature-Input" in request.headers or "Signature" in request.headers


class Authenticator:
    """Checks the operator token and, with a :class:`Federation`, partner signatures."""

    def __init__(
        self,
        operator_token: str,
        federation: Federation | None = None,
        *,
        public_url: str = "",
        max_age: int = httpsig.MAX_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not operator_token:
            raise ValueError("the operator token must not be empty")
        self._token = operator_token.encode()
        self.federation = federation
        # The target URI partners sign is the public URL they were given; without one configured
        # the Host header the request arrived with stands in (fine on a private network, but
        # then a request signed for another node with the same key could be replayed here).
        self._public_base = str(URL(public_url).origin()) if public_url else ""
        self._max_age = max_age
        self._clock = clock
        self._last_prune = 0.0

    # -- identity -------------------------------------------------------------------------------

    def caller(self, request: web.Request) -> Caller:
        if _is_signed(request):
            if CALLER not in request:  # no middleware ran: a signature never counts as nothing
                raise Unauthorized("this node did not verify the request's signature")
            return request[CALLER]
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
        if caller.is_partner:
            raise Forbidden(
                f"{caller.org} is a partner; this operation needs this node's operator token"
            )
        if not caller.is_operator:
            raise Unauthorized("this operation needs the operator token (Authorization: Bearer)")
        return caller

    def require_read(self, request: web.Request, info: SetInfo) -> Caller:
        caller = self.caller(request)
        if caller.can_read(info):
            return caller
        level = info.tlp.upper()
        if caller.is_partner:
            raise Forbidden(
                f"set {info.name} is TLP:{level} and {caller.org} holds no grant for it",
                field="set",
            )
        needs = "a member's signature" if info.tlp == MEMBER_TLP else "a partner grant"
        raise Unauthorized(
            f"set {info.name} is TLP:{level}; reading it needs the operator token or {needs}"
        )

    # -- partner signatures ---------------------------------------------------------------------

    def target_uri(self, request: web.Request) -> str:
        """``@target-uri`` as this node was addressed: public base URL + raw path and query."""
        base = self._public_base or f"{request.scheme}://{request.host}"
        return base + request.raw_path

    async def authenticate(self, request: web.Request) -> None:
        """Verify a signed request and remember who sent it; nothing for unsigned requests."""
        if not _is_signed(request):
            return
        if "Authorization" in request.headers:
            raise Unauthorized("send either a bearer token or a partner signature, not both")
        if self.federation is None:
            raise Unauthorized("this node does not accept partner signatures")
        federation = self.federation
        peek = httpsig.signature_keyid(request.headers)
        if peek is None:
            raise Unauthorized("Signature without Signature-Input", field="Signature-Input")
        key_name, key_id = peek
        partner = await federation.caller_for(key_name, key_id)
        verifier = None if partner is None else partner.member.verifier_for(key_name, key_id)
        body = await request.read() if request.body_exists else None
        now = int(self._clock())
        signed = httpsig.verify_request(
            request.method,
            self.target_uri(request),
            request.headers,
            body,
            lambda name, kid: verifier if (name, kid) == (key_name, key_id) else None,
            now=now,
            max_age=self._max_age,
        )
        assert partner is not None  # verify_request refuses a key it could not resolve
        # Remembered until no clock could accept the signature any more (created + max age).
        fresh = await federation.fed_store.remember_nonce(
            signed.keyid, signed.nonce, signed.created + self._max_age + 1
        )
        if not fresh:
            raise Unauthorized(f"replayed request: nonce {signed.nonce} from {signed.keyid} "
                               "was already used")
        if now - self._last_prune >= NONCE_PRUNE_INTERVAL:
            self._last_prune = now
            pruned = await federation.fed_store.prune_nonces(now)
            log.debug("pruned %d expired nonces", pruned)
        granted = await federation.fed_store.granted_set_ids(partner.org)
        request[CALLER] = Caller(kind="partner", org=partner.org, granted=granted,
                                 partner=partner)

    @property
    def middleware(self) -> Middleware:
        """aiohttp middleware running :meth:`authenticate` before every handler.

        Install it inside the error middleware, so that its 401s get the one JSON error shape.
        """

        @web.middleware
        async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
            await self.authenticate(request)
            return await handler(request)

        return authenticate


__all__ = ["ANONYMOUS", "CALLER", "OPERATOR", "Authenticator", "Caller"]
