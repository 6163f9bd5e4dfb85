"""Presenting results: rich tables for people, JSON and CSV for scripts."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vlmsearch import names
from vlmsearch.search import video_hits

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


def text(value: Any) -> str:
    """``value`` for a table cell or message: control characters and undecodable bytes
    escaped (a file name cannot drive the terminal or forge a row), rich markup quoted."""
    return escape(names.terminal(str(value)))


def note(message: Any, style: str = "bold yellow") -> None:
    """A ``note:`` line on stderr (``style`` colours the word)."""
    err.print(f"[{style}]note:[/{style}] {text(message)}", soft_wrap=True)


def emit_json(data: Any) -> None:
    # exact: JSON escapes control characters itself; names that are not UTF-8 as \xNN
    sys.stdout.write(json.dumps(names.readable_data(data), indent=2, default=str) + "\n")


def emit_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    # exact: the csv module quotes fields holding newlines; names not UTF-8 as \xNN
    w = csv.DictWriter(sys.stdout, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(names.readable_data(r))


def path_lines(rows: Sequence[dict[str, Any]], value: Callable[[dict[str, Any]], str]) -> None:
    """One ``path<TAB>value`` line per row on stdout; a row with an ``error`` goes to
    stderr as ``error path: message`` instead (captions, OCR)."""
    for r in rows:
        if r.get("error"):
            err.print(f"[red]error[/red] {text(r['path'])}: {text(r['error'])}")
        else:
            out.print(f"{text(r['path'])}\t{text(value(r))}")


def hits(items: Sequence[Any], fmt: str, text_column: str | None = None) -> None:
    """Print search hits; ``text_column`` adds that column's text (and the score parts)."""
    rows = [h.to_dict() for h in items]
    if fmt == "json":
        emit_json(rows)
    elif fmt == "csv":
        flat = []
        for r in rows:
            parts = r.pop("scores", None) or {}
            flat.append({**r, **{f"score_{name}": v for name, v in parts.items()}})
        emit_csv(flat, list(flat[0]) if flat else ["rank", "score", "id", "path"])
    else:
        if not rows:
            err.print("no results")
            return
        t = Table(show_edge=False, pad_edge=False, box=None)
        t.add_column("rank", justify="right")
        t.add_column("score", justify="right")
        parts = bool(rows[0].get("scores")) and len(rows[0]["scores"]) > 1
        if parts:
            t.add_column(" + ".join(rows[0]["scores"]), justify="right")
        t.add_column("path", overflow="fold")
        if text_column:
            t.add_column(text_column, overflow="fold")
        boxes = any("box" in r or "error" in r for r in rows)
        if boxes:
            t.add_column("region / note", overflow="fold")
        lines = any("ocr_line" in r for r in rows)
        if lines:
            t.add_column("text in image (box)", overflow="fold")
        for r in rows:
            cells = [str(r["rank"]), f"{r['score']:.4f}"]
            if parts:
                cells.append(" ".join(f"{v:.3f}" for v in r["scores"].values()))
            cells.append(text(video_hits.describe(r) or r["path"]))
            if text_column:
                cells.append(text(r.get(text_column) or ""))
            if boxes:
                box = r.get("box")
                note = " ".join(f"{v:.0f}" for v in box) if box else ""
                cells.append(text(r.get("error") or note))
            if lines:
                cells.append(_ocr_cell(r.get("ocr_line")))
            t.add_row(*cells)
        print_table(t)


def _ocr_cell(line: dict[str, Any] | None) -> str:
    """The matching OCR line and its box's bounds (x0 y0 x1 y1, image pixels)."""
    if not line:
        return ""
    xs = [p[0] for p in line["box"]]
    ys = [p[1] for p in line["box"]]
    return f"{text(line['text'])} ({min(xs):.0f} {min(ys):.0f} {max(xs):.0f} {max(ys):.0f})"


def predictions(items: Sequence[Any], fmt: str) -> None:
    rows = [p.to_dict() for p in items]
    if fmt == "json":
        emit_json(rows)
        return
    if fmt == "csv":
        flat = [{**r, "top": json.dumps(r["top"])} for r in rows]
        emit_csv(flat, ["id", "path", "label", "score", "top", "error"])
        return
    t = Table(show_edge=False, pad_edge=False, box=None)
    t.add_column("label")
    t.add_column("score", justify="right")
    t.add_column("path", overflow="fold")
    for r in rows:
        if r["error"]:
            t.add_row("[red]error[/red]", "", text(f"{r['path']}  ({r['error']})"))
        else:
            label = r["label"]
            if len(r["top"]) > 1:  # --top-k: the runners-up follow the best label
                rest = ", ".join(f"{t['label']} {t['score']:.3f}" for t in r["top"][1:])
                label = f"{label}  ({rest})"
            t.add_row(text(label), f"{r['score']:.3f}", text(r["path"]))
    print_table(t)


def mapping(data: dict[str, Any], title: str = "") -> None:
    t = Table(show_header=False, box=None, title=title or None, title_justify="left")
    t.add_column("key", style="bold")
    t.add_column("value", overflow="fold")
    for k, v in data.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items() if not isinstance(b, dict | list))
        elif isinstance(v, list):
            v = ", ".join(map(str, v)) or "-"
        t.add_row(text(k), text(v))
    print_table(t)


# Wide enough that no row of a table is ever wrapped when printed to a pipe or a file.
_PIPE_WIDTH = 1_000_000


def print_table(t: Table) -> None:
    """A table on stdout: fitted to the terminal, or -- piped or redirected -- one row per
    line with nothing wrapped or folded (and no trailing blanks), so ``grep``/``cut`` work."""
    if out.is_terminal:
        out.print(t)
        return
    wide = Console(width=_PIPE_WIDTH, highlight=False, color_system=None, file=io.StringIO())
    with wide.capture() as cap:
        wide.print(t)
    for line in cap.get().splitlines():
        sys.stdout.write(line.rstrip() + "\n")


def paths(items: Sequence[Any]) -> None:
    """One absolute path per line (``search --paths``), for ``xargs`` and friends: the exact
    bytes the file system has, also for names that are not UTF-8."""
    sys.stdout.flush()
    for h in items:
        sys.stdout.buffer.write(os.fsencode(h.path) + b"\n")
    sys.stdout.buffer.flush()
