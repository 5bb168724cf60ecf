"""The README's tour runs as written: every command of "A node in five minutes", in order.

The block is taken from README.md itself and run with bash (-e, so any failing command fails the
test) in a scratch directory where `.venv/bin/hashfed` and `python` point at this checkout, on a
node created the way `scripts/node` creates one. It runs without a server, so `publish` and
`revoke` take the direct path (the server path is covered by tests/test_cli.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def tour_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## A node in five minutes", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None, "README lost its tour block"
    return match.group(1)


def test_readme_tour_runs_as_written(tmp_path: Path) -> None:
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, module in (("hashfed", "node.cli"), ("python", None)):
        shim = bin_dir / name
        target = f'exec "{sys.executable}" -m {module} "$@"' if module else \
            f'exec "{sys.executable}" "$@"'
        shim.write_text(f"#!/bin/sh\n{target}\n")
        shim.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("HASHFED_DATA", None)
    # What scripts/node does on first run, before the README's commands.
    setup = (
        "hashfed init --data ./node-data --origin localhost/hashfed --org example.org >/dev/null\n"
        "hashfed set create demo --tlp clear --data ./node-data >/dev/null\n"
    )
    script = "set -euo pipefail\n" + setup + tour_block()
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "published 1 new entries" in out.stdout
    assert '"state": "active"' in out.stdout
    assert "revoked in csam" in out.stdout
    assert (tmp_path / "csam-export" / "checkpoint").exists()
    assert "PASS" in out.stdout.upper()
