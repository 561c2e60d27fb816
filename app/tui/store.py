"""Conversation history in SQLite (stdlib sqlite3).

Every message is written, and committed, the moment it is complete — a reply stopped
half-way too, with its status — so killing the app at any point loses at most the reply
still streaming. The database runs in WAL mode, which makes a committed message survive
a kill -9 of the process. Messages are stored verbatim, as TEXT.

Problems with the file never crash the app, and never cost the user their chats:
- a file that is not a database, or fails its integrity check, is moved aside (kept for
  the user) and a fresh one is started, with a notice;
- a valid file that cannot be written (read-only file or folder) is opened read-only: past
  chats are shown, nothing new is saved, and a notice says so; one that cannot be read at
  all is left exactly as it is and history is off;
- a write that finds the database locked by another process is kept in memory and
  retried (`retry()`, which the app calls on a timer) until the lock goes, in order;
- rows that a hand edit or another program left odd (text stored as a BLOB, a token blob
  whose length is not a whole number of ids, stats that are not a JSON object) are read
  as well as they can be: the text decoded, the ids dropped (re-tokenized), stats empty.

Ids are chosen here rather than by SQLite, so a write that has to wait for a lock still
has its id at once (later writes may refer to it). Another process writing at the same
time could take the same id; the write then takes the next free one and every later
call is translated (`resolve`).
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.parse
from array import array
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from inference.errors import LlamaChatError

SCHEMA_VERSION = 3

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
    (  # 3: which model wrote each reply (the model can change mid-conversation), and a
       #    message's place: shown, an alternative reply kept by regenerate, or a turn
       #    replaced by an edited resend. Version 2's 'replaced' replies become alternatives.
        "ALTER TABLE messages ADD COLUMN model TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE messages ADD COLUMN state TEXT NOT NULL DEFAULT 'shown'",
        "UPDATE messages SET state = 'alternative', status = 'complete' WHERE status = 'replaced'",
        "UPDATE messages SET model = COALESCE((SELECT c.model FROM conversations c"
        " WHERE c.id = messages.conversation_id), '') WHERE role = 'assistant'",
    ),
]
assert len(MIGRATIONS) == SCHEMA_VERSION

#: message.state values
SHOWN, ALTERNATIVE, EDITED = "shown", "alternative", "edited"

#: How long one attempt waits for another process's lock, in ms: short, because it
#: runs on the UI thread; a write that still finds the lock is queued and retried.
BUSY_WAIT_MS = 300
#: How long opening waits for another process's lock (startup, before the UI).
OPEN_WAIT_S = 5.0
#: How long `close()` keeps retrying queued writes before giving up on them.
CLOSE_WAIT_S = 3.0


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
    created: float = 0.0


@dataclass(frozen=True)
class MessageRecord:
    id: int
    role: str
    text: str
    token_ids: tuple[int, ...] | None
    status: str
    stats: dict = field(default_factory=dict)
    model: str = ""
    state: str = SHOWN
    created: float = 0.0


# -- decoding what a row holds, whatever it holds ------------------------------------
#: the first 16 bytes of every SQLite database file
SQLITE_MAGIC = b"SQLite format 3\x00"


def refuse_foreign(path: str) -> None:
    """`--history-db PATH` naming a file that is no SQLite database at all (a mistyped
    path to the user's notes): LlamaChatError, the file left as it is. A damaged history
    keeps SQLite's header and is moved aside by `open`, as before; an empty file is
    filled; the default path is ours and never refused."""
    try:
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            return
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError:
        return   # `open` says why it cannot use the file
    if head != SQLITE_MAGIC:
        raise LlamaChatError(f"{path} is not a SQLite database, so no llama-chat history: choose another "
                             "--history-db (the file was left as it is)")


def _pack(ids: Sequence[int] | None) -> bytes | None:
    return None if ids is None else array("i", ids).tobytes()


def _unpack(blob: object) -> tuple[int, ...] | None:
    """Token ids from a blob; None (re-tokenize) when it is not a whole number of ids."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        return None
    a = array("i")
    if len(blob) % a.itemsize:
        return None
    a.frombytes(bytes(blob))
    return tuple(a)


def _text(value: object) -> str:
    """A TEXT column as str: a BLOB is decoded as UTF-8 (bad bytes replaced), NULL is ''."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def _stats(value: object) -> dict:
    """The stats column: a JSON object, else {} (anything else is not stats)."""
    try:
        parsed = json.loads(_text(value)) if value else {}
    except (ValueError, RecursionError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


class HistoryStore:
    """The history database. Use `HistoryStore.open(path)`; all methods are UI-thread only."""

    def __init__(self, path: str, db: sqlite3.Connection | None, notice: str | None = None,
                 read_only: bool = False, version: int = SCHEMA_VERSION) -> None:
        self.path = path
        self.db = db
        self.read_only = read_only
        self.version = version            # the file's schema (older only when read-only)
        self.notices: list[str] = [notice] if notice else []
        self._pending: list[Callable[[sqlite3.Connection], None]] = []
        self._busy_noticed = False
        self._alias: dict[tuple[str, int], int] = {}
        self._next_id: dict[str, int] = {}

    @property
    def enabled(self) -> bool:
        """History is being kept (a database is open, writable or not)."""
        return self.db is not None

    @property
    def writable(self) -> bool:
        return self.db is not None and not self.read_only

    @property
    def pending(self) -> int:
        """Writes waiting for another process to release its lock."""
        return len(self._pending)

    # -- opening -------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | None = None) -> "HistoryStore":
        """Open (creating or upgrading) the database; never raises for a bad file."""
        path = path or default_path()
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.exists(path) and not os.access(path, os.R_OK):
            return cls(path, None, f"history is off: {path} cannot be read (permission denied); "
                                   "it was left as it is")
        if os.path.exists(path) and not (os.access(path, os.W_OK) and os.access(folder, os.W_OK)):
            return cls.open_read_only(path, "it is read-only")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            return cls(path, None, f"history is off: cannot create {folder}: {e.strerror}")
        deadline = time.monotonic() + OPEN_WAIT_S
        while True:
            try:
                return cls(path, cls._connect(path))
            except _TooNew as e:
                return cls(path, None, str(e))
            except _NotWritable as e:
                return cls.open_read_only(path, str(e))
            except sqlite3.OperationalError as e:   # locked, cannot open, I/O: not damage
                if _is_busy(e) and time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                if _is_busy(e):
                    return cls(path, None, f"history is off: another program kept {path} locked "
                                           f"for over {OPEN_WAIT_S:g} s")
                if not os.path.exists(path):
                    return cls(path, None, f"history is off: cannot create {path}: {e}")
                return cls.open_read_only(path, f"it cannot be opened for writing ({e})")
            except sqlite3.DatabaseError as e:      # not a database, malformed: damage
                damage = str(e)
                break
        moved = _move_aside(path)
        if moved is None:
            return cls(path, None, f"history is off: {path} is damaged ({damage}) and cannot be moved aside")
        try:
            db = cls._connect(path)
        except (sqlite3.Error, _TooNew, _NotWritable) as e2:
            return cls(path, None, f"history is off: cannot create {path}: {e2}")
        return cls(path, db, f"the history database was damaged ({damage}); it was moved to "
                             f"{moved} and a new one was started")

    @classmethod
    def open_read_only(cls, path: str, why: str) -> "HistoryStore":
        """A valid database we may not write: show its chats, save nothing new."""
        uri = "file:" + urllib.parse.quote(os.path.abspath(path))
        last: Exception | None = None
        for query in ("?mode=ro", "?mode=ro&immutable=1"):  # immutable: a WAL file without -shm
            try:
                db = sqlite3.connect(uri + query, uri=True, isolation_level=None)
                check = db.execute("PRAGMA quick_check").fetchone()
                if not check or check[0] != "ok":
                    db.close()
                    return cls(path, None, f"history is off: {path} is {why} and damaged "
                                           f"({check[0] if check else '?'}); it was left as it is")
                version = int(db.execute("PRAGMA user_version").fetchone()[0])
                if version > SCHEMA_VERSION or version < 1:
                    db.close()
                    return cls(path, None, f"history is off: {path} is {why} and has schema {version}; "
                                           "it was left as it is")
                return cls(path, db, f"history is read-only: {path}: {why}; past chats are shown, "
                                     "new messages are not saved", read_only=True, version=version)
            except sqlite3.Error as e:
                last = e
        return cls(path, None, f"history is off: {path} is {why} and cannot be opened ({last}); "
                               "it was left as it is")

    @staticmethod
    def _connect(path: str) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_WAIT_MS / 1000)
        try:
            db.execute("PRAGMA foreign_keys = ON")
            check = db.execute("PRAGMA quick_check").fetchone()
            if not check or check[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check[0] if check else '?'}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:  # leave a newer app's file exactly as it is
                raise _TooNew(f"history is off: {path} was written by a newer llama-chat "
                              f"(schema {version}, this one knows {SCHEMA_VERSION})")
            try:
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across process kills
                for step in range(version, SCHEMA_VERSION):
                    with _transaction(db):
                        for statement in MIGRATIONS[step]:
                            db.execute(statement)
                        db.execute(f"PRAGMA user_version = {step + 1}")
            except sqlite3.OperationalError as e:
                if "readonly" in str(e) or "read-only" in str(e):
                    raise _NotWritable("it cannot be written") from None
                raise
        except BaseException:
            db.close()
            raise
        return db

    def close(self, wait: float = CLOSE_WAIT_S) -> int:
        """Close the database, first giving queued writes up to `wait` seconds. Returns
        how many writes were lost (another process kept its lock)."""
        lost = 0
        if self.db is not None and self._pending:
            deadline = time.monotonic() + wait
            while self._pending and time.monotonic() < deadline:
                self.retry()
                if self._pending:
                    time.sleep(0.1)
            lost = len(self._pending)
            self._pending.clear()
        if self.db is not None:
            try:
                self.db.close()
            except sqlite3.Error:
                pass
            self.db = None
        return lost

    # -- writing -------------------------------------------------------------------
    def resolve(self, table: str, row_id: int | None) -> int | None:
        """The id a row really has (another process may have taken the one first given)."""
        if row_id is None:
            return None
        return self._alias.get((table, row_id), row_id)

    def _new_id(self, table: str) -> int:
        assert self.db is not None
        try:
            top = int(self.db.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0])
        except sqlite3.Error:
            top = 0
        new = max(top + 1, self._next_id.get(table, 1))
        self._next_id[table] = new + 1
        return new

    def _submit(self, op: Callable[[sqlite3.Connection], None]) -> bool:
        """Run a write now, or queue it behind earlier ones that wait for a lock. False
        when history is (now) off for the session."""
        if not self.writable:
            return False
        self._pending.append(op)
        if len(self._pending) == 1:   # else it waits its turn behind a locked write
            self.retry()
        return self.db is not None

    def retry(self, wait_ms: int = BUSY_WAIT_MS) -> None:
        """Run queued writes in order, each waiting at most `wait_ms` for a lock; stop at
        the first that still finds one (a UI timer calls this with 0 while any wait)."""
        if self.db is None or not self._pending:
            return
        try:
            self.db.execute(f"PRAGMA busy_timeout = {max(0, int(wait_ms))}")
        except sqlite3.Error:
            pass
        while self._pending and self.db is not None:
            op = self._pending[0]
            try:
                with _transaction(self.db):
                    op(self.db)
            except sqlite3.Error as e:
                if _is_busy(e):
                    if not self._busy_noticed:
                        self._busy_noticed = True
                        self.notices.append(f"another program holds a lock on {self.path}: your messages "
                                            "are kept and will be saved when it lets go")
                    return
                self.notices.append(f"history is off for this session: writing {self.path} failed ({e})")
                self._pending.clear()
                self.close(wait=0)
                return
            self._pending.pop(0)
        if not self._pending and self._busy_noticed:
            self._busy_noticed = False
            self.notices.append("the history database is free again: everything was saved")

    def _insert(self, table: str, columns: tuple[str, ...], values: Callable[[], tuple],
                touch: int | None = None) -> int | None:
        """INSERT with an id chosen now; `touch`: a conversation whose `updated` follows."""
        if not self.writable:
            return None
        given = self._new_id(table)
        sql = f"INSERT INTO {table} (id, {', '.join(columns)}) VALUES ({', '.join('?' * (len(columns) + 1))})"

        def op(db: sqlite3.Connection) -> None:
            row_id = self.resolve(table, given)
            vals = values()
            try:
                db.execute(sql, (row_id, *vals))
            except sqlite3.IntegrityError:
                if db.execute(f"SELECT 1 FROM {table} WHERE id = ?", (row_id,)).fetchone() is None:
                    raise   # not an id clash: a real constraint failure
                row_id = int(db.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}").fetchone()[0])
                self._alias[(table, given)] = row_id
                self._next_id[table] = max(self._next_id.get(table, 1), row_id + 1)
                db.execute(sql, (row_id, *vals))
            if touch is not None:
                db.execute("UPDATE conversations SET updated = ? WHERE id = ?",
                           (time.time(), self.resolve("conversations", touch)))

        return given if self._submit(op) else None

    def _update(self, sql: str, params: Callable[[], tuple]) -> None:
        self._submit(lambda db: db.execute(sql, params()) and None)

    def new_conversation(self, title: str, model: str, template: str, system: str,
                         tokenizer: str) -> int | None:
        now = time.time()
        return self._insert("conversations", ("title", "model", "template", "system", "tokenizer",
                                              "created", "updated"),
                            lambda: (title, model, template, system, tokenizer, now, now))

    def add_message(self, conversation_id: int, role: str, text: str,
                    token_ids: Sequence[int] | None, status: str = "complete",
                    stats: dict | None = None, model: str = "", state: str = SHOWN) -> int | None:
        now = time.time()
        stats_json = json.dumps(stats or {})
        return self._insert(
            "messages", ("conversation_id", "role", "text", "token_ids", "status", "stats", "model",
                         "state", "created"),
            lambda: (self.resolve("conversations", conversation_id), role, text, _pack(token_ids),
                     status, stats_json, model, state, now),
            touch=conversation_id)

    def set_state(self, message_id: int, state: str) -> None:
        """shown / alternative (a reply kept by regenerate) / edited (replaced by an edit)."""
        self._update("UPDATE messages SET state = ? WHERE id = ?",
                     lambda: (state, self.resolve("messages", message_id)))

    def update_reply(self, message_id: int, text: str, token_ids: Sequence[int] | None, status: str,
                     stats: dict | None = None) -> None:
        """A reply continued where it was cut: its text, ids, status and figures now."""
        stats_json = json.dumps(stats or {})
        self._update("UPDATE messages SET text = ?, token_ids = ?, status = ?, stats = ? WHERE id = ?",
                     lambda: (text, _pack(token_ids), status, stats_json, self.resolve("messages", message_id)))

    def set_status(self, message_id: int, status: str) -> None:
        self._update("UPDATE messages SET status = ? WHERE id = ?",
                     lambda: (status, self.resolve("messages", message_id)))

    def set_system(self, conversation_id: int, system: str) -> None:
        self._update("UPDATE conversations SET system = ? WHERE id = ?",
                     lambda: (system, self.resolve("conversations", conversation_id)))

    def rename(self, conversation_id: int, title: str) -> None:
        self._update("UPDATE conversations SET title = ? WHERE id = ?",
                     lambda: (title, self.resolve("conversations", conversation_id)))

    def delete_conversation(self, conversation_id: int) -> None:
        self._update("DELETE FROM conversations WHERE id = ?",
                     lambda: (self.resolve("conversations", conversation_id),))

    # -- reading -------------------------------------------------------------------
    def _column(self, name: str, default: str) -> str:
        """A column of the current schema, or its default in an older read-only file."""
        added = {"stats": 2, "tokenizer": 2, "model": 3, "state": 3}
        return name if self.version >= added.get(name, 1) else f"{default} AS {name}"

    def _read(self, sql: str, params: tuple) -> list[tuple]:
        if self.db is None:
            return []
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            self.notices.append(f"cannot read the history: {e}")
            return []

    def conversations(self, limit: int = 200, query: str = "") -> list[ConversationInfo]:
        """Newest first; `query` keeps those whose title or any message contains it."""
        where, params = "", [limit]
        if query.strip():
            like = "%" + query.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where = (" WHERE c.title LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM messages m"
                     " WHERE m.conversation_id = c.id AND m.text LIKE ? ESCAPE '\\')")
            params = [like, like, limit]
        shown = "m.state = 'shown'" if self.version >= 3 else "m.status != 'replaced'"
        rows = self._read(
            f"SELECT c.id, c.title, c.model, c.template, c.system, {self._column('tokenizer', chr(39) * 2)},"
            f" c.updated, (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id AND {shown}"
            "  AND NOT (m.role = 'user' AND m.text = '')), c.created FROM conversations c" + where +
            " ORDER BY c.updated DESC, c.id DESC LIMIT ?", tuple(params))
        return [ConversationInfo(int(r[0]), _text(r[1]), _text(r[2]), _text(r[3]), _text(r[4]),
                                 _text(r[5]), _number(r[6]), int(r[7] or 0), _number(r[8])) for r in rows]

    def conversation(self, conversation_id: int) -> ConversationInfo | None:
        cid = self.resolve("conversations", conversation_id)
        return next((c for c in self.conversations(1_000_000) if c.id == cid), None)

    def latest(self) -> ConversationInfo | None:
        """The most recently updated conversation."""
        found = self.conversations(1)
        return found[0] if found else None

    def messages(self, conversation_id: int, include_hidden: bool = False) -> list[MessageRecord]:
        """The conversation's messages in order: shown ones and alternative replies (not
        turns replaced by an edit, unless `include_hidden`)."""
        rows = self._read(
            f"SELECT id, role, text, token_ids, status, {self._column('stats', chr(39) + '{}' + chr(39))},"
            f" {self._column('model', chr(39) * 2)}, {self._column('state', chr(39) + 'shown' + chr(39))},"
            " created FROM messages WHERE conversation_id = ? ORDER BY id",
            (self.resolve("conversations", conversation_id),))
        out = []
        for mid, role, text, blob, status, stats, model, state, created in rows:
            role, state = _text(role), _text(state) or SHOWN
            if role not in ("user", "assistant") or (state == EDITED and not include_hidden):
                continue
            status = _text(status) or "complete"
            if status == "replaced":   # a version-2 file opened read-only
                status, state = "complete", ALTERNATIVE
            out.append(MessageRecord(int(mid), role, _text(text), _unpack(blob), status, _stats(stats),
                                     _text(model), state, _number(created)))
        return out

    def take_notices(self) -> list[str]:
        out, self.notices = self.notices, []
        return out


def _is_busy(e: sqlite3.Error) -> bool:
    text = str(e).lower()
    return isinstance(e, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


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


class _NotWritable(Exception):
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
