"""The SQLite store: the one place a sweep's state lives.

- ``rows``: one result row per measure job key, committed the moment the job finishes, so a killed
  sweep loses nothing and a re-run skips it instead of adding a duplicate;
- ``budgets``: one entry per compress job (a method at one budget on one baseline): done or failed,
  with the variants it produced;
- ``variants``: per (compress job, variant) what every measure job of it needs (artifact paths and
  hashes, reference logits, the target-independent row columns), so a re-run measures a missing
  cell without compressing again;
- ``phases``: wall seconds per phase of every job (baseline, compress, export, reference, cell),
  for the end-of-sweep breakdown and the dry run's estimate of the time left.

Only the driver writes the store (executors stream results back to it), so resume and
no-duplicates hold on a cluster exactly as they do locally.
"""
from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

from harness.errors import UserError

FINISHED = ("ok", "skipped")  # error and timeout rows are retried by a re-run, then replaced

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS rows (key TEXT PRIMARY KEY, status TEXT NOT NULL, written REAL NOT NULL,"
    " row TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS budgets (key TEXT PRIMARY KEY, status TEXT NOT NULL, written REAL NOT NULL,"
    " info TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS variants (budget TEXT NOT NULL, variant TEXT NOT NULL, written REAL NOT NULL,"
    " info TEXT NOT NULL, PRIMARY KEY (budget, variant))",
    "CREATE TABLE IF NOT EXISTS phases (job TEXT NOT NULL, kind TEXT NOT NULL, phase TEXT NOT NULL,"
    " seconds REAL NOT NULL, written REAL NOT NULL)",
)


def _clean(value: Any) -> Any:
    """JSON cannot hold NaN; a missing number is stored as null."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps({k: _clean(v) for k, v in obj.items()}, default=str)


class Store:
    """Rows keyed by measure job key; ``put`` replaces the row of the same key."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path)
            for statement in _SCHEMA:
                self._db.execute(statement)
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"cannot open results store {self.path}: {exc}") from None

    # ------------------------------------------------------------------ rows
    def status(self, key: str) -> str | None:
        hit = self._db.execute("SELECT status FROM rows WHERE key = ?", (key,)).fetchone()
        return hit[0] if hit else None

    def is_finished(self, key: str) -> bool:
        return self.status(key) in FINISHED

    def finished_keys(self) -> set[str]:
        marks = ",".join("?" * len(FINISHED))
        cur = self._db.execute(f"SELECT key FROM rows WHERE status IN ({marks})", FINISHED)
        return {k for (k,) in cur.fetchall()}

    def put(self, key: str, row: dict[str, Any]) -> None:
        self._db.execute("INSERT OR REPLACE INTO rows (key, status, written, row) VALUES (?, ?, ?, ?)",
                         (key, row.get("status", "ok"), time.time(), _dumps(row)))
        self._db.commit()

    def rows(self) -> list[dict[str, Any]]:
        """All rows in the order they were written."""
        cur = self._db.execute("SELECT key, row FROM rows ORDER BY written")
        return [{**json.loads(r), "key": k} for k, r in cur.fetchall()]

    # ------------------------------------------------------------------ compress jobs and variants
    def budget(self, key: str) -> dict[str, Any] | None:
        """The recorded outcome of compress job ``key`` (status, variants, ...), or None."""
        hit = self._db.execute("SELECT info FROM budgets WHERE key = ?", (key,)).fetchone()
        return json.loads(hit[0]) if hit else None

    def put_budget(self, key: str, info: dict[str, Any], variants: dict[str, dict[str, Any]]) -> None:
        """Record a finished compress job and its variants in one transaction."""
        now = time.time()
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO budgets (key, status, written, info) VALUES (?, ?, ?, ?)",
                             (key, info.get("status", "ok"), now, _dumps(info)))
            self._db.execute("DELETE FROM variants WHERE budget = ?", (key,))
            for name, record in variants.items():
                self._db.execute("INSERT INTO variants (budget, variant, written, info) VALUES (?, ?, ?, ?)",
                                 (key, name, now, _dumps(record)))

    def variants(self, key: str) -> dict[str, dict[str, Any]]:
        cur = self._db.execute("SELECT variant, info FROM variants WHERE budget = ? ORDER BY written, rowid",
                               (key,))
        return {v: json.loads(info) for v, info in cur.fetchall()}

    # ------------------------------------------------------------------ phase timings
    def add_phase(self, job: str, kind: str, phase: str, seconds: float) -> None:
        self._db.execute("INSERT INTO phases (job, kind, phase, seconds, written) VALUES (?, ?, ?, ?, ?)",
                         (job, kind, phase, float(seconds), time.time()))
        self._db.commit()

    def phase_means(self) -> dict[tuple[str, str], float]:
        """Mean seconds per (kind, phase) over every job recorded: what the dry run estimates from."""
        cur = self._db.execute("SELECT kind, phase, AVG(seconds) FROM phases GROUP BY kind, phase")
        return {(k, p): s for k, p, s in cur.fetchall()}

    def phases_since(self, since: float) -> list[tuple[str, str, float]]:
        cur = self._db.execute("SELECT kind, phase, seconds FROM phases WHERE written >= ?", (since,))
        return list(cur.fetchall())

    def close(self) -> None:
        self._db.close()
