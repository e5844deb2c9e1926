"""Read the classifier data (../shared/data/*.jsonl) with the commercial-use rule applied."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

TASK_FILES = {"domain": "domain.jsonl", "jailbreak": "jailbreak.jsonl", "pii": "pii.jsonl", "safety": "safety.jsonl"}


class DataNotFoundError(FileNotFoundError):
    """The shared data folder or one of its files is missing."""


@dataclass(frozen=True)
class Selection:
    """Which rows were used: recorded in model cards as provenance."""

    file: str
    split: str
    commercial_only: bool
    rows: int
    licenses: tuple[tuple[str, int], ...] = ()

    def describe(self) -> str:
        rule = "commercial_ok == true" if self.commercial_only else "all licenses (evaluation only)"
        licenses = ", ".join(f"{name} ({count})" for name, count in self.licenses)
        return f"`{self.file}`, split `{self.split}`, {rule}: {self.rows} rows" + (f"; licenses: {licenses}" if licenses else "")


def load_rows(data_dir: Path, task: str, split: str, commercial_only: bool) -> tuple[list[dict], Selection]:
    """Rows of one task and split; commercial_only must be True for anything that trains shipped weights."""
    path = Path(data_dir) / TASK_FILES[task]
    if not path.is_file():
        raise DataNotFoundError(
            f"{path}: data file not found; pass --data-dir or set SWITCHYARD_DATA_DIR to the shared data folder"
        )
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["split"] == split and (row["commercial_ok"] or not commercial_only):
                rows.append(row)
    licenses = Counter(r["license"] for r in rows).most_common()
    return rows, Selection(path.name, split, commercial_only, len(rows), tuple(licenses))
