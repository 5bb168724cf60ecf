"""Proves that ``protocol`` stays a pure core: it imports without networking, asyncio or databases.

Every module under protocol/ is imported in a fresh interpreter whose import system refuses the
node's libraries (aiohttp, SQLAlchemy, database drivers, asyncio, orjson, ``node`` itself):
protocol may import only the stdlib, cryptography, pydantic and msgspec (orjson behind a guard).
Socket-level stdlib modules are refused when protocol code imports them directly; they are
allowed transitively because cryptography.x509 and typing_extensions pull in ``socket`` for
their own reasons without doing any I/O. orjson is refused too, so this also proves that its
optional import is guarded and the pure-Python fallback loads. A static scan of the source adds
the imports that only run inside functions, which importing a module never executes.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

# Refused wherever the import comes from, because nothing protocol may depend on needs them.
BLOCKED_EVERYWHERE = (
    "aiohttp",
    "aiosqlite",
    "alembic",
    "asyncio",
    "asyncpg",
    "httpx",
    "node",
    "orjson",
    "psycopg",
    "psycopg2",
    "requests",
    "sqlalchemy",
    "sqlite3",
    "_sqlite3",
    "ssl",
    "_ssl",
    "urllib3",
)

# Refused only when a protocol module itself imports them.
BLOCKED_FOR_PROTOCOL = (
    "socket",
    "_socket",
    "select",
    "selectors",
    "socketserver",
    "http.client",
    "http.server",
    "urllib.request",
    "ftplib",
    "smtplib",
)

# Runs in the child interpreter. argv: repo root, then the two JSON lists above.
CHILD = r"""
import builtins
import importlib
import json
import pkgutil
import sys
import traceback

repo_root = sys.argv[1]
everywhere = frozenset(json.loads(sys.argv[2]))
for_protocol = frozenset(json.loads(sys.argv[3]))
sys.path.insert(0, repo_root)


def matches(name, names):
    return any(name == n or name.startswith(n + ".") for n in names)


# Refuses the never-allowed modules, whoever imports them (transitive imports included).
class Refuse:
    def find_spec(self, fullname, path=None, target=None):
        if matches(fullname, everywhere):
            raise ImportError(f"protocol purity: {fullname!r} may not be imported")
        return None


real_import = builtins.__import__


def checked_import(name, globals=None, locals=None, fromlist=(), level=0):
    # __import__ runs for every import statement, even of a module that is already loaded (which
    # a meta_path finder never sees), and its globals say who is importing.
    importer = (globals or {}).get("__name__") or ""
    if level == 0 and (importer == "protocol" or importer.startswith("protocol.")):
        for wanted in [name] + [f"{name}.{item}" for item in fromlist or ()]:
            if matches(wanted, for_protocol):
                raise ImportError(f"protocol purity: {importer} imports {wanted!r}")
    return real_import(name, globals, locals, fromlist, level)


# Forget anything the interpreter start-up already loaded, so every import goes past the finder.
for name in list(sys.modules):
    if matches(name, everywhere):
        del sys.modules[name]
sys.meta_path.insert(0, Refuse())
builtins.__import__ = checked_import

imported, failures = [], {}
try:
    import protocol
except Exception:
    failures["protocol"] = traceback.format_exc()
else:
    imported.append("protocol")

    def on_error(name):
        failures[name] = traceback.format_exc()

    for info in pkgutil.walk_packages(protocol.__path__, "protocol.", onerror=on_error):
        try:
            importlib.import_module(info.name)
        except BaseException:
            failures[info.name] = traceback.format_exc()
        else:
            imported.append(info.name)

leaked = sorted(name for name in sys.modules if matches(name, everywhere))

# The finder must really refuse, or a pass above would prove nothing.
try:
    import asyncio
except ImportError:
    refuses = True
else:
    refuses = False

print(json.dumps({"imported": imported, "failures": failures, "leaked": leaked,
                  "refuses": refuses}))
"""


def import_report(repo_root: Path) -> dict[str, Any]:
    """Import ``protocol`` and every module under it from ``repo_root`` with the blocker active."""
    result = subprocess.run(
        [
            sys.executable,
            "-I",  # no PYTHONPATH, no user site: only the venv and repo_root
            "-c",
            CHILD,
            str(repo_root),
            json.dumps(BLOCKED_EVERYWHERE),
            json.dumps(BLOCKED_FOR_PROTOCOL),
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def _guarded_by_import_error(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """True if ``node`` sits in the body of a ``try`` that catches ImportError."""
    child, parent = node, parents.get(node)
    while parent is not None:
        if isinstance(parent, ast.Try) and child in parent.body:
            for handler in parent.handlers:
                caught = handler.type
                names = caught.elts if isinstance(caught, ast.Tuple) else [caught]
                if any(
                    isinstance(n, ast.Name) and n.id in {"ImportError", "ModuleNotFoundError"}
                    for n in names
                ):
                    return True
        child, parent = parent, parents.get(parent)
    return False


def forbidden_imports(repo_root: Path) -> list[str]:
    """Every import statement under protocol/, even inside functions, of a forbidden module."""
    forbidden = set(BLOCKED_EVERYWHERE) | set(BLOCKED_FOR_PROTOCOL)
    violations = []
    for path in sorted((repo_root / "protocol").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        parents = {
            child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                if not any(module == f or module.startswith(f + ".") for f in forbidden):
                    continue
                # orjson is the one optional accelerator, allowed behind an ImportError guard.
                if module == "orjson" and _guarded_by_import_error(node, parents):
                    continue
                where = path.relative_to(repo_root).as_posix()
                violations.append(f"{where}:{node.lineno}: import {module}")
    return violations


def test_protocol_imports_without_node_libraries() -> None:
    report = import_report(REPO_ROOT)

    failures: dict[str, str] = report["failures"]
    forbidden = {name: tb for name, tb in failures.items() if "protocol purity:" in tb}
    broken = {name: tb for name, tb in failures.items() if name not in forbidden}
    message = ""
    if forbidden:
        message += "protocol modules that import forbidden modules:\n\n" + "\n".join(
            f"--- {name}\n{tb}" for name, tb in sorted(forbidden.items())
        )
    if broken:
        message += "\nprotocol modules that fail to import at all:\n\n" + "\n".join(
            f"--- {name}\n{tb}" for name, tb in sorted(broken.items())
        )
    assert not failures, message
    assert report["leaked"] == [], f"forbidden modules loaded anyway: {report['leaked']}"
    # Guards against discovery silently finding nothing (e.g. a wrong protocol.__path__).
    assert "protocol.errors" in report["imported"], report["imported"]


def test_protocol_source_has_no_forbidden_imports_anywhere() -> None:
    assert (REPO_ROOT / "protocol" / "errors.py").is_file()
    violations = forbidden_imports(REPO_ROOT)
    assert not violations, "forbidden imports in protocol/:\n" + "\n".join(violations)


def _fake_protocol(root: Path) -> None:
    files = {
        "__init__.py": "",
        # the allowed third-party imports: cryptography, pydantic, msgspec
        "clean.py": "import hashlib\nimport pydantic\nimport msgspec\nimport cryptography.x509\n",
        "guarded.py": "try:\n    import orjson\nexcept ImportError:\n    orjson = None\n",
        "direct_socket.py": "import socket\n",
        "sub/__init__.py": "",
        "sub/uses_sqlalchemy.py": "from sqlalchemy import select\n",
        "lazy.py": "def later() -> None:\n    import asyncio\n",
    }
    for name, text in files.items():
        path = root / "protocol" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_checks_catch_violations_in_a_fake_protocol_package(tmp_path: Path) -> None:
    # Without this, a blocker that refused nothing would let the real checks pass vacuously.
    _fake_protocol(tmp_path)

    report = import_report(tmp_path)
    assert set(report["failures"]) == {"protocol.direct_socket", "protocol.sub.uses_sqlalchemy"}
    assert all("protocol purity:" in tb for tb in report["failures"].values())
    assert {"protocol.clean", "protocol.guarded", "protocol.lazy"} <= set(report["imported"])
    assert report["refuses"]

    assert forbidden_imports(tmp_path) == [
        "protocol/direct_socket.py:1: import socket",
        "protocol/lazy.py:2: import asyncio",
        "protocol/sub/uses_sqlalchemy.py:1: import sqlalchemy",
    ]
