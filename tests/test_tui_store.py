"""The SQLite history: round trips, upgrades, crash safety, damaged files."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

from app.tui.store import MIGRATIONS, SCHEMA_VERSION, HistoryStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_round_trip_keeps_ids_status_and_order(tmp_path):
    s = HistoryStore.open(str(tmp_path / "h.db"))
    c = s.new_conversation("Once", "stories260K", "completion", "", "tok")
    s.add_message(c, "user", "Once", None)
    a = s.add_message(c, "assistant", "old", [7, 8], "complete", {"tokens": 2})
    s.set_status(a, "stopped")
    s.set_state(a, "alternative")
    s.add_message(c, "assistant", "new", [9], "complete", model="SmolLM2")
    msgs = s.messages(c)
    assert [(m.role, m.text, m.token_ids, m.status, m.model) for m in msgs] == [
        ("user", "Once", None, "complete", ""), ("assistant", "old", (7, 8), "stopped", ""),
        ("assistant", "new", (9,), "complete", "SmolLM2")]
    assert msgs[1].stats == {"tokens": 2}
    assert [m.state for m in s.messages(c)] == ["shown", "alternative", "shown"]
    info = s.conversations()[0]
    assert (info.title, info.n_messages, info.tokenizer) == ("Once", 2, "tok"), "alternatives are not counted"
    s.close()


def test_upgrade_from_version_1_keeps_messages(tmp_path):
    path = str(tmp_path / "v1.db")
    db = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        db.execute(statement)
    db.execute("INSERT INTO conversations (title, model, template, created, updated) VALUES ('t', 'm', 'llama2', 0, 0)")
    db.execute("INSERT INTO messages (conversation_id, role, text, created) VALUES (1, 'user', 'hi', 0)")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    s = HistoryStore.open(path)
    assert s.enabled and not s.notices
    assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [m.text for m in s.messages(1)] == ["hi"] and s.messages(1)[0].stats == {}
    s.close()


def test_a_killed_process_loses_no_completed_message(tmp_path):
    path = str(tmp_path / "h.db")
    code = (
        "import os, signal\n"
        "from app.tui.store import HistoryStore\n"
        f"s = HistoryStore.open({path!r})\n"
        "c = s.new_conversation('t', 'm', 'completion', '', 'tok')\n"
        "s.add_message(c, 'user', 'Once', None)\n"
        "s.add_message(c, 'assistant', 'upon', [1, 2, 3], 'stopped')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT)
    assert proc.returncode == -9
    s = HistoryStore.open(path)
    assert [(m.text, m.status) for m in s.messages(1)] == [("Once", "complete"), ("upon", "stopped")]
    s.close()


def test_corrupt_file_is_moved_aside_with_a_notice(tmp_path):
    path = tmp_path / "h.db"
    path.write_bytes(b"\x00garbage" * 512)
    s = HistoryStore.open(str(path))
    assert s.enabled and "moved to" in s.notices[0]
    assert any(p.name.startswith("h.db.corrupt-") for p in tmp_path.iterdir())
    assert s.new_conversation("t", "m", "completion", "", "tok") == 1
    s.close()


def test_newer_schema_is_left_alone(tmp_path):
    path = str(tmp_path / "h.db")
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    s = HistoryStore.open(path)
    assert not s.enabled and "newer llama-chat" in s.notices[0]
    assert os.listdir(tmp_path) == ["h.db"]
    assert s.add_message(1, "user", "x", None) is None  # writes are no-ops, never errors


def test_unwritable_location_turns_history_off(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    s = HistoryStore.open(str(blocker / "sub" / "h.db"))
    assert not s.enabled and s.notices and s.conversations() == []


def _v2_file(path: str) -> None:
    db = sqlite3.connect(path)
    for step in MIGRATIONS[:2]:
        for statement in step:
            db.execute(statement)
    db.execute("INSERT INTO conversations (title, model, template, created, updated) VALUES ('t', 'stories', 'llama2', 0, 0)")
    db.execute("INSERT INTO messages (conversation_id, role, text, created) VALUES (1, 'user', 'hi', 0)")
    db.execute("INSERT INTO messages (conversation_id, role, text, status, created) VALUES (1, 'assistant', 'old', 'replaced', 1)")
    db.execute("INSERT INTO messages (conversation_id, role, text, status, created) VALUES (1, 'assistant', 'new', 'stopped', 2)")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()


def test_upgrade_from_version_2_keeps_replaced_replies_as_alternatives(tmp_path):
    path = str(tmp_path / "v2.db")
    _v2_file(path)
    s = HistoryStore.open(path)
    assert s.writable and not s.notices
    msgs = s.messages(1)
    assert [(m.text, m.status, m.state, m.model) for m in msgs] == [
        ("hi", "complete", "shown", ""), ("old", "complete", "alternative", "stories"),
        ("new", "stopped", "shown", "stories")]
    s.close()


def test_rows_left_odd_by_another_program_are_read_not_fatal(tmp_path):
    """Text stored as a BLOB, a token blob that is not whole ids, stats that are not an
    object, a NULL-ish title: each is read as well as it can be."""
    path = str(tmp_path / "h.db")
    s = HistoryStore.open(path)
    c = s.new_conversation("t", "m", "chatml", "", "tok")
    s.close()
    db = sqlite3.connect(path)
    rows = [("user", "caf\u00e9".encode() + b" \xff", None, "{}"),
            ("assistant", "ok", b"\x01\x02\x03", "[1, 2]"),
            ("assistant", b"bytes reply", b"\x01\x00\x00\x00", "5"),
            ("assistant", "last", None, "not json {")]
    for role, text, blob, stats in rows:
        db.execute("INSERT INTO messages (conversation_id, role, text, token_ids, stats, created)"
                   " VALUES (?, ?, ?, ?, ?, 0)", (c, role, text, blob, stats))
    db.execute("UPDATE conversations SET title = ? WHERE id = ?", (b"\xffbin", c))
    db.commit()
    db.close()
    s = HistoryStore.open(path)
    msgs = s.messages(c)
    assert [m.text for m in msgs] == ["caf\u00e9 \ufffd", "ok", "bytes reply", "last"]
    assert [m.token_ids for m in msgs] == [None, None, (1,), None]
    assert all(m.stats == {} for m in msgs)
    assert s.conversations()[0].title == "\ufffdbin"
    s.close()


def _pretend_permissions(monkeypatch, readable: bool, writable: bool) -> None:
    """Root ignores file modes, so the checks the store makes are answered here."""
    import app.tui.store as store_mod

    real = os.access

    def access(path, mode, *a, **kw):
        if mode & os.W_OK and not writable:
            return False
        if mode & os.R_OK and not readable:
            return False
        return real(path, mode, *a, **kw)

    monkeypatch.setattr(store_mod.os, "access", access)


def _digest(path) -> bytes:
    import hashlib
    return hashlib.sha256(open(path, "rb").read()).digest()


def test_a_read_only_database_is_opened_read_only_not_moved_aside(tmp_path, monkeypatch):
    path = str(tmp_path / "h.db")
    s = HistoryStore.open(path)
    c = s.new_conversation("kept", "m", "chatml", "", "tok")
    s.add_message(c, "user", "hello", None)
    s.close()
    before = _digest(path)
    os.chmod(path, 0o444)
    _pretend_permissions(monkeypatch, readable=True, writable=False)
    s = HistoryStore.open(path)
    assert s.enabled and s.read_only and not s.writable
    assert "read-only" in s.notices[0] and "moved" not in s.notices[0]
    assert [c.title for c in s.conversations()] == ["kept"]
    assert [m.text for m in s.messages(c)] == ["hello"]
    assert s.new_conversation("new", "m", "chatml", "", "tok") is None   # nothing written
    s.close()
    os.chmod(path, 0o644)
    assert _digest(path) == before
    assert not [p for p in os.listdir(tmp_path) if "corrupt" in p]


def test_a_read_only_old_schema_is_read_without_upgrading(tmp_path, monkeypatch):
    path = str(tmp_path / "v2.db")
    _v2_file(path)
    _pretend_permissions(monkeypatch, readable=True, writable=False)
    s = HistoryStore.open(path)
    assert s.read_only and s.version == 2
    assert [(m.text, m.state) for m in s.messages(1)] == [("hi", "shown"), ("old", "alternative"),
                                                          ("new", "shown")]
    assert s.conversations()[0].n_messages == 2
    s.close()


def test_an_unreadable_database_is_left_alone(tmp_path, monkeypatch):
    path = tmp_path / "h.db"
    HistoryStore.open(str(path)).close()
    before = _digest(path)
    _pretend_permissions(monkeypatch, readable=False, writable=False)
    s = HistoryStore.open(str(path))
    assert not s.enabled and "cannot be read" in s.notices[0]
    assert _digest(path) == before and sorted(os.listdir(tmp_path)) == ["h.db"]


def test_writes_wait_for_another_process_lock_and_are_saved_in_order(tmp_path):
    """Another connection holds the write lock longer than a write waits: the writes are
    queued, ids given out at once; when the lock goes, they land in order. An id the
    other writer took meanwhile is moved to the next free one, and later calls follow."""
    path = str(tmp_path / "h.db")
    s = HistoryStore.open(path)
    first = s.new_conversation("first", "m", "chatml", "", "tok")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    c = s.new_conversation("mine", "m", "chatml", "", "tok")
    u = s.add_message(c, "user", "hello", None)
    a = s.add_message(c, "assistant", "hi there", [1, 2], "stopped")
    s.rename(c, "renamed")
    assert s.writable and s.pending == 4 and None not in (c, u, a)
    assert any("lock" in n for n in s.take_notices())
    # the other writer takes the id ours was given, then lets go
    other.execute("INSERT INTO conversations (id, title, model, template, created, updated)"
                  " VALUES (?, 'theirs', 'x', 'chatml', 0, 0)", (c,))
    other.execute("COMMIT")
    s.retry()
    assert s.pending == 0 and any("saved" in n for n in s.take_notices())
    assert s.resolve("conversations", c) != c
    assert [m.text for m in s.messages(c)] == ["hello", "hi there"]
    titles = {i.title: i.id for i in s.conversations()}
    assert set(titles) == {"first", "renamed", "theirs"} and titles["theirs"] == c
    assert s.messages(first) == []
    other.close()
    s.close()


def test_writes_still_locked_at_close_are_counted(tmp_path):
    path = str(tmp_path / "h.db")
    s = HistoryStore.open(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    s.new_conversation("t", "m", "chatml", "", "tok")
    assert s.close(wait=0.3) == 1
    other.execute("ROLLBACK")
    other.close()


def test_search_rename_delete(tmp_path):
    s = HistoryStore.open(str(tmp_path / "h.db"))
    a = s.new_conversation("Paris trip", "m", "chatml", "", "tok")
    s.add_message(a, "user", "What is the capital of France?", None)
    b = s.new_conversation("Cooking", "m", "chatml", "", "tok")
    s.add_message(b, "user", "100% butter_cake", None)
    assert [c.id for c in s.conversations(query="capital")] == [a]      # message text
    assert [c.id for c in s.conversations(query="cook")] == [b]         # title, any case
    assert [c.id for c in s.conversations(query="0% b")] == [b]         # % and _ are literal
    assert s.conversations(query="_") == [s.conversation(b)]
    s.rename(a, "France")
    assert s.conversation(a).title == "France"
    s.delete_conversation(b)
    assert [c.id for c in s.conversations()] == [a] and s.messages(b) == []
    assert s.latest().id == a
    s.close()
