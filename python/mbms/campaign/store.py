"""The campaign's results: a folder of Parquet parts, one row per job, written as rows arrive.

Each flush writes a new part atomically (a temporary file renamed into place), so a campaign
killed at any instant leaves only whole parts; a re-run reads the job ids of the rows already
there and skips those jobs (a resume). Columns are whatever the rows carry; a column missing
from one part reads as null.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from mbms.errors import EnvironmentProblem

ROWS_DIR = "rows"


def _pa() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise EnvironmentProblem("pyarrow", "not installed", "pip install 'mbms[campaign]'") from None
    return pa, pq


class RowWriter:
    """Buffers rows and writes a Parquet part every ``flush_rows`` rows or ``flush_s`` seconds."""

    def __init__(self, out: Path, columns: dict[str, str], flush_rows: int = 64, flush_s: float = 5.0) -> None:
        self.columns = columns
        self.dir = out / ROWS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self._rows: list[dict[str, Any]] = []
        self._last = time.monotonic()
        self._part = 1 + max((int(p.stem.split("-")[1]) for p in self.dir.glob("part-*.parquet")), default=0)
        self.written = 0

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= self.flush_rows or time.monotonic() - self._last >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self._rows:
            return
        pa, pq = _pa()
        types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}
        # one fixed schema for every part, so the folder reads as one table (pyarrow.dataset, pandas)
        schema = pa.schema([(name, types[t]) for name, t in self.columns.items()])
        table = pa.Table.from_pylist([{c: r.get(c) for c in self.columns} for r in self._rows], schema=schema)
        final = self.dir / f"part-{self._part:05d}.parquet"
        tmp = final.with_suffix(".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        self._part += 1
        self.written += len(self._rows)
        self._rows.clear()


def read_rows(out: Path) -> list[dict[str, Any]]:
    """Every row written so far (all parts), as dicts."""
    _, pq = _pa()
    rows: list[dict[str, Any]] = []
    for part in sorted((out / ROWS_DIR).glob("part-*.parquet")):
        rows.extend(pq.read_table(part).to_pylist())
    return rows


def done_ids(out: Path) -> set[str]:
    """Job ids of the rows already written: a resume skips them (errors included: a job that
    failed is a finished row; delete its part to run it again)."""
    if not (out / ROWS_DIR).is_dir():
        return set()
    _, pq = _pa()
    ids: set[str] = set()
    for part in (out / ROWS_DIR).glob("part-*.parquet"):
        ids.update(pq.read_table(part, columns=["job_id"]).column("job_id").to_pylist())
    return ids
