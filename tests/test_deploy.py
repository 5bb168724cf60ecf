"""Checks of deploy/ that need no Docker engine: static checks of each file, and the entrypoint run.

There is no Docker engine where these were written, so the image is never built here. What can be
checked is: every path the Dockerfile copies exists; its HEALTHCHECK command works against a real
node; compose.yaml is wired as deploy/README.md says (parsed with PyYAML when it is installed,
otherwise text checks only); the systemd unit passes ``systemd-analyze verify`` (when installed);
the example TOML has exactly the keys node/config.py reads; and entrypoint.sh behaves: it is run
with a stub ``hashfed`` to check its decisions, and with the real one to run compose's topology
(an init job, then ``serve`` from a shared directory) outside a container.
"""

from __future__ import annotations

import ast
import glob
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from conftest import free_ports
from sqlalchemy.engine import make_url

from node.config import NodeConfig, load_config

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
ENTRYPOINT = DEPLOY / "entrypoint.sh"
#: the venv's bin directory, where the `hashfed` console script lives
VENV_BIN = Path(sys.executable).parent

# -- Dockerfile -----------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may sit between continuation lines too
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a line continuation"
    return out


def instructions(name: str) -> list[str]:
    return [args for word, args in dockerfile_instructions() if word == name]


def copy_sources() -> Iterator[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context (not from a stage)."""
    for args in instructions("COPY"):
        words = shlex.split(args)
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from=") for f in flags):
            continue
        paths = [w for w in words if not w.startswith("--")]
        yield paths[:-1], paths[-1]


def healthcheck_command() -> list[str]:
    (args,) = instructions("HEALTHCHECK")
    _, sep, command = args.partition(" CMD ")
    assert sep, "HEALTHCHECK must use CMD"
    argv = json.loads(command)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


def test_dockerfile_copies_only_paths_that_exist() -> None:
    copies = list(copy_sources())
    assert copies
    for sources, _dest in copies:
        # Like BuildKit: a wildcard may match nothing as long as the instruction copies something.
        matched = [m for src in sources for m in glob.glob(str(REPO / src))]
        assert matched, f"COPY {sources} matches nothing in the repository"
        for src in sources:
            if not glob.has_magic(src):
                assert (REPO / src).exists(), f"COPY source {src} does not exist"


def test_dockerignore_lets_every_copied_path_through() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for sources, _dest in copy_sources():
        for src in sources:
            assert src.rstrip("*").rstrip("/") in allowed, f"{src} is excluded from the context"


def test_dockerfile_builds_the_node_extra_as_an_unprivileged_user() -> None:
    (base, *_), runtime = instructions("FROM")[0].split(), instructions("FROM")[-1]
    assert base == "python:3.11-slim" and runtime == "python:3.11-slim"
    runs = " ".join(instructions("RUN"))
    assert "pip install '.[node]'" in runs
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "node" in extras["optional-dependencies"]
    (user,) = instructions("USER")
    assert user.split(":")[0] not in {"root", "0"}
    assert json.loads(instructions("VOLUME")[0]) == ["/data"]
    assert instructions("EXPOSE") == ["8470"]
    assert instructions("STOPSIGNAL") == ["SIGTERM"]
    (entrypoint,) = (json.loads(a) for a in instructions("ENTRYPOINT"))
    assert (["deploy/entrypoint.sh"], entrypoint[0]) in list(copy_sources())
    assert json.loads(instructions("CMD")[0]) == ["serve"]
    assert os.access(ENTRYPOINT, os.X_OK), "entrypoint.sh must be executable (git mode 100755)"


def test_healthcheck_needs_no_curl() -> None:
    argv = healthcheck_command()
    assert argv[:2] == ["python", "-c"]
    assert "/healthz" in argv[2]
    for _word, args in dockerfile_instructions():
        assert "curl" not in args and "wget" not in args
    ast.parse(argv[2])


# -- compose.yaml ---------------------------------------------------------------------------------

COMPOSE_TEXT = (DEPLOY / "compose.yaml").read_text() if (DEPLOY / "compose.yaml").exists() else ""


def test_compose_text() -> None:
    """Checks that hold without a YAML parser (PyYAML is not a dependency)."""
    assert "\t" not in COMPOSE_TEXT
    assert re.search(r"^\s+image: postgres:16\s*$", COMPOSE_TEXT, re.M)
    assert "pg_isready" in COMPOSE_TEXT
    assert "condition: service_healthy" in COMPOSE_TEXT
    assert "condition: service_completed_successfully" in COMPOSE_TEXT
    # Creating a node is allowed in exactly one place: the init job.
    assert len(re.findall(r"^\s+HASHFED_INIT:", COMPOSE_TEXT, re.M)) == 1
    # No password in the file: every use interpolates from .env and refuses to run without it.
    uses = 0
    for line in COMPOSE_TEXT.splitlines():
        if line.lstrip().startswith("#"):
            continue
        rest, n = re.subn(r"\$\{POSTGRES_PASSWORD:\?[^}]*\}", "", line)
        uses += n
        setting = rest.strip()
        if setting.startswith("POSTGRES_PASSWORD:"):
            assert setting == "POSTGRES_PASSWORD:", line
        assert "PASSWORD" not in setting.removeprefix("POSTGRES_PASSWORD:"), line
        for password in re.findall(r"://[^:@/\s]+:([^@\s]*)@", rest):
            assert password == "", line
    assert uses >= 2  # the database's own and the node's URL
    assert ":ro" in COMPOSE_TEXT


def load_compose() -> dict[str, Any]:
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        pytest.skip("PyYAML is not installed; test_compose_text covers what text checks can")
    data = yaml.safe_load(COMPOSE_TEXT)
    assert isinstance(data, dict)
    return data


def test_compose_services_are_wired_as_documented() -> None:
    compose = load_compose()
    services: dict[str, Any] = compose["services"]
    assert set(services) == {"postgres", "init", "node-1", "node-2"}

    pg = services["postgres"]
    assert pg["image"] == "postgres:16"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert "pgdata:/var/lib/postgresql/data" in pg["volumes"]
    assert "ports" not in pg

    init = services["init"]
    assert init["command"] == ["prepare"]
    assert init["environment"]["HASHFED_INIT"] == "1"
    assert init["restart"] == "no"
    assert init["depends_on"]["postgres"]["condition"] == "service_healthy"
    data_dir = init["environment"]["HASHFED_DATA"]
    assert f"node-secrets:{data_dir}" in init["volumes"]

    for name in ("node-1", "node-2"):
        node = services[name]
        env = node["environment"]
        assert "HASHFED_INIT" not in env
        assert node["command"] == ["serve"]
        assert f"node-secrets:{env['HASHFED_SHARED_DIR']}:ro" in node["volumes"]
        assert env["HASHFED_DATA"] != env["HASHFED_SHARED_DIR"]
        assert env["HASHFED_DATABASE_URL"] == init["environment"]["HASHFED_DATABASE_URL"]
        assert env["HASHFED_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert node["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert node["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert node["image"] == init["image"]
        assert node["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert (REPO / "deploy" / "Dockerfile").exists()
        for port in node["ports"]:
            assert port.startswith("127.0.0.1:"), "publish on loopback; a TLS proxy faces out"
    assert set(compose["volumes"]) == {"pgdata", "node-secrets"}


# -- systemd unit ---------------------------------------------------------------------------------

UNIT = DEPLOY / "hashfed.service"
UNIT_EXECUTABLE = "/opt/hashfed/bin/hashfed"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;[":
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a setting: {line}"
        settings.setdefault(key, []).append(value)
    return settings


def test_systemd_unit_settings() -> None:
    s = unit_settings()
    one = {k: v[-1] for k, v in s.items()}
    assert one["User"] == "hashfed"
    assert one["Restart"] == "on-failure"
    assert one["KillSignal"] == "SIGTERM"
    assert int(one["TimeoutStopSec"]) >= 30
    for hardening in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices"):
        assert one[hardening] == "yes", hardening
    assert one["ProtectSystem"] == "strict"
    assert one["CapabilityBoundingSet"] == ""
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    data_dir = "/var/lib/" + one["StateDirectory"]
    assert one["Environment"] == f"HASHFED_DATA={data_dir}"
    assert data_dir in one["ReadWritePaths"].split()
    assert one["ExecStartPre"] == f"{UNIT_EXECUTABLE} db upgrade --data ${{HASHFED_DATA}}"
    assert one["ExecStart"] == f"{UNIT_EXECUTABLE} serve --data ${{HASHFED_DATA}}"
    assert not any("init" in v for v in s["ExecStart"] + s["ExecStartPre"])


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify insists that the executable exists; point it at a stub instead of /opt/hashfed.
    stub = tmp_path / "hashfed"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / "hashfed.service"
    unit.write_text(UNIT.read_text().replace(UNIT_EXECUTABLE, str(stub)))
    r = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    # verify exits 0 even for unknown keys, which it only reports: those count as failures too.
    complaints = [line for line in (r.stdout + r.stderr).splitlines() if unit.name in line]
    assert r.returncode == 0 and not complaints, r.stdout + r.stderr


# -- example config -------------------------------------------------------------------------------

EXAMPLE = DEPLOY / "hashfed.example.toml"


def keys_config_reads() -> set[str]:
    """The keys node/config.py's load_config reads from the parsed TOML: raw[...], raw.get(...)."""
    tree = ast.parse((REPO / "node" / "config.py").read_text())
    (func,) = (
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "load_config"
    )
    keys: set[str] = set()
    for node in ast.walk(func):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == "raw"
            and isinstance(node.slice, ast.Constant)
        ):
            keys.add(str(node.slice.value))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "raw"
            and node.func.attr == "get"
            and isinstance(node.args[0], ast.Constant)
        ):
            keys.add(str(node.args[0].value))
    return keys


def test_example_config_has_exactly_the_keys_config_reads() -> None:
    example = tomllib.loads(EXAMPLE.read_text())
    assert set(example) == keys_config_reads()
    assert set(example) == {f.name for f in fields(NodeConfig)} - {"data_dir"}


def test_example_config_comments_every_key() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"[a-z_]+ =", line):
            assert lines[i - 1].startswith("#"), f"no comment above {line!r}"


def test_example_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HASHFED_DATABASE_URL", raising=False)
    shutil.copy(EXAMPLE, tmp_path / "hashfed.toml")
    cfg = load_config(tmp_path)
    example = tomllib.loads(EXAMPLE.read_text())
    assert (cfg.origin, cfg.org, cfg.listen, cfg.public_url) == (
        example["origin"],
        example["org"],
        example["listen"],
        example["public_url"],
    )
    assert example["database_url"] == ""
    assert cfg.database_url == f"sqlite+aiosqlite:///{(tmp_path / 'node.db').resolve()}"


# -- entrypoint.sh: its decisions, with a stub hashfed --------------------------------------------

STUB = r"""#!/usr/bin/env bash
printf '%s\n' "$*" >> "$STUB_LOG"
if [[ "$1" == init ]]; then
    while [[ $# -gt 0 ]]; do
        if [[ "$1" == --data ]]; then dir="$2"; fi
        shift
    done
    mkdir -p "$dir"
    printf 'origin = "x"\n' > "$dir/hashfed.toml"
    printf 'key\n' > "$dir/node.key"
    printf 'token\n' > "$dir/operator.token"
fi
"""


def test_entrypoint_is_valid_bash() -> None:
    r = subprocess.run(["bash", "-n", str(ENTRYPOINT)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


class Stub:
    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        (self.bin / "hashfed").write_text(STUB)
        (self.bin / "hashfed").chmod(0o755)
        self.log = tmp_path / "calls.log"
        self.log.touch()

    def run(self, *args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
        full = {"PATH": f"{self.bin}:/usr/bin:/bin", "STUB_LOG": str(self.log), **env}
        return subprocess.run(
            ["bash", str(ENTRYPOINT), *args],
            env=full,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()


def test_entrypoint_refuses_to_create_a_node_implicitly(tmp_path: Path) -> None:
    stub = Stub(tmp_path)
    data = tmp_path / "data"
    for env in (
        {},
        {"HASHFED_ORIGIN": "hashfed.example.org", "HASHFED_ORG": "example.org"},
        {"HASHFED_INIT": "true", "HASHFED_ORIGIN": "a.example", "HASHFED_ORG": "example.org"},
        {"HASHFED_INIT": "1", "HASHFED_ORIGIN": "hashfed.example.org"},
    ):
        for command in ((), ("serve",), ("prepare",)):
            r = stub.run(*command, env={"HASHFED_DATA": str(data), **env})
            assert r.returncode == 2, (env, command, r.stderr)
            assert "HASHFED_INIT=1" in r.stderr or "HASHFED_ORG" in r.stderr
    assert stub.calls() == []
    assert not (data / "node.key").exists()


def test_entrypoint_creates_upgrades_and_serves(tmp_path: Path) -> None:
    stub = Stub(tmp_path)
    data = tmp_path / "data"
    env = {
        "HASHFED_DATA": str(data),
        "HASHFED_INIT": "1",
        "HASHFED_ORIGIN": "hashfed.example.org",
        "HASHFED_ORG": "example.org",
        "HASHFED_PUBLIC_URL": "https://hashfed.example.org",
        "HASHFED_DATABASE_URL": "postgresql+asyncpg://hashfed:s3cr%40t@postgres:5432/hashfed",
    }
    r = stub.run(env=env)
    assert r.returncode == 0, r.stderr
    assert stub.calls() == [
        f"init --data {data} --origin hashfed.example.org --org example.org "
        "--database postgresql+asyncpg://hashfed@postgres:5432/hashfed",
        f"db upgrade --data {data}",
        f"serve --data {data} --listen 0.0.0.0:8470",
    ]
    assert (
        tomllib.loads((data / "hashfed.toml").read_text())["public_url"]
        == env["HASHFED_PUBLIC_URL"]
    )
    # A node exists now: no init again, even with HASHFED_INIT=1; a stale serve.json is removed.
    (data / "serve.json").write_text('{"url": "http://127.0.0.1:8470", "pid": 1}')
    stub.log.write_text("")
    r = stub.run("serve", "--extra", env={**env, "HASHFED_LISTEN": "127.0.0.1:9000"})
    assert r.returncode == 0, r.stderr
    assert stub.calls() == [
        f"db upgrade --data {data}",
        f"serve --data {data} --listen 127.0.0.1:9000 --extra",
    ]
    assert not (data / "serve.json").exists()


def test_entrypoint_rejects_a_public_url_that_would_break_the_toml(tmp_path: Path) -> None:
    stub = Stub(tmp_path)
    r = stub.run(
        "prepare",
        env={
            "HASHFED_DATA": str(tmp_path / "data"),
            "HASHFED_INIT": "1",
            "HASHFED_ORIGIN": "hashfed.example.org",
            "HASHFED_ORG": "example.org",
            "HASHFED_PUBLIC_URL": 'https://x"\nlisten = "0.0.0.0:1',
        },
    )
    assert r.returncode == 2 and stub.calls() == []


def test_entrypoint_passes_other_commands_to_hashfed(tmp_path: Path) -> None:
    stub = Stub(tmp_path)
    env = {"HASHFED_DATA": str(tmp_path / "none")}
    assert stub.run("set", "create", "demo", "--tlp", "clear", env=env).returncode == 0
    assert stub.run("hashfed", "vkey", env=env).returncode == 0
    assert stub.calls() == ["set create demo --tlp clear", "vkey"]


def test_entrypoint_runs_from_a_shared_directory(tmp_path: Path) -> None:
    stub = Stub(tmp_path)
    shared, private = tmp_path / "shared", tmp_path / "private"
    env = {"HASHFED_SHARED_DIR": str(shared), "HASHFED_DATA": str(private)}
    r = stub.run(env=env)
    assert r.returncode == 2 and "holds no hashfed node" in r.stderr
    shared.mkdir()
    files = {"hashfed.toml": "origin = 'a'\n", "node.key": "k\n", "operator.token": "t\n"}
    for name, text in files.items():
        (shared / name).write_text(text)
        (shared / name).chmod(0o640)
    private.mkdir()
    (private / "node.key").write_text("an old key\n")
    (private / "serve.json").write_text('{"url": "http://127.0.0.1:1", "pid": 1}')
    r = stub.run(env={**env, "HASHFED_INIT": "1"})
    assert r.returncode == 0, r.stderr
    for name in ("hashfed.toml", "node.key", "operator.token"):
        assert (private / name).read_text() == (shared / name).read_text()
        assert (private / name).stat().st_mode & 0o777 == 0o600
    assert not (private / "serve.json").exists()
    assert stub.calls() == [
        f"db upgrade --data {private}",
        f"serve --data {private} --listen 0.0.0.0:8470",
    ]


# -- entrypoint.sh with the real hashfed: compose's topology, outside a container -----------------


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def run_healthcheck(port: int) -> int:
    """The Dockerfile's HEALTHCHECK command, as Docker would run it in the container."""
    argv = healthcheck_command()
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HASHFED_LISTEN": f"0.0.0.0:{port}"}
    r = subprocess.run(
        [sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30, check=False
    )
    return r.returncode


@pytest.mark.slow
async def test_entrypoint_runs_compose_topology(database_url: str, tmp_path: Path) -> None:
    """init job (prepare) into a shared dir, then `serve` from private copies, as compose does.

    On PostgreSQL two serve processes share the database and the identity, like node-1 and node-2.
    """
    if not (VENV_BIN / "hashfed").exists():
        pytest.skip(f"no hashfed console script in {VENV_BIN}")
    base = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HASHFED_DATABASE_URL": database_url}
    shared = tmp_path / "shared"
    init_env = {
        **base,
        "HASHFED_DATA": str(shared),
        "HASHFED_INIT": "1",
        "HASHFED_ORIGIN": "hashfed.example.org",
        "HASHFED_ORG": "example.org",
        "HASHFED_PUBLIC_URL": "https://hashfed.example.org",
    }

    def entrypoint(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(ENTRYPOINT), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    r = entrypoint("prepare", env=init_env)
    assert r.returncode == 0, r.stderr
    config = tomllib.loads((shared / "hashfed.toml").read_text())
    assert config["public_url"] == "https://hashfed.example.org"
    stored, given = make_url(config["database_url"]), make_url(database_url)
    assert stored.password is None
    assert (stored.host, stored.database) == (given.host, given.database)
    key = (shared / "node.key").read_bytes()
    r = entrypoint("prepare", env=init_env)  # compose runs init on every `up`
    assert r.returncode == 0, r.stderr
    assert (shared / "node.key").read_bytes() == key

    ports = free_ports(1 if database_url.startswith("sqlite") else 2)
    procs: list[tuple[subprocess.Popen[bytes], Path, int]] = []
    try:
        for i, port in enumerate(ports):
            private = tmp_path / f"node-{i + 1}"
            private.mkdir(mode=0o700)
            # What a killed previous run leaves in a container: a serve.json naming a live pid.
            (private / "serve.json").write_text(
                json.dumps({"url": "http://127.0.0.1:1", "pid": os.getpid()})
            )
            env = {
                **base,
                "HASHFED_SHARED_DIR": str(shared),
                "HASHFED_DATA": str(private),
                "HASHFED_LISTEN": f"127.0.0.1:{port}",
            }
            with (tmp_path / f"node-{i + 1}.log").open("wb") as logfile:
                proc = subprocess.Popen(
                    ["bash", str(ENTRYPOINT)], env=env, stdout=logfile, stderr=subprocess.STDOUT
                )
            procs.append((proc, private, port))

        deadline = time.monotonic() + 120
        for i, (proc, _private, port) in enumerate(procs):
            while run_healthcheck(port) != 0:
                log = (tmp_path / f"node-{i + 1}.log").read_text()
                assert proc.poll() is None, f"node-{i + 1} exited:\n{log}"
                assert time.monotonic() < deadline, f"node-{i + 1} never became healthy:\n{log}"
                time.sleep(0.3)
            assert http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200

        # The CLI in node-1's data directory finds node-1 and writes through it.
        _proc, private, _port = procs[0]
        r = subprocess.run(
            [str(VENV_BIN / "hashfed"), "set", "create", "demo", "--tlp", "clear"],
            env={**base, "HASHFED_DATA": str(private)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        vkeys = set()
        for _proc, _private, port in procs:
            status, body = http_get(f"http://127.0.0.1:{port}/v1/sets/demo")
            assert status == 200, body
            vkeys.add(json.loads(http_get(f"http://127.0.0.1:{port}/v1/node")[1])["vkey"])
        assert len(vkeys) == 1  # one identity, however many processes

        for proc, _private, _port in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, private, _port in procs:
            assert proc.wait(timeout=60) == 0
            assert not (private / "serve.json").exists()
    finally:
        for proc, _private, _port in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
