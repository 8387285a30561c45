"""Figures the integration tests measure (time to detect and recover from a fault, to stop,
fuzz cases sent), printed and, with RECORD_FIGURES=<file.json>, written there at the end of
the session with the run's command, commit, machine and date (benchmarks/lib/report.py): the
committed result docs/reliability.md quotes them from."""

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.lib.report import provenance

RECORD_ENV = "RECORD_FIGURES"


class Figures:
    """The session's figures, by case (a fault, a way of stopping); a case measured more than
    once (a test repeated) keeps each measurement."""

    def __init__(self) -> None:
        self.measured: dict[str, list[dict[str, Any]]] = {}

    def record(self, case: str, **values: Any) -> None:
        print(f"\n{case}: " + ", ".join(f"{name} {value}" for name, value in values.items()))
        self.measured.setdefault(case, []).append(values)

    def save(self, path: Path) -> None:
        report = provenance("pytest", sys.argv[1:], None) | {"figures": self.measured}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
