"""The SQLite store: rows survive a killed sweep, re-runs never duplicate, errors are retried."""
import json
import sqlite3

from harness.engine.store import Store


def test_rows_are_committed_immediately(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    store.put("k1", {"status": "ok", "p50_ms": 1.5})
    # another connection (another process, after a kill) sees the row without a close()
    rows = sqlite3.connect(tmp_path / "r.sqlite").execute("SELECT key, row FROM rows").fetchall()
    assert rows == [("k1", json.dumps({"status": "ok", "p50_ms": 1.5}))]


def test_same_key_replaces_never_duplicates(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    store.put("k", {"status": "error", "error": "boom"})
    assert not store.is_finished("k")
    store.put("k", {"status": "ok"})
    assert store.is_finished("k")
    assert [r["status"] for r in store.rows()] == ["ok"]


def test_skipped_counts_as_finished_and_nan_is_null(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    store.put("s", {"status": "skipped", "x": float("nan")})
    assert store.is_finished("s")
    assert store.rows()[0]["x"] is None


def test_reopen_keeps_rows(tmp_path):
    Store(tmp_path / "r.sqlite").put("a", {"status": "ok"})
    assert [r["key"] for r in Store(tmp_path / "r.sqlite").rows()] == ["a"]
