"""Rendering an audit: a readable terminal summary, report.json and a self-contained report.html.

The report is one JSON-ready dict (:func:`build_report`); the three renderings are views of it.
Every string that came from the audited log (labels, authors, origins, error messages quoting
records) is escaped in the HTML with :func:`html.escape`; the page loads nothing from elsewhere.
"""

from __future__ import annotations

import html
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from protocol.audit import ExportAuditSummary
from protocol.equivocation import proof_of
from protocol.errors import InconsistentTreeError, ProtocolError
from protocol.jcs import canonicalize

__all__ = ["build_report", "print_report", "render_html", "render_text", "write_report"]

_INDEX_RE = re.compile(r"index (\d+)")
#: a record of another log in the export (members/, an --upstream export): not this log's index
_OTHER_LOG_INDEX_RE = re.compile(r"(members|upstream)/index (\d+)")

#: the checks beyond the tree: (name in ``checks``, report label, what its count counts, key)
_EXTRA_CHECKS = (
    ("re-share receipts", "receipts", "re-share receipts verified back to the original",
     "receipts"),
    ("membership", "membership", "records by an authorised member at their time (members/)",
     "members_checked"),
    ("upstream revocations", "upstream", "upstream revocations propagated",
     "upstream_revocations"),
)


def failure_of(e: ProtocolError) -> dict[str, Any]:
    """An error as a report row: type, message, field, and the leaf index when it names one."""
    row: dict[str, Any] = {"type": type(e).__name__, "message": e.message, "field": e.field}
    m = _INDEX_RE.fullmatch(e.field or "")
    row["index"] = int(m.group(1)) if m else None
    other = _OTHER_LOG_INDEX_RE.fullmatch(e.field or "")
    if other is not None:
        row["other_log"], row["other_index"] = f"{other.group(1)}/", int(other.group(2))
    if isinstance(e, InconsistentTreeError) and e.evidence:
        row["evidence"] = [x.decode("utf-8", "replace") for x in e.evidence]
        proof = proof_of(e)
        if proof is not None:  # write_report saves it as equivocation.json
            row["equivocation_proof"] = proof.to_dict()
    return row


def build_report(
    target: str,
    summary: ExportAuditSummary | None,
    error: ProtocolError | None = None,
    *,
    seconds: float | None = None,
) -> dict[str, Any]:
    """The whole result as one dict: ``ok``, what was audited, the summary, the failures."""
    report: dict[str, Any] = {
        "ok": error is None and summary is not None,
        "target": target,
        "summary": summary.as_dict() if summary is not None else None,
        "failures": [failure_of(error)] if error is not None else [],
    }
    if seconds is not None:
        report["seconds"] = round(seconds, 3)
    return report


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def _key_text(s: Mapping[str, Any]) -> str:
    if s["key_pinned"]:
        return f"{s['vkey']} (pinned by the caller)"
    return (
        f"{s['vkey']} (read from {s['key_source']}: NOT PINNED, this only shows the export is "
        "self-consistent; pass --vkey with the key obtained out of band)"
    )


def _rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    s = report["summary"]
    if s is None:
        return []
    return [
        ("origin", s["origin"]),
        ("size", str(s["size"])),
        ("root", s["root_hash"]),
        ("key", _key_text(s)),
        ("checks", ", ".join(s["checks"])),
        ("entries", f"{s['entries']} ({s['active']} active, {s['revoked']} revoked)"),
        ("records", _counts(s["record_types"])),
        ("revocations", _counts(s["revocation_reasons"])),
        ("labels", _counts(s["labels"])),
        ("authors", _counts(s["authors"])),
        ("hash types", _counts(s["hash_types"])),
        ("older", f"{len(s['older_checkpoints'])} older checkpoints consistent"),
        *((label, text) for _check, label, _ran, text in _check_rows(s)),
    ]


def _check_rows(s: Mapping[str, Any]) -> list[tuple[str, str, bool, str]]:
    """(check, label, ran, result) for each check beyond the tree. Summaries written before a
    check existed lack its keys: it reads as not run."""
    rows = []
    for check, label, what, key in _EXTRA_CHECKS:
        ran = check in s["checks"]
        text = f"{s.get(key, 0)} {what}" if ran else "not run"
        if check == "upstream revocations" and ran:
            logs = ", ".join(s.get("upstream_logs", [])) or "-"
            text += (f", {s.get('upstream_revocations_newer', 0)} newer than the adopted "
                     f"checkpoint (not counted); from {logs}")
        rows.append((check, label, ran, text))
    return rows


def _failure_text(f: Mapping[str, Any]) -> str:
    at = f"record {f['index']}: " if f["index"] is not None else ""
    if f.get("other_log"):
        at = f"{f['other_log']} record {f['other_index']}: "
    return f"{at}{f['type']}: {f['message']}"


def render_text(report: Mapping[str, Any]) -> str:
    lines = [f"audit of {report['target']}: {'PASS' if report['ok'] else 'FAIL'}"]
    lines += [f"  {k:<12} {v}" for k, v in _rows(report)]
    lines += [f"  failure      {_failure_text(f)}" for f in report["failures"]]
    return "\n".join(lines)


def print_report(report: Mapping[str, Any], out: TextIO | None = None) -> None:
    """A rich table on a terminal, plain text otherwise (pipes, files, tests)."""
    out = out if out is not None else sys.stdout
    if not out.isatty():
        print(render_text(report), file=out)
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    verdict = "[bold green]PASS[/]" if report["ok"] else "[bold red]FAIL[/]"
    table = Table(title=f"audit of {report['target']}: {verdict}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in _rows(report):
        table.add_row(k, Text(v))  # Text: record strings are never read as markup
    for f in report["failures"]:
        table.add_row(Text("failure", style="red"), Text(_failure_text(f)))
    Console(file=out).print(table)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}.pass{color:#070}.fail{color:#b00}
code{word-break:break-all}
"""


def _table(title: str, head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    e = html.escape
    out = [f"<h2>{e(title)}</h2>"]
    if not rows:
        return out[0] + "<p>none</p>"
    out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def render_html(report: Mapping[str, Any]) -> str:
    """One HTML page, no scripts and no external assets; every value escaped."""
    e = html.escape
    ok = bool(report["ok"])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">",
        f"<title>hashfed audit: {e(report['target'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Audit of {e(report['target'])}: "
        f"<span class=\"{'pass' if ok else 'fail'}\">{'PASS' if ok else 'FAIL'}</span></h1>",
    ]
    s = report["summary"]
    if s is not None:
        parts.append(_table(
            "Sets", ["origin", "size", "root", "entries", "active", "revoked", "key", "checks"],
            [[s["origin"], s["size"], s["root_hash"], s["entries"], s["active"], s["revoked"],
              _key_text(s), ", ".join(s["checks"])]],
        ))
        parts.append(_table(
            "Checks beyond the tree", ["check", "ran", "result"],
            [[check, "yes" if ran else "no", text] for check, _l, ran, text in _check_rows(s)],
        ))
        parts.append(_table("Sizes", ["record type", "count"], list(s["record_types"].items())))
        parts.append(_table("Organisations", ["author", "records"], list(s["authors"].items())))
        parts.append(_table(
            "Revocations by reason", ["reason", "count"], list(s["revocation_reasons"].items())
        ))
        parts.append(_table("Labels", ["label", "entries"], list(s["labels"].items())))
        parts.append(_table("Hash types", ["hash type", "entries"], list(s["hash_types"].items())))
    parts.append(_table(
        "Failures", ["record index", "error", "message", "field"],
        [[f["index"] if f["index"] is not None else "", f["type"], f["message"], f["field"] or ""]
         for f in report["failures"]],
    ))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json`` (everything) and ``report.html`` into ``out_dir``; return both.

    A failure that proves equivocation is also written on its own as ``equivocation.json``
    (an RFC 8785 EquivocationProof), which ``python -m protocol.audit --equivocation FILE
    --vkey VKEY`` checks with nothing but the protocol package.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    j, h = out_dir / "report.json", out_dir / "report.html"
    j.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    h.write_text(render_html(report), encoding="utf-8")
    for failure in report.get("failures", []):
        proof = failure.get("equivocation_proof")
        if proof is not None:
            (out_dir / "equivocation.json").write_bytes(canonicalize(proof))
    return j, h
