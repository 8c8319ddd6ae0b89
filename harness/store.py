"""SQLite store of result rows: each row is committed the moment its cell finishes, so a killed
sweep loses nothing, and a cell's key makes a re-run skip it instead of adding a duplicate."""
from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

from harness.errors import UserError

FINISHED = ("ok", "skipped")  # error and timeout rows are retried by a re-run, then replaced


def _clean(value: Any) -> Any:
    """JSON cannot hold NaN; a missing number is stored as null."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


class Store:
    """Rows keyed by cell key; ``put`` replaces the row of the same key."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path)
            self._db.execute("CREATE TABLE IF NOT EXISTS rows (key TEXT PRIMARY KEY, status TEXT NOT NULL,"
                             " written REAL NOT NULL, row TEXT NOT NULL)")
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"cannot open results store {self.path}: {exc}") from None

    def status(self, key: str) -> str | None:
        cur = self._db.execute("SELECT status FROM rows WHERE key = ?", (key,))
        hit = cur.fetchone()
        return hit[0] if hit else None

    def is_finished(self, key: str) -> bool:
        return self.status(key) in FINISHED

    def put(self, key: str, row: dict[str, Any]) -> None:
        row = {k: _clean(v) for k, v in row.items()}
        self._db.execute("INSERT OR REPLACE INTO rows (key, status, written, row) VALUES (?, ?, ?, ?)",
                         (key, row.get("status", "ok"), time.time(), json.dumps(row, default=str)))
        self._db.commit()

    def rows(self) -> list[dict[str, Any]]:
        """All rows in the order they were written."""
        cur = self._db.execute("SELECT key, row FROM rows ORDER BY written")
        return [{**json.loads(r), "key": k} for k, r in cur.fetchall()]

    def close(self) -> None:
        self._db.close()
