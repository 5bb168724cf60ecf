"""The node's HTTP routes: thin handlers that parse a request, ask NodeService, and shape JSON.

Tile serving policy (the API contract leaves it to the node; SPEC.md states it):

* A full tile or full entry bundle is served as soon as the store holds it, even before a signed
  checkpoint covers it: a full tile never changes, and a client can only use it with a checkpoint
  anyway. Full ones are cached in memory and sent ``Cache-Control: public, max-age=31536000,
  immutable``.
* A partial tile ``.p/W`` is served when the stored tile has at least W hashes (its first W are
  the partial tile of that width: a partial tile is a prefix of every later version of it); a
  partial entry bundle when at least W entries exist from its start (the first W are served).
  Full entry bundles are stored whole by the append that completes them. Partial objects are
  ``Cache-Control: no-cache``.
* Anything else, including a path that is not a canonical tile path (``tile/0/1000``,
  ``tile/0/x1/000``, ``.p/0``, ``.p/256``), is 404 with the JSON error body, as a static tile
  bucket would answer.
"""

from __future__ import annotations

import base64
import importlib.metadata
import re
from typing import Any

import orjson
from aiohttp import web

from node.bulkinput import EntryInput, entry_input
from node.errors import BadRequest, NodeError, NotFound, TooLarge
from node.server.auth import Authenticator, Caller
from node.server.cache import ByteLRU
from node.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from node.server.metrics import NodeMetrics
from node.service import MAX_PUBLISH_BATCH, REVOCATION_REASONS, LookupAnswer, NodeService
from node.storage import AppendResult, SetInfo
from protocol import tiles as tlog
from protocol.errors import FormatError
from protocol.records import encode_record

#: largest request body (aiohttp answers 413 beyond it)
MAX_BODY = 16 * 1024 * 1024

IMMUTABLE = "public, max-age=31536000, immutable"
NO_CACHE = "no-cache"

# A tree has at most 2**63 leaves here (BIGINT indexes): tiles past that cannot exist, and asking
# the database about them would overflow its integer type.
_MAX_LEAVES = 1 << 63

try:
    SOFTWARE = f"hashfed/{importlib.metadata.version('hashfed')}"
except importlib.metadata.PackageNotFoundError:  # running from a source tree, not installed
    SOFTWARE = "hashfed/0+unknown"

_UINT = re.compile(r"[0-9]{1,20}")
_RECORDS_KEYS = frozenset({"publish", "revoke"})
_REVOKE_KEYS = frozenset({"entry", "hash_type", "hash_value", "reason", "text"})
_CREATE_SET_KEYS = frozenset({"name", "tlp", "description"})

class NodeState:
    """Everything the handlers share, stored in the app under :data:`STATE`."""

    def __init__(
        self,
        service: NodeService,
        auth: Authenticator,
        metrics: NodeMetrics,
        cache: ByteLRU,
    ) -> None:
        self.service = service
        self.auth = auth
        self.metrics = metrics
        self.cache = cache
        # name -> SetInfo as first read; only its immutable fields (id, name, origin, tlp) are
        # used from here, so it needs no invalidation (sets are never deleted or renamed).
        self._static_sets: dict[str, SetInfo] = {}

    async def static_set(self, name: str) -> SetInfo:
        info = self._static_sets.get(name)
        if info is None:
            info = self._static_sets[name] = await self.service.store.get_set(name)
        return info

STATE = web.AppKey("hashfed_state", NodeState)

def _state(request: web.Request) -> NodeState:
    return request.app[STATE]

# -- helpers --------------------------------------------------------------------------------------

def json_response(body: Any, status: int = 200, *, cache: str = NO_CACHE) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": cache},
    )

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()

def _query_str(request: web.Request, name: str) -> str:
    values = request.query.getall(name, [])
    if len(values) != 1 or not values[0]:
        raise BadRequest(f"query parameter {name} is required exactly once", field=name)
    return values[0]

def _query_uint(request: web.Request, name: str) -> int:
    raw = _query_str(request, name)
    if _UINT.fullmatch(raw) is None:
        raise BadRequest(f"{name} must be a non-negative decimal integer", field=name)
    return int(raw)

async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()  # raises 413 beyond the app's client_max_size
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"the body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body

def _check_keys(obj: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r} in {where}", field=unknown[0])

def _result_json(r: AppendResult) -> dict[str, Any]:
    return {"status": r.status, "index": r.index, "record_id": r.record_id}

async def _visible_sets(state: NodeState, caller: Caller) -> list[SetInfo]:
    return [s for s in await state.service.store.list_sets() if caller.can_read(s)]

async def _readable_set(request: web.Request) -> SetInfo:
    state = _state(request)
    info = await state.service.store.get_set(request.match_info["set"])
    state.auth.require_read(request, info)
    return info

# -- node and sets --------------------------------------------------------------------------------

async def get_node(request: web.Request) -> web.Response:
    state = _state(request)
    caller = state.auth.caller(request)
    service = state.service
    return json_response(
        {
            "org": service.cfg.org,
            "origin": service.cfg.origin,
            "vkey": service.signer.verifier().vkey(),
            "software": SOFTWARE,
            "sets": [s.name for s in await _visible_sets(state, caller)],
        }
    )

async def list_sets(request: web.Request) -> web.Response:
    state = _state(request)
    caller = state.auth.caller(request)
    sets = await _visible_sets(state, caller)
    return json_response({"sets": [state.service.set_json(s) for s in sets]})

async def get_set(request: web.Request) -> web.Response:
    info = await _readable_set(request)
    return json_response(_state(request).service.set_json(info))

async def create_set(request: web.Request) -> web.Response:
    state = _state(request)
    state.auth.require_operator(request)
    body = await _json_body(request)
    _check_keys(body, _CREATE_SET_KEYS, "the set")
    name, tlp, description = body.get("name"), body.get("tlp"), body.get("description", "")
    if not isinstance(name, str):
        raise BadRequest("name is required (a string)", field="name")
    if not isinstance(tlp, str):
        raise BadRequest("tlp is required (a string)", field="tlp")
    if not isinstance(description, str):
        raise BadRequest("description must be a string", field="description")
    info = await state.service.create_set(name, tlp, description)
    return json_response(state.service.set_json(info), status=201)

async def get_checkpoint(request: web.Request) -> web.Response:
    # Checkpoints are public at every TLP: they reveal a size and a root, no content, and
    # witnesses and auditors must be able to follow every log.
    info = await _state(request).service.store.get_set(request.match_info["set"])
    if info.checkpoint is None:
        raise NotFound(f"set {info.name} has no checkpoint yet")
    return web.Response(
        body=info.checkpoint,
        content_type="text/plain",
        charset="utf-8",
        headers={"Cache-Control": NO_CACHE},
    )

# -- tiles ----------------------------------------------------------------------------------------

def _tile_can_exist(ref: tlog.TileRef) -> bool:
    """False for tiles beyond any possible tree (their first leaf is past 2**63)."""
    if ref.level >= 8:  # one hash of a level-8 tile covers 2**64 leaves
        return False
    return ref.n << (tlog.TILE_HEIGHT * (ref.level + 1)) < _MAX_LEAVES

async def get_tile(request: web.Request) -> web.Response:
    state = _state(request)
    info = await state.static_set(request.match_info["set"])
    state.auth.require_read(request, info)
    try:
        ref = tlog.parse_tile_path("tile/" + request.match_info["path"])
    except FormatError as e:
        # A path that names no tile names nothing: 404, as a static tile bucket would answer.
        raise NotFound(e.message, field="path") from e
    key = (info.id, ref)
    if ref.is_full:
        cached = state.cache.get(key)
        if cached is not None:
            return _tile_response(cached, IMMUTABLE)
    if not _tile_can_exist(ref):
        raise NotFound(f"{ref.path()} does not exist in set {info.name}")
    data: bytes | None
    if ref.is_entries:
        store = state.service.store
        data = await store.read_bundle(info.id, ref.n) if ref.is_full else None
        if data is None:  # partial, or a set written before bundles were stored
            entries = await store.read_entries(info.id, ref.n * tlog.TILE_WIDTH, ref.width)
            data = tlog.encode_entry_bundle(entries) if len(entries) == ref.width else None
    else:
        data = (await state.service.store.read_tiles(info.id, [ref])).get(ref)
    if data is None:
        raise NotFound(f"{ref.path()} does not exist in set {info.name}")
    if ref.is_full:
        state.cache.put(key, data)
        state.metrics.tile_cache_bytes.set(state.cache.size)
        return _tile_response(data, IMMUTABLE)
    return _tile_response(data, NO_CACHE)

def _tile_response(data: bytes, cache: str) -> web.Response:
    return web.Response(
        body=data, content_type="application/octet-stream", headers={"Cache-Control": cache}
    )

# -- proofs ---------------------------------------------------------------------------------------

async def inclusion_proof(request: web.Request) -> web.Response:
    info = await _readable_set(request)
    index, size = _query_uint(request, "index"), _query_uint(request, "size")
    hashes = await _state(request).service.inclusion_proof(info, index, size)
    return json_response({"hashes": [_b64(h) for h in hashes]})

async def consistency_proof(request: web.Request) -> web.Response:
    info = await _readable_set(request)
    old, size = _query_uint(request, "old"), _query_uint(request, "size")
    hashes = await _state(request).service.consistency_proof(info, old, size)
    return json_response({"hashes": [_b64(h) for h in hashes]})

# -- lookups --------------------------------------------------------------------------------------

async def _match_json(
    service: NodeService, ans: LookupAnswer, readable: set[int]
) -> dict[str, Any]:
    info = ans.set
    index = ans.stored.index
    match: dict[str, Any] = {
        "set": info.name,
        "origin": info.origin,
        "index": index,
        "state": "revoked" if ans.stored.revoked_by is not None else "active",
        # The stored leaf bytes are canonical JSON already: parse them, do not rebuild them.
        "record": orjson.loads(ans.stored.data),
    }
    if ans.revocation is not None:
        match["revocation"] = orjson.loads(encode_record(ans.revocation))
    match.update(await service.view_fields(ans, readable))
    if info.checkpoint is not None:
        match["checkpoint"] = info.checkpoint.decode()
    if index < info.checkpoint_size:
        hashes = await service.inclusion_proof(info, index, info.checkpoint_size)
        match["inclusion"] = {"size": info.checkpoint_size, "hashes": [_b64(h) for h in hashes]}
    return match

async def _lookup(request: web.Request, sets: list[SetInfo]) -> web.Response:
    state = _state(request)
    service = state.service
    hash_type = _query_str(request, "hash_type")
    hash_value = _query_str(request, "hash_value")
    answers = await service.lookup(hash_type, hash_value, sets)
    # Attestation summaries count only what the caller could read for itself.
    caller = state.auth.caller(request)
    readable = {s.id for s in await service.store.list_sets(kind=None) if caller.can_read(s)}
    return json_response({"matches": [await _match_json(service, a, readable) for a in answers]})

async def lookup_in_set(request: web.Request) -> web.Response:
    return await _lookup(request, [await _readable_set(request)])

async def lookup_all(request: web.Request) -> web.Response:
    """The merged view: local sets and mirrors, each under its own TLP's read rule."""
    state = _state(request)
    caller = state.auth.caller(request)
    sets = [s for s in await state.service.store.list_sets(kind=None) if caller.can_read(s)]
    return await _lookup(request, sets)

async def get_receipt(request: web.Request) -> web.Response:
    """The receipt of a re-shared entry (JSON of protocol.receipts.Receipt), read like its set."""
    info = await _readable_set(request)
    raw = request.match_info["index"]
    if _UINT.fullmatch(raw) is None or int(raw) >= _MAX_LEAVES:
        raise NotFound(f"no entry {raw!r} in set {info.name}", field="index")
    receipt = await _state(request).service.store.get_receipt(info.id, int(raw))
    if receipt is None:
        raise NotFound(f"entry {raw} of set {info.name} is not a re-share", field="index")
    return web.Response(
        body=receipt, content_type="application/json", headers={"Cache-Control": IMMUTABLE}
    )

# -- writes ---------------------------------------------------------------------------------------

def _publish_inputs(publish: list[Any]) -> list[EntryInput]:
    items: list[EntryInput] = []
    errors: list[dict[str, Any]] = []
    for i, obj in enumerate(publish):
        if not isinstance(obj, dict):
            errors.append({"item": i, "message": "each publish item must be a JSON object"})
            continue
        try:
            items.append(entry_input(obj))
        except FormatError as e:
            errors.append({"item": i, "message": e.diagnostics()})
    if errors:
        raise BadRequest(
            f"{len(errors)} bad publish item(s); nothing was stored",
            field="publish",
            details=errors,
        )
    return items

def _locate_bad_items(
    service: NodeService, set_name: str, items: list[EntryInput]
) -> BadRequest | None:
    """Which items fail record validation (e.g. a malformed timestamp), as the 400 to send.

    Only run after publish() refused the batch (nothing was stored), so the common path builds
    every record once.
    """
    errors: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        try:
            service.prepare_entries(set_name, [item])
        except FormatError as e:
            errors.append({"item": i, "message": e.diagnostics()})
    if not errors:
        return None
    return BadRequest(
        f"{len(errors)} bad publish item(s); nothing was stored", field="publish", details=errors
    )


def _check_revocations(revoke: list[Any]) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    for i, obj in enumerate(revoke):
        message = _revocation_problem(obj)
        if message is not None:
            errors.append({"item": i, "message": message})
    if errors:
        raise BadRequest(
            f"{len(errors)} bad revoke item(s); nothing was stored", field="revoke", details=errors
        )
    return revoke

def _revocation_problem(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return "each revoke item must be a JSON object"
    unknown = sorted(set(obj) - _REVOKE_KEYS)
    if unknown:
        return f"unknown field {unknown[0]!r}"
    for key in _REVOKE_KEYS:
        if key in obj and obj[key] is not None and not isinstance(obj[key], str):
            return f"{key} must be a string"
    has_entry = obj.get("entry") is not None
    has_hash = obj.get("hash_type") is not None and obj.get("hash_value") is not None
    if has_entry == has_hash:
        return "name the entry: either 'entry' or both 'hash_type' and 'hash_value'"
    if obj.get("reason") not in REVOCATION_REASONS:
        return f"reason must be one of {', '.join(REVOCATION_REASONS)}"
    return None

async def post_records(request: web.Request) -> web.Response:
    state = _state(request)
    state.auth.require_operator(request)
    body = await _json_body(request)
    _check_keys(body, _RECORDS_KEYS, "the request")
    publish, revoke = body.get("publish", []), body.get("revoke", [])
    if not isinstance(publish, list):
        raise BadRequest("publish must be a list", field="publish")
    if not isinstance(revoke, list):
        raise BadRequest("revoke must be a list", field="revoke")
    if len(publish) > MAX_PUBLISH_BATCH:
        raise TooLarge(f"at most {MAX_PUBLISH_BATCH} publish items per request", field="publish")
    name = request.match_info["set"]
    service = state.service
    await service.store.get_set(name)  # 404 before any validation work
    items = _publish_inputs(publish)
    _check_revocations(revoke)

    try:
        published = await service.publish(name, items) if items else []
    except FormatError as e:
        raise _locate_bad_items(service, name, items) or e from e
    state.metrics.appended(name, published)
    revoked: list[AppendResult] = []
    for i, obj in enumerate(revoke):
        try:
            result = await service.revoke(
                name,
                entry_id=obj.get("entry"),
                hash_type=obj.get("hash_type"),
                hash_value=obj.get("hash_value"),
                reason=obj["reason"],
                text=obj.get("text"),
            )
        except NodeError as e:
            # What was stored before this item stays stored: say exactly what, so the caller
            # does not have to guess (publishes and earlier revocations are durable).
            e.details = {
                "item": i,
                "published": [_result_json(r) for r in published],
                "revoked": [_result_json(r) for r in revoked],
            }
            e.field = e.field or "revoke"
            raise
        revoked.append(result)
        state.metrics.appended(name, [result])
    return json_response(
        {
            "published": [_result_json(r) for r in published],
            "revoked": [_result_json(r) for r in revoked],
        }
    )

async def post_members(request: web.Request) -> web.Response:
    """A coordinator's membership decision (operator only), checked against its members log."""
    from node.federation.members import Coordinator, member_json

    state = _state(request)
    state.auth.require_operator(request)
    body = await _json_body(request)
    result, member = await Coordinator(state.service).apply_json(body)
    state.metrics.appended("members", [result])
    return json_response(
        {"index": result.index, "record_id": result.record_id, "member": member_json(member)},
        status=201,
    )

# -- operations -----------------------------------------------------------------------------------

async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok", headers={"Cache-Control": NO_CACHE})

async def readyz(request: web.Request) -> web.Response:
    await _state(request).service.store.ping()  # Unavailable (503) when the database is down
    return web.Response(text="ok", headers={"Cache-Control": NO_CACHE})

async def metrics(request: web.Request) -> web.Response:
    state = _state(request)
    state.metrics.update_sets(await state.service.store.list_sets())
    state.metrics.tile_cache_bytes.set(state.cache.size)
    return web.Response(
        body=state.metrics.render(),
        headers={"Content-Type": METRICS_CONTENT_TYPE, "Cache-Control": NO_CACHE},
    )

def add_routes(app: web.Application) -> None:
    app.add_routes(
        [
            web.get("/v1/node", get_node),
            web.get("/v1/sets", list_sets),
            web.post("/v1/sets", create_set),
            web.get("/v1/sets/{set}", get_set),
            web.get("/v1/sets/{set}/checkpoint", get_checkpoint),
            web.get("/v1/sets/{set}/tile/{path:.+}", get_tile),
            web.get("/v1/sets/{set}/proof/inclusion", inclusion_proof),
            web.get("/v1/sets/{set}/proof/consistency", consistency_proof),
            web.get("/v1/sets/{set}/lookup", lookup_in_set),
            web.get("/v1/sets/{set}/receipts/{index}", get_receipt),
            web.post("/v1/sets/{set}/records", post_records),
            web.post("/v1/members", post_members),
            web.get("/v1/lookup", lookup_all),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
        ]
    )

__all__ = ["IMMUTABLE", "MAX_BODY", "NO_CACHE", "STATE", "NodeState", "add_routes"]
