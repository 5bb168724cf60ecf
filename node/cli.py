"""The `hashfed` command line: create a node, run it, and operate its sets.

Every operation is a call into :class:`node.service.NodeService` (or, when a ``hashfed serve`` runs
on the same data directory, the same call through its operator API), so the CLI holds no rule of
its own. Errors become output in one place, :func:`main`, through :func:`node.errors.cli_message`:
one line on stderr and its exit status, never a traceback.

The data directory comes from ``--data DIR`` or, when the flag is absent, ``$HASHFED_DATA``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from node import importer
from node.bulkinput import (
    BulkInputError,
    EntryInput,
    check_all,
    detect_format,
    input_to_json,
    iter_inputs,
)
from node.config import (
    DEFAULT_LISTEN,
    TOKEN_FILE,
    NodeConfig,
    create_data_dir,
    load_config,
    load_operator_token,
    load_signer,
    parse_listen,
    running_server_url,
)
from node.errors import BadRequest, NodeError, SetupError, cli_message
from node.service import REVOCATION_REASONS, NodeService, check_set_name
from node.storage import AppendResult
from node.storage.sql import SqlStore
from protocol import hashtypes
from protocol.records import encode_record

if TYPE_CHECKING:
    from node.client import OperatorClient

DATA_ENV = "HASHFED_DATA"
#: entries per publish call: well under service.MAX_PUBLISH_BATCH, and what bounds memory
PUBLISH_CHUNK = 5_000
#: entries per transaction of a direct (no server) import. Large, because each commit writes every
#: index page it touched: on a million-entry set 32k-entry commits write a fraction of what 5k-entry
#: commits do (bench/README.md). Memory: 32k spooled leaves (~20 MB).
IMPORT_CHUNK = 32_768

log = logging.getLogger("hashfed.cli")


# -- operator operations, direct or through a running server --------------------------------------


class _Operator:
    """The write operations, against the database directly or through a running server.

    A running ``hashfed serve`` owns the sequencer for its sets; writing around it would make two
    processes sequence one SQLite file, so when one runs, writes go through its operator API.
    """

    def __init__(
        self, cfg: NodeConfig, service: NodeService | None, client: OperatorClient | None
    ) -> None:
        self.cfg = cfg
        self._service = service
        self._client = client

    @property
    def service(self) -> NodeService | None:
        """The local service when writing directly (no server running), else None."""
        return self._service

    async def create_set(self, name: str, tlp: str, description: str) -> dict[str, Any]:
        if self._client is not None:
            return await self._client.create_set(name, tlp, description)
        assert self._service is not None
        return self._service.set_json(await self._service.create_set(name, tlp, description))

    async def check_set(self, name: str) -> None:
        """NotFound before a long validation pass, when the set does not exist."""
        if self._client is not None:
            await self._client.get_set(name)
        else:
            assert self._service is not None
            await self._service.store.get_set(name)

    async def publish(self, name: str, items: list[EntryInput]) -> list[AppendResult]:
        if self._client is not None:
            return await self._client.publish(name, [input_to_json(it) for it in items])
        assert self._service is not None
        return await self._service.publish(name, items)

    async def revoke(
        self,
        name: str,
        *,
        entry_id: str | None,
        hash_type: str | None,
        hash_value: str | None,
        reason: str,
        text: str | None,
    ) -> AppendResult:
        if self._client is not None:
            return await self._client.revoke(
                name,
                entry_id=entry_id,
                hash_type=hash_type,
                hash_value=hash_value,
                reason=reason,
                text=text,
            )
        assert self._service is not None
        return await self._service.revoke(
            name,
            entry_id=entry_id,
            hash_type=hash_type,
            hash_value=hash_value,
            reason=reason,
            text=text,
        )

    async def log_size(self, name: str) -> int:
        if self._service is not None:
            return (await self._service.store.get_set(name)).size
        # Reading beside a running server is safe on both backends (WAL / MVCC).
        store = await SqlStore.open(self.cfg.database_url)
        try:
            return (await store.get_set(name)).size
        finally:
            await store.close()


@contextlib.asynccontextmanager
async def _operator(cfg: NodeConfig) -> AsyncIterator[_Operator]:
    url = running_server_url(cfg)
    if url is None:
        service = await NodeService.open(cfg)
        try:
            yield _Operator(cfg, service, None)
        finally:
            # close() stops the sequencer and signs the final checkpoint over what was written.
            await service.close()
        return
    from node.client import OperatorClient

    async with OperatorClient(url, load_operator_token(cfg)) as client:
        yield _Operator(cfg, None, client)


@contextlib.asynccontextmanager
async def _service(cfg: NodeConfig) -> AsyncIterator[NodeService]:
    """A NodeService for reads (safe beside a running server: it writes nothing)."""
    service = await NodeService.open(cfg)
    try:
        yield service
    finally:
        await service.close()


# -- commands -------------------------------------------------------------------------------------


def _safe_url(url: str) -> str:
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


async def cmd_init(args: argparse.Namespace) -> int:
    data: Path = args.data
    cfg = create_data_dir(
        data, origin=args.origin, org=args.org, database_url=args.database, listen=args.listen
    )
    store = SqlStore.engines(cfg.database_url)
    try:
        await store.migrate()
    except SetupError as e:
        raise SetupError(
            f"{e.message} (the node directory {data} was created; fix the database and run "
            f"'hashfed db upgrade --data {data}')"
        ) from e
    finally:
        await store.close()
    vkey = load_signer(cfg).verifier().vkey()
    print(f"created a hashfed node in {data}")
    print(f"  origin:         {cfg.origin}")
    print(f"  org:            {cfg.org}")
    print(f"  database:       {_safe_url(cfg.database_url)}")
    print(f"  listen:         {cfg.listen}")
    print(f"  vkey:           {vkey}")
    print(f"  operator token: {data / TOKEN_FILE} (mode 0600; keep it secret)")
    print("next:")
    print(f"  hashfed set create demo --tlp clear --data {data}")
    print(f"  hashfed serve --data {data}")
    return 0


async def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from node.storage import migrate

    cfg = load_config(args.data)
    store = SqlStore.engines(cfg.database_url)
    try:
        await store.migrate()
    finally:
        await store.close()
    print(f"database schema is at revision {migrate.head_revision()}")
    return 0


async def cmd_serve(args: argparse.Namespace) -> int:
    from node.server.app import serve

    cfg = load_config(args.data)
    if args.listen is not None:
        parse_listen(args.listen)
    running = running_server_url(cfg)
    if running is not None:
        raise SetupError(f"a hashfed serve is already running on {cfg.data_dir} at {running}")
    # Opening the store here refuses an outdated schema before anything binds a port.
    store = await SqlStore.open(cfg.database_url)
    try:
        names = [s.name for s in await store.list_sets()]
    finally:
        await store.close()
    ready = asyncio.Event()
    server = asyncio.create_task(serve(cfg, args.listen, ready=ready))
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({server, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if waiter in done:
        url = running_server_url(cfg) or f"http://{args.listen or cfg.listen}"
        log.info(
            "serving %s: origin %s, sets: %s", url, cfg.origin, ", ".join(names) or "(none yet)"
        )
    else:
        waiter.cancel()
    await server
    return 0


async def cmd_set_create(args: argparse.Namespace) -> int:
    cfg = load_config(args.data)
    async with _operator(cfg) as op:
        info = await op.create_set(args.name, args.tlp, args.description)
    print(f"created set {info['name']} (TLP:{str(info['tlp']).upper()}, origin {info['origin']})")
    return 0


async def cmd_set_list(args: argparse.Namespace) -> int:
    cfg = load_config(args.data)
    rows: list[dict[str, Any]] = []
    async with _service(cfg) as service:
        for info in await service.store.list_sets():
            counts = await service.store.count_records(info.id)
            row = service.set_json(info)
            row["active"] = counts["active"]
            row["revoked"] = counts.get("entry", 0) - counts["active"]
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ("name", "tlp", "size", "active", "revoked", "origin")
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(*columns)
        for row in rows:
            table.add_row(*(_cell(c, row[c]) for c in columns))
        Console().print(table)
        return 0
    cells = [list(columns), *([_cell(c, row[c]) for c in columns] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _cell(column: str, value: Any) -> str:
    return f"TLP:{str(value).upper()}" if column == "tlp" else str(value)


@contextlib.contextmanager
def _input_stream(name: str) -> Iterator[IO[bytes]]:
    """The input as a seekable binary file; stdin ('-') is spooled to a temporary file."""
    if name == "-":
        with tempfile.TemporaryFile(prefix="hashfed-publish-") as spool:
            shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
            spool.seek(0)
            yield spool
        return
    try:
        f = open(name, "rb")  # noqa: SIM115 (closed below; the error path must not catch the body)
    except OSError as e:
        raise BadRequest(f"cannot read {name}: {e.strerror or e}", field="file") from e
    with f:
        yield f


def _chunks(stream: IO[bytes], fmt: str) -> Iterator[list[EntryInput]]:
    chunk: list[EntryInput] = []
    for n, item in iter_inputs(stream, fmt):
        if isinstance(item, Exception):  # pass 1 accepted it: the file changed under us
            raise BulkInputError([(n, str(item))], 1)
        chunk.append(item)
        if len(chunk) >= PUBLISH_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Progress:
    """A rich progress bar on stderr when it is a terminal; nothing otherwise."""

    def __init__(self, total: int, label: str) -> None:
        self._bar: Any = None
        self._task: Any = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._bar.add_task(label, total=total)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)


async def cmd_publish(args: argparse.Namespace) -> int:
    cfg = load_config(args.data)
    check_set_name(args.set)
    with _input_stream(args.file) as stream:
        fmt = args.format or detect_format(args.file, stream.read(4096))
        async with _operator(cfg) as op:
            await op.check_set(args.set)
            # Pass 1: the whole file, streaming. Any bad line and nothing is published.
            stream.seek(0)
            staged = None
            if op.service is not None:
                # No server: build each record once now, append the spooled bytes in pass 2.
                staged = importer.stage(op.service, args.set, stream, fmt)
                total = staged.count
            else:
                total = check_all(iter_inputs(stream, fmt))
                stream.seek(0)
            appended = duplicates = 0
            with _Progress(total, f"publishing to {args.set}") as progress:
                chunks: Iterator[list[Any]] = (
                    staged.chunks(IMPORT_CHUNK) if staged is not None else _chunks(stream, fmt)
                )
                for chunk in chunks:
                    try:
                        if staged is not None and op.service is not None:
                            results = await op.service.sequencer.append(args.set, chunk)
                        else:
                            results = await op.publish(args.set, chunk)
                    except NodeError as e:
                        if appended or duplicates:
                            e.message += (
                                f" (after {appended + duplicates} of {total} lines were "
                                "published; publishing the file again adds only the rest)"
                            )
                        raise
                    new = sum(1 for r in results if r.status == "appended")
                    appended += new
                    duplicates += len(results) - new
                    progress.advance(len(chunk))
            if staged is not None:
                staged.close()
            size = await op.log_size(args.set)
    print(
        f"published {appended} new entries ({duplicates} duplicates) to {args.set}; "
        f"log size {size}"
    )
    return 0


async def cmd_revoke(args: argparse.Namespace) -> int:
    cfg = load_config(args.data)
    async with _operator(cfg) as op:
        result = await op.revoke(
            args.set,
            entry_id=args.entry,
            hash_type=args.hash_type,
            hash_value=args.hash_value,
            reason=args.reason,
            text=args.text,
        )
    print(f"revoked in {args.set}: revocation {result.record_id} at index {result.index}")
    return 0


async def cmd_lookup(args: argparse.Namespace) -> int:
    cfg = load_config(args.data)
    value = hashtypes.normalize_value(args.hash_type, args.hash_value)
    async with _service(cfg) as service:
        # the merged view: this node's sets and its mirrors of partners' sets
        visible = await service.store.list_sets(kind=None)
        answers = await service.lookup(args.hash_type, value, visible)
        views = [await service.view_fields(a) for a in answers]
    matches: list[dict[str, Any]] = []
    for a, view in zip(answers, views, strict=True):
        match: dict[str, Any] = {
            "set": a.set.name,
            "origin": a.stored.origin,
            "index": a.stored.index,
            "state": "active" if a.stored.revoked_by is None else "revoked",
            "record": json.loads(a.stored.data),
        }
        if a.revocation is not None:
            match["revocation"] = json.loads(encode_record(a.revocation))
        match.update(view)
        matches.append(match)
    out = {"hash_type": args.hash_type, "hash_value": value, "matches": matches}
    print(json.dumps(out, indent=2))
    return 0


async def cmd_export(args: argparse.Namespace) -> int:
    cfg = load_config(args.data)
    out = Path(args.out)
    async with _service(cfg) as service:
        info = await service.store.get_set(args.set)
        try:
            size = await service.export(info, out)
        except OSError as e:
            raise BadRequest(f"cannot write the export to {out}: {e}", field="out") from e
    print(f"exported {args.set} (tree size {size}) to {out}")
    return 0


async def cmd_vkey(args: argparse.Namespace) -> int:
    print(load_signer(load_config(args.data)).verifier().vkey())
    return 0


async def cmd_version(args: argparse.Namespace) -> int:
    from importlib import metadata

    try:
        version = metadata.version("hashfed")
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        from node import __version__ as version
    print(f"hashfed {version}")
    return 0


# -- argument parsing -----------------------------------------------------------------------------

Command = Callable[[argparse.Namespace], Awaitable[int]]


def build_parser() -> argparse.ArgumentParser:
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument(
        "--data",
        metavar="DIR",
        type=Path,
        default=None,
        help=f"the node's data directory (default: ${DATA_ENV})",
    )
    parser = argparse.ArgumentParser(
        prog="hashfed", description="A federation node for sharing signed hash signals."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, func: Command, help: str, *, needs_data: bool = True, into: Any = sub
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = into.add_parser(
            name, help=help, description=help, parents=[data] if needs_data else []
        )
        p.set_defaults(func=func, needs_data=needs_data)
        return p

    p = command("init", cmd_init, "create a new node: keys, config and database")
    p.add_argument(
        "--origin", required=True, help="the node's log origin, like hashfed.example.org"
    )
    p.add_argument("--org", required=True, help="your organisation id, like example.org")
    p.add_argument("--database", metavar="URL", help="SQLAlchemy URL (default: SQLite in DIR)")
    p.add_argument("--listen", metavar="HOST:PORT", default=DEFAULT_LISTEN)

    db = sub.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", metavar="COMMAND", required=True
    )
    command("upgrade", cmd_db_upgrade, "bring the database schema up to date", into=db)

    p = command("serve", cmd_serve, "run the node until SIGINT/SIGTERM")
    p.add_argument("--listen", metavar="HOST:PORT", help="override the configured address")

    sets = sub.add_parser("set", help="hash sets").add_subparsers(
        dest="set_command", metavar="COMMAND", required=True
    )
    p = command("create", cmd_set_create, "create a hash set", into=sets)
    p.add_argument("name")
    p.add_argument("--tlp", required=True, metavar="LEVEL", help="clear, green, amber, red, ...")
    p.add_argument("--description", default="")
    p = command("list", cmd_set_list, "list the node's sets", into=sets)
    p.add_argument("--json", action="store_true", help="JSON instead of a table")

    p = command("publish", cmd_publish, "publish a JSON Lines or CSV file of hashes to a set")
    p.add_argument("--set", required=True, metavar="NAME")
    p.add_argument("--format", choices=("jsonl", "csv"), help="default: from the file name")
    p.add_argument("file", metavar="FILE", help="input file, '-' for stdin")

    p = command("revoke", cmd_revoke, "revoke an entry of a set")
    p.add_argument("--set", required=True, metavar="NAME")
    p.add_argument("--entry", metavar="ID", help="the entry's record id")
    p.add_argument("--hash-type", metavar="T")
    p.add_argument("--hash-value", metavar="V")
    p.add_argument("--reason", required=True, choices=REVOCATION_REASONS)
    p.add_argument("--text", help="free text for partners")

    p = command("lookup", cmd_lookup, "find a hash in this node's sets and mirrors (JSON)")
    p.add_argument("--hash-type", required=True, metavar="T")
    p.add_argument("--hash-value", required=True, metavar="V")

    p = command("export", cmd_export, "write a set as a tlog-tiles directory for offline audit")
    p.add_argument("--set", required=True, metavar="NAME")
    p.add_argument("--out", required=True, metavar="DIR")

    from node.cli_federation_auth import register as register_federation

    register_federation(sub)  # coordinator ..., trust ..., set grant|revoke-grant|grants
    from node.cli_federation_sync import register as register_sync

    register_sync(sub)  # subscribe, sync, subscriptions
    from node.cli_audit import register as register_audit

    register_audit(sub)  # audit
    from node.cli_witness import register as register_witness

    register_witness(sub)  # witness [init|vkey|add-log|logs|use|require]
    from node.cli_federation_view import register as register_view

    register_view(sub)  # attest, export-view

    command("vkey", cmd_vkey, "print this node's verifier key")
    command("version", cmd_version, "print the hashfed version", needs_data=False)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.needs_data and args.data is None:
        env = os.environ.get(DATA_ENV, "")
        if not env:
            parser.error(f"--data DIR is required (or set {DATA_ENV})")
        args.data = Path(env)
    if args.func is cmd_revoke:
        by_hash = args.hash_type is not None or args.hash_value is not None
        if (args.entry is None) == (not by_hash) or (
            by_hash and (args.hash_type is None or args.hash_value is None)
        ):
            parser.error("revoke needs either --entry ID or both --hash-type and --hash-value")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO if args.func is cmd_serve else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Alembic reports every schema check at INFO; only the node's own lines belong in serve's log.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        status: int = asyncio.run(args.func(args))
        return status
    except (Exception, KeyboardInterrupt) as e:
        # The one place errors become output; the traceback is for debugging only.
        log.debug("command failed", exc_info=True)
        status, message = cli_message(e)
        print(message, file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
