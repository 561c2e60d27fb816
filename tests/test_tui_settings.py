"""The settings file, how it meets the flags, and `llama-chat` itself on a terminal (a
pseudo-terminal here) and off one."""
from __future__ import annotations

import argparse
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from app.settings import Settings, SettingsError, load_settings
from inference.errors import LlamaChatError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT, "NUMBA_NUM_THREADS": "1"}

GOOD = """
model = "stories260K"
template = "chatml"
system = "You are terse."
preset = "precise"

[sampling]
temperature = 0.6
top-p = 0.9

[presets.precise]
temperature = 0.1
seed = 7

[presets.wild]
temperature = 1.4
seed = "random"
"""


def write(tmp_path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def flags(**given) -> argparse.Namespace:
    names = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "repeat_last_n",
             "max_new_tokens", "seed")
    return argparse.Namespace(**{n: given.get(n) for n in names})


def test_a_settings_file_is_read_and_checked(tmp_path):
    s = load_settings(write(tmp_path, GOOD))
    assert (s.model, s.template, s.system, s.preset) == ("stories260K", "chatml", "You are terse.", "precise")
    assert s.sampling == {"temperature": 0.6, "top_p": 0.9}
    assert s.presets == {"precise": {"temperature": 0.1, "seed": 7}, "wild": {"temperature": 1.4, "seed": None}}
    start = s.base_sampling()
    assert (start.temperature, start.top_p, start.seed) == (0.1, 0.9, 7)


def test_the_default_location_is_xdg_config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert load_settings() == Settings()          # no file: no settings
    (tmp_path / "llama-chat").mkdir()
    (tmp_path / "llama-chat" / "config.toml").write_text('system = "hi"\n')
    assert load_settings().system == "hi"
    with pytest.raises(SettingsError, match="not found"):
        load_settings(str(tmp_path / "missing.toml"), required=True)


@pytest.mark.parametrize("text, message", [
    ("[sampling]\ntemperature = 9\n", r"\[sampling\]: temperature must be from 0 to 5, got 9"),
    ("[sampling]\ntop_p = 2\n", r"top-p must be from 0 to 1"),
    ("[sampling]\ntemprature = 1\n", r"unknown setting 'temprature'"),
    ("[sampling]\ntop_k = 2.5\n", r"top-k must be an integer"),
    ("[sampling]\ntemperature = true\n", r"temperature must be a number"),
    ("colour = 'red'\n", r"unknown key 'colour'"),
    ("preset = 'fast'\n", r"preset 'fast' is not defined"),
    ("system = 3\n", r"system must be a string"),
    ("model = ''\n", r"model is empty"),
    ("template = ' '\n", r"template is empty"),
    ("sampling = 1\n", r"\[sampling\] must be a table"),
    ("[presets.x]\nmin_p = -1\n", r"\[presets.x\]: min-p must be from 0 to 1"),
    ("temperature = = 1\n", r"config.toml: "),
])
def test_a_bad_settings_file_is_one_line_naming_the_problem(tmp_path, text, message):
    with pytest.raises(SettingsError, match=message) as e:
        load_settings(write(tmp_path, text))
    assert "\n" not in str(e.value) and "config.toml" in str(e.value)


def test_a_binary_or_huge_file_is_refused(tmp_path):
    p = tmp_path / "config.toml"
    p.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SettingsError, match="not UTF-8"):
        load_settings(str(p))
    p.write_bytes(b"#" * ((1 << 20) + 10))
    with pytest.raises(SettingsError, match="not a settings file"):
        load_settings(str(p))


def test_flags_override_the_file_and_its_preset(tmp_path):
    from app.commands.chat import sampling_settings

    s = load_settings(write(tmp_path, GOOD))
    base, start = sampling_settings(flags(), s, "precise")
    assert (start.temperature, start.top_p, start.seed) == (0.1, 0.9, 7)
    assert (base.temperature, base.top_p, base.seed) == (0.6, 0.9, None)   # F4's "start-up settings"
    base, start = sampling_settings(flags(temperature=1.0, top_k=5), s, "precise")
    assert (start.temperature, start.top_k, start.seed) == (1.0, 5, 7)
    assert (base.temperature, base.top_k) == (1.0, 5)
    with pytest.raises(LlamaChatError, match="^--temperature must be from 0 to 5"):
        sampling_settings(flags(temperature=9.0), s, None)


# -- llama-chat on and off a terminal -----------------------------------------------------------
def test_without_a_terminal_the_chat_is_one_line_pointing_at_generate(tmp_path):
    r = subprocess.run([sys.executable, "-m", "app.cli", "--history-db", str(tmp_path / "h.db")],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("llama-chat: error: the chat needs a terminal")
    assert "llama-chat generate" in r.stderr


class Terminal:
    """`llama-chat` on a pseudo-terminal of a given size: what a user's terminal sees."""

    #: make the terminal the process's controlling terminal (so closing it is a hang-up)
    BOOT = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
            "os.execv(sys.executable, [sys.executable, '-m', 'app.cli', *sys.argv[1:]])")

    def __init__(self, args: list[str], cols: int = 100, rows: int = 30) -> None:
        import fcntl
        import struct
        import termios

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {**ENV, "TERM": "xterm-256color", "COLUMNS": str(cols), "LINES": str(rows)}
        self.proc = subprocess.Popen([sys.executable, "-c", self.BOOT, *args], cwd=ROOT, env=env,
                                     stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        self.out = b""

    def read(self, seconds: float = 0.2) -> bytes:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                try:
                    self.out += os.read(self.master, 65536)
                except OSError:
                    break
        return self.out

    def wait_for(self, needle: bytes, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while needle not in self.out:
            if time.monotonic() > end or self.proc.poll() is not None:
                raise AssertionError(f"{needle!r} never appeared; last output: {self.out[-400:]!r}")
            self.read(0.1)

    def wait_for_reply(self, timeout: float = 60.0) -> None:
        """Until the streaming reply's line counts its first tokens ("N tok · R tok/s"): the
        speed panel says "tok/s" as soon as the prompt is being read, before any token."""
        end = time.monotonic() + timeout
        while not re.search(rb"[1-9][0-9]* tok \xc2\xb7", self.out):
            if time.monotonic() > end or self.proc.poll() is not None:
                raise AssertionError(f"no reply tokens appeared; last output: {self.out[-400:]!r}")
            self.read(0.1)

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def finish(self, timeout: float = 20.0) -> int:
        end = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < end:
            self.read(0.1)
            time.sleep(0.01)   # reads fail at once once the app closed its side
        if self.proc.poll() is None:
            self.proc.kill()
            raise AssertionError("llama-chat did not exit")
        if self.master >= 0:
            os.close(self.master)
        return self.proc.returncode

    def hang_up(self, timeout: float = 20.0) -> int:
        """Close the terminal (its window went away): the app gets SIGHUP."""
        os.close(self.master)
        self.master = -1
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("llama-chat did not exit after its terminal went away") from None


def test_a_bad_settings_file_stops_the_chat_before_the_screen_opens(tmp_path):
    cfg = write(tmp_path, "[sampling]\ntemperature = 9\n")
    term = Terminal(["--config", cfg, "--history-db", str(tmp_path / "h.db")])
    code = term.finish()
    text = term.out.decode(errors="replace").strip()
    assert code == 2 and text.startswith("llama-chat: error: settings file") and "\x1b[" not in text


def test_a_history_db_that_is_no_database_is_refused_and_left_as_it_is(tmp_path):
    """--history-db naming the user's notes by mistake: one line, exit 2, before the model
    loads; the notes are neither moved aside (as a damaged history is) nor replaced."""
    notes = tmp_path / "notes.md"
    notes.write_text("my notes")
    term = Terminal(["--history-db", str(notes)])
    code = term.finish()
    text = term.out.decode(errors="replace").strip()
    assert code == 2 and text == (f"llama-chat: error: {notes} is not a SQLite database, so no llama-chat "
                                  "history: choose another --history-db (the file was left as it is)")
    assert notes.read_text() == "my notes" and sorted(os.listdir(tmp_path)) == ["notes.md"]


def test_end_to_end_the_settings_file_picks_model_template_and_system_then_sigterm_saves(tmp_path):
    """On a terminal: the file's model, template and system prompt are used, a message
    gets a reply, and SIGTERM mid-reply exits 143 with the partial reply saved."""
    from app.tui.store import HistoryStore

    cfg = write(tmp_path, GOOD.replace('"stories260K"', repr(os.path.join(ROOT, "assets", "stories260K.bin"))
                                      .replace("'", '"')))
    db = str(tmp_path / "h.db")
    term = Terminal(["--config", cfg, "--history-db", db, "-n", "4000", "--ctx", "512"])
    term.wait_for(b"Enter")            # the key bar: the chat is up
    term.send(b"Tell me a long story")
    term.send(b"\r")
    term.wait_for(b"tok/s", 30)
    term.read(0.3)
    os.kill(term.proc.pid, signal.SIGTERM)
    assert term.finish() == 143
    s = HistoryStore.open(db)
    info = s.conversations()[0]
    msgs = s.messages(info.id)
    s.close()
    assert (info.model, info.template, info.system) == ("stories260K", "chatml", "You are terse.")
    assert [m.role for m in msgs] == ["user", "assistant"] and msgs[0].text == "Tell me a long story"
    assert msgs[1].status in ("stopped", "complete", "context_full") and msgs[1].model == "stories260K"


def test_closing_the_terminal_saves_the_reply_and_exits_129(tmp_path):
    """SIGHUP with no terminal left to restore: the partial reply is saved and the process
    ends (Textual's own shutdown would block on writes nobody reads)."""
    from app.tui.store import HistoryStore

    db = str(tmp_path / "h.db")
    term = Terminal(["--history-db", db, "-n", "4000"])
    term.wait_for(b"send")
    term.send(b"Once upon a time\r")
    term.wait_for_reply()
    assert term.hang_up() == 129
    s = HistoryStore.open(db)
    msgs = s.messages(s.conversations()[0].id)
    s.close()
    assert [m.role for m in msgs] == ["user", "assistant"] and msgs[1].text
