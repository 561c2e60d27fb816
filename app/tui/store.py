"""Conversation history in SQLite (stdlib sqlite3).

Every message is written, and committed, the moment it is complete — a reply stopped
half-way too, with its status — so killing the app at any point loses at most the reply
still streaming. The database runs in WAL mode, which makes a committed message survive
a kill -9 of the process.

Problems with the file never crash the app: a corrupt or unreadable database is moved
aside (kept for the user) and a fresh one is started, with a notice for the UI; a write
that fails later turns history off for the session, again with a notice.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from array import array
from dataclasses import dataclass, field
from contextlib import contextmanager
from typing import Iterator, Sequence

SCHEMA_VERSION = 2


#: Upgrade steps: entry i takes a database from user_version i to i + 1. Each step's
#: statements run in one transaction together with the version bump.
MIGRATIONS: list[tuple[str, ...]] = [
    (  # 1: conversations and their messages (token ids kept so replies are never re-tokenized)
        """CREATE TABLE conversations (
            id       INTEGER PRIMARY KEY,
            title    TEXT NOT NULL,
            model    TEXT NOT NULL,
            template TEXT NOT NULL,
            system   TEXT NOT NULL DEFAULT '',
            created  REAL NOT NULL,
            updated  REAL NOT NULL)""",
        """CREATE TABLE messages (
            id              INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role            TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
            text            TEXT NOT NULL,
            token_ids       BLOB,
            status          TEXT NOT NULL DEFAULT 'complete',
            created         REAL NOT NULL)""",
        "CREATE INDEX messages_by_conversation ON messages(conversation_id, id)",
    ),
    (  # 2: per-reply figures (tok/s, ttft, seed) for a reopened chat, and the tokenizer a
       #    conversation's ids belong to, so stored ids are reused only with that tokenizer
        "ALTER TABLE messages ADD COLUMN stats TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE conversations ADD COLUMN tokenizer TEXT NOT NULL DEFAULT ''",
    ),
]
assert len(MIGRATIONS) == SCHEMA_VERSION


def default_path() -> str:
    """$XDG_DATA_HOME/llama-chat/history.db, else ~/.local/share/llama-chat/history.db."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "llama-chat", "history.db")


@dataclass(frozen=True)
class ConversationInfo:
    id: int
    title: str
    model: str
    template: str
    system: str
    tokenizer: str
    updated: float
    n_messages: int = 0


@dataclass(frozen=True)
class MessageRecord:
    id: int
    role: str
    text: str
    token_ids: tuple[int, ...] | None
    status: str
    stats: dict = field(default_factory=dict)


def _pack(ids: Sequence[int] | None) -> bytes | None:
    return None if ids is None else array("i", ids).tobytes()


def _unpack(blob: bytes | None) -> tuple[int, ...] | None:
    if blob is None:
        return None
    a = array("i")
    a.frombytes(blob)
    return tuple(a)


class HistoryStore:
    """The history database. Use `HistoryStore.open(path)`; all methods are UI-thread only."""

    def __init__(self, path: str, db: sqlite3.Connection | None, notice: str | None = None) -> None:
        self.path = path
        self.db = db
        self.notices: list[str] = [notice] if notice else []

    @property
    def enabled(self) -> bool:
        return self.db is not None

    # -- opening -------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | None = None) -> "HistoryStore":
        """Open (creating or upgrading) the database; never raises for a bad file."""
        path = path or default_path()
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        except OSError as e:
            return cls(path, None, f"history is off: cannot create {os.path.dirname(path)}: {e.strerror}")
        try:
            return cls(path, cls._connect(path))
        except _TooNew as e:
            return cls(path, None, str(e))
        except sqlite3.Error as e:
            moved = _move_aside(path)
            if moved is None:
                return cls(path, None, f"history is off: {path} is unusable ({e}) and cannot be moved aside")
            try:
                db = cls._connect(path)
            except sqlite3.Error as e2:
                return cls(path, None, f"history is off: cannot create {path}: {e2}")
            return cls(path, db, f"the history database was unreadable ({e}); it was moved to "
                                 f"{moved} and a new one was started")

    @staticmethod
    def _connect(path: str) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None)  # autocommit; explicit transactions
        try:
            db.execute("PRAGMA foreign_keys = ON")
            check = db.execute("PRAGMA quick_check").fetchone()
            if not check or check[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check[0] if check else '?'}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:  # leave a newer app's file exactly as it is
                raise _TooNew(f"history is off: {path} was written by a newer llama-chat "
                              f"(schema {version}, this one knows {SCHEMA_VERSION})")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across process kills
            for step in range(version, SCHEMA_VERSION):
                with _transaction(db):
                    for statement in MIGRATIONS[step]:
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version = {step + 1}")
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        if self.db is not None:
            try:
                self.db.close()
            except sqlite3.Error:
                pass
            self.db = None

    # -- writing -------------------------------------------------------------------
    def _write(self, sql: str, params: tuple) -> int | None:
        if self.db is None:
            return None
        try:
            cur = self.db.execute(sql, params)  # autocommit: one statement, one transaction
            return cur.lastrowid
        except sqlite3.Error as e:
            self.notices.append(f"history is off for this session: writing {self.path} failed ({e})")
            self.close()
            return None

    def new_conversation(self, title: str, model: str, template: str, system: str,
                         tokenizer: str) -> int | None:
        now = time.time()
        return self._write(
            "INSERT INTO conversations (title, model, template, system, tokenizer, created, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", (title, model, template, system, tokenizer, now, now))

    def add_message(self, conversation_id: int, role: str, text: str,
                    token_ids: Sequence[int] | None, status: str = "complete",
                    stats: dict | None = None) -> int | None:
        if self.db is None:
            return None
        now = time.time()
        try:
            with _transaction(self.db):  # the message and the conversation's timestamp
                cur = self.db.execute(
                    "INSERT INTO messages (conversation_id, role, text, token_ids, status, stats, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (conversation_id, role, text, _pack(token_ids), status,
                     json.dumps(stats or {}), now))
                self.db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
            return cur.lastrowid
        except sqlite3.Error as e:
            self.notices.append(f"history is off for this session: writing {self.path} failed ({e})")
            self.close()
            return None

    def set_status(self, message_id: int, status: str) -> None:
        """E.g. mark a reply 'replaced' when it is regenerated (kept, but not shown)."""
        self._write("UPDATE messages SET status = ? WHERE id = ?", (status, message_id))

    def set_system(self, conversation_id: int, system: str) -> None:
        self._write("UPDATE conversations SET system = ? WHERE id = ?", (system, conversation_id))

    def delete_conversation(self, conversation_id: int) -> None:
        self._write("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # -- reading -------------------------------------------------------------------
    def conversations(self, limit: int = 200) -> list[ConversationInfo]:
        if self.db is None:
            return []
        try:
            rows = self.db.execute(
                "SELECT c.id, c.title, c.model, c.template, c.system, c.tokenizer, c.updated,"
                " (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id"
                "  AND m.status != 'replaced')"
                " FROM conversations c ORDER BY c.updated DESC, c.id DESC LIMIT ?", (limit,)).fetchall()
        except sqlite3.Error as e:
            self.notices.append(f"cannot read history: {e}")
            return []
        return [ConversationInfo(*r) for r in rows]

    def conversation(self, conversation_id: int) -> ConversationInfo | None:
        return next((c for c in self.conversations(10_000) if c.id == conversation_id), None)

    def messages(self, conversation_id: int) -> list[MessageRecord]:
        if self.db is None:
            return []
        try:
            rows = self.db.execute(
                "SELECT id, role, text, token_ids, status, stats FROM messages"
                " WHERE conversation_id = ? AND status != 'replaced' ORDER BY id",
                (conversation_id,)).fetchall()
        except sqlite3.Error as e:
            self.notices.append(f"cannot read history: {e}")
            return []
        out = []
        for mid, role, text, blob, status, stats in rows:
            try:
                st = json.loads(stats) if stats else {}
            except ValueError:
                st = {}
            out.append(MessageRecord(mid, role, text, _unpack(blob), status, st))
        return out

    def take_notices(self) -> list[str]:
        out, self.notices = self.notices, []
        return out


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class _TooNew(Exception):
    pass


def _move_aside(path: str) -> str | None:
    """Rename a broken database (and its WAL/SHM files) to path.corrupt-<time>."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = f"{path}.corrupt-{stamp}"
    n = 1
    while os.path.exists(target):
        n += 1
        target = f"{path}.corrupt-{stamp}-{n}"
    try:
        os.replace(path, target)
    except FileNotFoundError:
        pass
    except OSError:
        return None
    for suffix in ("-wal", "-shm"):
        try:
            os.replace(path + suffix, target + suffix)
        except OSError:
            pass
    return target
