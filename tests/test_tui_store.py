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
    a = s.add_message(c, "assistant", "old", [7, 8], "stopped", {"tokens": 2})
    s.set_status(a, "replaced")
    s.add_message(c, "assistant", "new", [9], "complete")
    msgs = s.messages(c)
    assert [(m.role, m.text, m.token_ids, m.status) for m in msgs] == [
        ("user", "Once", None, "complete"), ("assistant", "new", (9,), "complete")]
    info = s.conversations()[0]
    assert (info.title, info.n_messages, info.tokenizer) == ("Once", 2, "tok")
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
