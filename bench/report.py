"""The benchmark's output: one table on stdout, the same rows as JSON with machine facts."""

from __future__ import annotations

import datetime
import json
import os
import platform
import ssl
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"

PASS, FAIL, INFO, ERROR, NOT_RUN = "PASS", "FAIL", "info", "ERROR", "n/a"


@dataclass(frozen=True)
class Row:
    """One line of the table. ``verdict`` is PASS, FAIL, info, ERROR or n/a."""

    criterion: str
    target: str
    measured: str
    verdict: str


@dataclass
class Outcome:
    """What one criterion reports: its table rows and its raw figures (for the JSON)."""

    rows: list[Row]
    figures: dict[str, Any] = field(default_factory=dict)


def judged(criterion: str, target: str, measured: str, ok: bool | None) -> Row:
    """A row whose verdict is PASS/FAIL, or info when ``ok`` is None (nothing to compare with)."""
    verdict = INFO if ok is None else PASS if ok else FAIL
    return Row(criterion, target, measured, verdict)


def render(rows: list[Row]) -> str:
    """Rows as an aligned plain-text table."""
    header = Row("criterion", "target", "measured", "pass/fail")
    cells = [[row.criterion, row.target, row.measured, row.verdict] for row in (header, *rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(4)]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in cells]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """What the figures depend on besides the code."""
    versions = {}
    for name in ("h2", "hpack", "hyperframe"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "packages": versions,
    }


def write_json(path: Path, document: dict[str, Any], rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {**document, "rows": [asdict(row) for row in rows]}
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
