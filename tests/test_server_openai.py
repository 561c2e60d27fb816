"""`llama-chat serve` end to end, through the real `openai` client, on 127.0.0.1 only.

SmolLM2: streamed and whole chat replies equal `generate --chat` (greedy); 4 concurrent
requests each equal their solo reply and really ran together; garbage gets OpenAI error
objects and the server keeps serving; a disconnect frees its slot; 401 and 429 (with a
queue of one). stories260K: a bounded soak of 200 requests from 8 clients, some hanging
up early, loses none, changes no greedy reply and leaves the server's memory flat.
"""
from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from .conftest import ROOT, shared_model

try:
    import openai
except ImportError:  # a test-only dependency (the dev extra)
    openai = None
pytestmark = pytest.mark.skipif(openai is None, reason="the openai client is not installed")

SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = ["What is the capital of France?", "Name a color.", "What is 2+2?", "Say hello."]
ENV = {**os.environ, "PYTHONPATH": ROOT}


class Server:
    """`llama-chat serve --port 0 ARGS` in a subprocess; its URL read from stderr."""

    def __init__(self, *args: str, timeout: float = 240.0) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", prefix="serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", "0",
                                      *args], cwd=ROOT, env=ENV, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.time() + timeout
        while True:
            text = self.stderr()
            m = re.search(r"at http://127\.0\.0\.1:(\d+)/v1", text)
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise AssertionError(f"the server did not start:\n{text}")
            time.sleep(0.2)
        self.url = f"http://127.0.0.1:{self.port}/v1"
        assert self.health()["status"] == "ok"   # announced means listening: no retry needed

    def stderr(self) -> str:
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def client(self, api_key: str = "none", timeout: float = 300.0):
        return openai.OpenAI(base_url=self.url, api_key=api_key, max_retries=0, timeout=timeout)

    def raw(self, method: str, path: str, body: bytes | str | None = None,
            headers: dict | None = None) -> tuple[int, dict | str]:
        """One plain HTTP request: (status, the JSON body or the text)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read().decode("utf-8", "replace")
        finally:
            c.close()
        try:
            return r.status, json.loads(data)
        except ValueError:
            return r.status, data

    def health(self) -> dict:
        status, body = self.raw("GET", "/health")
        assert status == 200
        return body

    def wait_idle(self, timeout: float = 30.0) -> dict:
        deadline = time.time() + timeout
        while True:
            h = self.health()
            if h["slots_busy"] == 0 and h["queued"] == 0:
                return h
            assert time.time() < deadline, f"the server stayed busy: {h}"
            time.sleep(0.05)

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        os.unlink(self.log.name)


def chat(client, question: str, max_tokens: int = 12, **kw):
    kw = {"model": SMOL[:-5], "temperature": 0, **kw}
    return client.chat.completions.create(max_tokens=max_tokens, messages=[{"role": "user", "content": question}], **kw)


def streamed(client, question: str, max_tokens: int = 12) -> tuple[str, str | None, object]:
    text, finish, use = [], None, None
    for chunk in chat(client, question, max_tokens, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            use = chunk.usage
        for ch in chunk.choices:
            text.append(ch.delta.content or "")
            finish = ch.finish_reason or finish
    return "".join(text), finish, use


def generate_chat(question: str, max_tokens: int = 12) -> dict:
    r = subprocess.run([sys.executable, "-m", "app.cli", "generate", "--model", shared_model(SMOL), "--chat", question,
                        "--temperature", "0", "-n", str(max_tokens), "--json"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def smol():
    s = Server("--model", shared_model(SMOL), "--parallel", "4", "--ctx-per-slot", "1024")
    yield s
    s.stop()


@pytest.mark.slow
def test_chat_whole_and_streamed_equal_generate_chat(smol):
    ref = generate_chat(QUESTIONS[0])
    client = smol.client()
    r = chat(client, QUESTIONS[0])
    assert r.choices[0].message.content == ref["text"]
    assert r.choices[0].finish_reason == {"eos": "stop", "max_tokens": "length"}[ref["finish_reason"]]
    assert r.usage.prompt_tokens == len(ref["prompt_ids"]) and r.usage.completion_tokens == len(ref["ids"])
    assert r.model == SMOL[:-5] and r.object == "chat.completion"
    text, finish, use = streamed(client, QUESTIONS[0])
    assert text == ref["text"] and finish == r.choices[0].finish_reason
    assert use.prompt_tokens == len(ref["prompt_ids"]) and use.completion_tokens == len(ref["ids"])
    assert use.prompt_tokens_details.cached_tokens == len(ref["prompt_ids"]) - 1   # the same prompt again
    models = client.models.list()
    assert [m.id for m in models.data] == [SMOL[:-5]]


@pytest.mark.slow
def test_continue_final_message_goes_on_from_the_partial_reply(smol):
    """A client's "continue" (vLLM's continue_final_message): the reply so far is the last
    message and the answer is only what follows it, the same as `generate --prompt-ids`
    on the question's prompt and the partial reply's ids; without the flag a final
    assistant message is history, answered anew."""
    from inference.chat import continuation_ids, resolve_template
    from inference.tokenizer import load_tokenizer
    client = smol.client()
    first = chat(client, QUESTIONS[0], max_tokens=4).choices[0].message.content   # cut mid-sentence
    turns = [{"role": "user", "content": QUESTIONS[0]}, {"role": "assistant", "content": first}]
    r = client.chat.completions.create(model=SMOL[:-5], messages=turns, max_tokens=8, temperature=0,
                                       extra_body={"continue_final_message": True, "add_generation_prompt": False})
    tok = load_tokenizer(shared_model(SMOL))
    ids = continuation_ids(resolve_template("auto", tok), tok, turns)
    assert r.usage.prompt_tokens == len(ids)
    ref = subprocess.run([sys.executable, "-m", "app.cli", "generate", "--model", shared_model(SMOL), "--prompt-ids",
                          ",".join(map(str, ids)), "--temperature", "0", "-n", "8", "--json"], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    assert r.choices[0].message.content == json.loads(ref.stdout)["text"] != ""
    anew = client.chat.completions.create(model=SMOL[:-5], messages=turns, max_tokens=8, temperature=0)
    assert anew.usage.prompt_tokens > len(ids)   # the turn closed, a new one opened


@pytest.mark.slow
def test_four_concurrent_requests_equal_their_solo_replies(smol):
    client = smol.client()
    solo = [chat(client, q).choices[0].message.content for q in QUESTIONS]
    smol.wait_idle()
    together: list = [None] * 4
    busy = []

    def ask(i: int) -> None:
        together[i] = streamed(client, QUESTIONS[i])[0] if i % 2 else chat(client, QUESTIONS[i]).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        busy.append(smol.health()["slots_busy"])
        time.sleep(0.02)
    for t in threads:
        t.join()
    assert together == solo
    assert max(busy) == 4, "the four requests never ran together"


@pytest.mark.slow
def test_garbage_gets_openai_errors_and_the_server_keeps_serving(smol):
    client = smol.client()
    for kw in ({"temperature": 9}, {"top_p": 2}, {"n": 2}, {"max_tokens": 0}, {"seed": -1}, {"stop": ["a"] * 5}):
        with pytest.raises(openai.BadRequestError) as e:
            chat(client, "hi", **kw)
        assert e.value.status_code == 400 and e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as e:
        chat(client, "hi", model="gpt-4o")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "word " * 1100)
    assert e.value.body["code"] == "context_length_exceeded"

    json_h = {"Content-Type": "application/json"}
    bodies = [b"{bad", b"", b"[]", b'"text"', b"\xff\xfe", b"[" * 100000 + b"]" * 100000, b'{"messages": "hi"}',
              b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
              b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1' + b"0" * 5000 + b"}",
              b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e999}',
              b'{"messages": [{"role": "user"}], "stream": 1}', b'{"prompt": "x"}']
    for body in bodies:
        status, reply = smol.raw("POST", "/v1/chat/completions", body, json_h)
        assert status == 400 and set(reply["error"]) == {"message", "type", "param", "code"}, (body[:40], reply)
    status, reply = smol.raw("POST", "/v1/completions", b'{"prompt": [1, 99999999]}', json_h)
    assert status == 400
    status, reply = smol.raw("GET", "/v1/nothing")
    assert status == 404 and reply["error"]["code"] == "not_found"
    status, reply = smol.raw("GET", "/v1/chat/completions")
    assert status == 405 and "error" in reply
    for size in (9 << 20, 40 << 20):       # read to its end, so a client still sending gets the 413
        status, reply = smol.raw("POST", "/v1/chat/completions", b"x" * size, {**json_h, "Connection": "close"})
        assert status == 413 and "error" in reply

    r = client.completions.create(model=SMOL[:-5], prompt="The capital of France is", max_tokens=4, temperature=0)
    assert r.choices[0].text and r.usage.completion_tokens >= 1 and r.object == "text_completion"
    assert chat(client, QUESTIONS[2]).choices[0].message.content
    assert "Traceback" not in smol.stderr()


@pytest.mark.slow
def test_a_disconnect_mid_stream_frees_the_slot(smol):
    client = smol.client()
    smol.wait_idle()
    served = smol.health()["served"]
    stream = chat(client, "Write a long story about a dragon.", max_tokens=400, stream=True)
    got = 0
    for chunk in stream:
        got += bool(chunk.choices and chunk.choices[0].delta.content)
        if got >= 2:
            break
    assert smol.health()["slots_busy"] == 1
    stream.close()
    h = smol.wait_idle(timeout=20)
    assert h["served"] == served + 1
    gone = re.findall(r"the client went away after (\d+) streamed chunks", smol.stderr())
    assert gone and int(gone[-1]) < 100


@pytest.mark.slow
def test_a_client_hanging_up_on_a_whole_reply_frees_the_slot(smol):
    smol.wait_idle()
    body = json.dumps({"messages": [{"role": "user", "content": "Write a long story about a dragon."}],
                       "max_tokens": 400, "temperature": 0})
    sock = socket.create_connection(("127.0.0.1", smol.port), timeout=30)
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    deadline = time.time() + 60
    while smol.health()["slots_busy"] == 0:
        assert time.time() < deadline
        time.sleep(0.02)
    sock.close()
    smol.wait_idle(timeout=20)
    stopped = re.findall(r"(\d+) new tok, [^\n]*, stopped", smol.stderr())
    assert stopped and int(stopped[-1]) < 100, "the hung-up reply ran on"


@pytest.mark.slow
def test_api_key_and_a_full_queue():
    s = Server("--model", shared_model(SMOL), "--parallel", "1", "--queue", "1", "--ctx-per-slot", "512",
               "--api-key", "sekrit", "--quiet")
    try:
        with pytest.raises(openai.AuthenticationError) as e:
            chat(s.client("wrong"), "hi")
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
        assert s.raw("GET", "/v1/models")[0] == 401
        assert s.raw("GET", "/health")[0] == 200
        client = s.client("sekrit")
        assert [m.id for m in client.models.list().data] == [SMOL[:-5]]

        long = chat(client, "Write a long story about a dragon.", max_tokens=400, stream=True)
        next(iter(long))                          # the role chunk: it holds the only slot
        queued: list = []
        waiter = threading.Thread(target=lambda: queued.append(chat(client, QUESTIONS[0], max_tokens=6)))
        waiter.start()
        deadline = time.time() + 60
        while s.health()["queued"] < 1:
            assert time.time() < deadline
            time.sleep(0.02)
        with pytest.raises(openai.RateLimitError) as e:
            chat(client, QUESTIONS[1])
        assert e.value.status_code == 429 and e.value.body["code"] == "rate_limit_exceeded"
        long.close()                              # hang up: the queued request gets the slot
        waiter.join(120)
        assert queued and queued[0].choices[0].message.content
        s.wait_idle()
    finally:
        s.stop()


@pytest.mark.slow
def test_soak_200_requests_from_8_clients():
    s = Server("--model", os.path.join(ROOT, "assets", "stories260K.bin"), "--parallel", "8", "--queue", "8", "--quiet")
    try:
        client = s.client(timeout=60)
        prompts = ["Once upon a time", "The little dog", "Lily wanted to", "One day, Tom"]
        ref = {p: client.completions.create(model="stories260K", prompt=p, max_tokens=24, temperature=0).choices[0].text
               for p in prompts}
        rss: dict[str, int] = {}
        errors: list = []
        done = [0]
        lock = threading.Lock()
        deadline = time.time() + 240

        def worker(w: int) -> None:
            rng = random.Random(w)
            for i in range(25):
                if time.time() > deadline:
                    errors.append("time limit")
                    return
                p = rng.choice(prompts)
                n = rng.randint(1, 24)
                mode = rng.choice(["text", "chat", "stream", "hangup", "sampled"])
                try:
                    if mode == "text":
                        r = client.completions.create(model="stories260K", prompt=p, max_tokens=n, temperature=0)
                        out = r.choices[0].text
                        assert ref[p].startswith(out) and r.usage.completion_tokens <= n, (p, out)
                    elif mode == "stream":
                        out = "".join(c.choices[0].text for c in client.completions.create(
                            model="stories260K", prompt=p, max_tokens=n, temperature=0, stream=True) if c.choices)
                        assert ref[p].startswith(out), (p, out)
                    elif mode == "chat":
                        r = client.chat.completions.create(model="stories260K", max_tokens=n, temperature=0,
                                                           messages=[{"role": "user", "content": p}])
                        assert r.choices[0].finish_reason in ("stop", "length")
                    elif mode == "hangup":
                        st = client.completions.create(model="stories260K", prompt=p, max_tokens=300, stream=True)
                        next(iter(st))
                        st.close()
                    else:
                        r = client.completions.create(model="stories260K", prompt=p, max_tokens=n, temperature=1.0,
                                                      seed=rng.randint(0, 1000), stop=["."])
                        assert "." not in r.choices[0].text
                except Exception as e:  # noqa: BLE001 - every failure is collected and reported
                    errors.append(f"{mode}: {type(e).__name__}: {e}")
                with lock:
                    done[0] += 1
                    if done[0] == 40:
                        rss["warm"] = s.rss_kib()

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:5]
        assert done[0] == 200
        h = s.wait_idle()
        assert h["served"] >= 200 + len(prompts)
        rss["end"] = s.rss_kib()
        print(f"soak: server RSS {rss['warm']} KiB after 40 requests, {rss['end']} KiB after 200")
        assert rss["end"] - rss["warm"] < 32 * 1024, rss        # KiB: flat, not growing per request
        assert "Traceback" not in s.stderr()
    finally:
        s.stop()
