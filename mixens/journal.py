"""A job's finished batches, kept on disk as they finish, so that a job that stopped (crash, kill -9, a
scheduler's time limit) and runs again redoes only what it had not finished.

lm-eval's own request cache (`use_cache`) skips sampled generations, which are what the paper's protocol
makes, and caches per request; the journal keeps whole batches under keys that include the batch's seed,
so a resumed job gives the same outputs as a job that never stopped. It is one SQLite file: each batch is
one committed transaction, so a kill at any moment leaves every earlier batch readable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class RequestJournal:
    def __init__(self, path: Path, identity: dict):
        """Open (or create) the journal at `path` for the job described by `identity` (its config); a journal
        written by a job of another identity is emptied first, since its batches answer other questions.

        A journal that cannot be written (a full or read-only disk) does not stop the job: it says so once and
        the job goes on without it, its results held in memory as without a journal."""
        self.path = Path(path)
        self.resumed = 0  # requests answered from the journal
        self._db = None
        try:
            self._open(identity)
        except (sqlite3.Error, OSError) as err:
            self._give_up(err)

    def _open(self, identity: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute("CREATE TABLE IF NOT EXISTS batches (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        wanted = json.dumps(identity, sort_keys=True, default=str)
        row = self._db.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
        if row is not None and row[0] != wanted:
            log.warning("%s was written by a job with another config; starting it afresh.", self.path)
            self._db.execute("DELETE FROM batches")
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('identity', ?)", (wanted,))
        self._db.commit()

    def _give_up(self, err: Exception) -> None:
        log.warning(
            "the journal %s cannot be written (%s); going on without it: a rerun would start over.", self.path, err
        )
        self.close()

    def finished_batches(self) -> int:
        if self._db is None:
            return 0
        return self._db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]

    @staticmethod
    def key(*parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def get(self, key: str, requests: int) -> list | None:
        """The results stored under `key`, counting `requests` as resumed, or None."""
        if self._db is None:
            return None
        row = self._db.execute("SELECT value FROM batches WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        self.resumed += requests
        return json.loads(row[0])

    def put(self, key: str, results: list) -> None:
        if self._db is None:
            return
        try:
            self._db.execute("INSERT OR REPLACE INTO batches VALUES (?, ?)", (key, json.dumps(results)))
            self._db.commit()
        except (sqlite3.Error, OSError) as err:
            self._give_up(err)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
