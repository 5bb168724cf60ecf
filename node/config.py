"""The node's data directory: its layout, its config file, and its secrets.

Layout of ``--data DIR`` (created by ``hashfed init``, never implicitly by anything else)::

    DIR/hashfed.toml     config: origin, org, database URL, listen address (operator-editable)
    DIR/node.key         the node's Ed25519 signing key, signed-note skey format, mode 0600
    DIR/operator.token   bearer token for the operator write API, mode 0600
    DIR/node.db          the SQLite database (only with the default database URL)
    DIR/serve.json       written by a running `hashfed serve`: its URL and pid (removed on exit)

Secrets are written with O_EXCL and mode 0600 from the first byte, so there is never a moment when a
key file exists with wider permissions.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from node.errors import BadRequest, SetupError
from protocol.note import Signer

CONFIG_FILE = "hashfed.toml"
KEY_FILE = "node.key"
TOKEN_FILE = "operator.token"
SQLITE_FILE = "node.db"
SERVE_FILE = "serve.json"

DEFAULT_LISTEN = "127.0.0.1:8470"

_ORIGIN_RE = re.compile(r"[a-z0-9][a-z0-9.:-]{0,127}(/[a-zA-Z0-9._~-]{1,64}){0,4}")
_ORG_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True)
class NodeConfig:
    """What ``hashfed.toml`` says."""

    data_dir: Path
    origin: str
    org: str
    database_url: str
    listen: str = DEFAULT_LISTEN
    #: public base URL partners reach this node at (defaults to http://<listen>)
    public_url: str = ""

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.listen}"


def check_origin(origin: str) -> str:
    if _ORIGIN_RE.fullmatch(origin) is None:
        raise BadRequest(
            "origin must be a schema-less URL in lower case, like hashfed.example.org",
            field="origin",
        )
    return origin


def check_org(org: str) -> str:
    if _ORG_RE.fullmatch(org) is None:
        raise BadRequest(
            "org must be a lower-case DNS-like id, like example-platform.com", field="org"
        )
    return org


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BadRequest("listen must be HOST:PORT, like 127.0.0.1:8470", field="listen")
    return host.strip("[]"), int(port)


def default_database_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{(data_dir / SQLITE_FILE).resolve()}"


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _write_secret(path: Path, content: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())


def create_data_dir(
    data_dir: Path, *, origin: str, org: str, database_url: str | None, listen: str
) -> NodeConfig:
    """Create a new node's directory, keys and config. Refuses to touch an existing node.

    A crash half-way leaves a directory without hashfed.toml (written last), which ``load`` refuses
    with a clear message; ``init`` then refuses because the key exists. The operator deletes it and
    runs init again: nothing was published with that key yet.
    """
    check_origin(origin)
    check_org(org)
    parse_listen(listen)
    if (data_dir / CONFIG_FILE).exists() or (data_dir / KEY_FILE).exists():
        raise SetupError(f"{data_dir} already holds a hashfed node; refusing to overwrite it")
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    signer = Signer.generate(origin)
    _write_secret(data_dir / KEY_FILE, signer.skey() + "\n")
    _write_secret(data_dir / TOKEN_FILE, secrets.token_urlsafe(32) + "\n")
    url = database_url or default_database_url(data_dir)
    text = (
        "# hashfed node configuration (see deploy/README.md)\n"
        f"origin = {_toml_str(origin)}\n"
        f"org = {_toml_str(org)}\n"
        f"database_url = {_toml_str(url)}\n"
        f"listen = {_toml_str(listen)}\n"
        '# public_url = "https://hashfed.example.org"\n'
    )
    tmp = data_dir / (CONFIG_FILE + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, data_dir / CONFIG_FILE)
    return load_config(data_dir)


def load_config(data_dir: Path) -> NodeConfig:
    path = data_dir / CONFIG_FILE
    if not path.exists():
        raise SetupError(
            f"{data_dir} is not a hashfed node (no {CONFIG_FILE}); create one with 'hashfed init'"
        )
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SetupError(f"cannot read {path}: {e}") from e
    try:
        cfg = NodeConfig(
            data_dir=data_dir,
            origin=check_origin(str(raw["origin"])),
            org=check_org(str(raw["org"])),
            database_url=str(raw.get("database_url") or default_database_url(data_dir)),
            listen=str(raw.get("listen", DEFAULT_LISTEN)),
            public_url=str(raw.get("public_url", "")),
        )
    except KeyError as e:
        raise SetupError(f"{path} lacks the setting {e.args[0]}") from e
    except BadRequest as e:
        raise SetupError(f"{path}: {e}") from e
    env_url = os.environ.get("HASHFED_DATABASE_URL")
    if env_url:
        cfg = NodeConfig(**{**cfg.__dict__, "database_url": env_url})
    return cfg


def load_signer(cfg: NodeConfig) -> Signer:
    path = cfg.data_dir / KEY_FILE
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise SetupError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
        return Signer.from_skey(path.read_text().strip())
    except FileNotFoundError as e:
        raise SetupError(f"{path} is missing: the node has no signing key") from e


def load_operator_token(cfg: NodeConfig) -> str:
    path = cfg.data_dir / TOKEN_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError as e:
        raise SetupError(f"{path} is missing: the operator API has no token") from e


def write_serve_file(cfg: NodeConfig, url: str) -> None:
    tmp = cfg.data_dir / (SERVE_FILE + ".tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    os.replace(tmp, cfg.data_dir / SERVE_FILE)


def remove_serve_file(cfg: NodeConfig) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(cfg.data_dir / SERVE_FILE)


def running_server_url(cfg: NodeConfig) -> str | None:
    """The URL of a `hashfed serve` running on this data directory, if its process is alive."""
    try:
        info = json.loads((cfg.data_dir / SERVE_FILE).read_text())
        pid, url = int(info["pid"]), str(info["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid == os.getpid():
        # A stale file naming us: in a container every run is pid 1, so a killed run's file
        # would otherwise name its own successor.
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return url
