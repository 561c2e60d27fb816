"""kernels.compute_thread: every parallel Numba call runs on one OS thread (libgomp
keeps a worker team per calling thread and stops spin-waiting once there are more
workers than CPUs, which made a server's decode ~4x slower)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from kernels import compute_thread


def test_calls_from_any_thread_run_on_one_thread() -> None:
    seen: list[int] = []

    def where() -> int:
        assert compute_thread.on_compute_thread()
        return threading.get_ident()

    seen.append(compute_thread.call(where))
    threads = [threading.Thread(target=lambda: seen.append(compute_thread.call(where))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 4 and len(set(seen)) == 1
    assert seen[0] != threading.get_ident()
    assert compute_thread.call(compute_thread.call, where) == seen[0]   # nested: runs in place


def test_results_and_exceptions_reach_the_caller() -> None:
    assert compute_thread.call(lambda a, b: a + b, 2, 3) == 5

    def boom() -> None:
        raise ValueError("from the compute thread")

    with pytest.raises(ValueError, match="from the compute thread"):
        compute_thread.call(boom)
    assert compute_thread.call(lambda: "still serving") == "still serving"


def test_the_cpu_forward_runs_there() -> None:
    from inference.backends import cpu
    from inference.config import ModelConfig
    from inference.weights import random_weights

    cfg = ModelConfig(dim=64, hidden_dim=160, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=100, seq_len=32)
    b = cpu.CpuBackend(random_weights(cfg, seed=3, scale=0.08), slots=2)
    calls: list[bool] = []
    real = cpu.cpu_forward.forward

    def spy(*args):
        calls.append(compute_thread.on_compute_thread())
        return real(*args)

    cpu.cpu_forward.forward = spy
    try:
        out = []
        t = threading.Thread(target=lambda: out.append(b.forward_batch([1, 2], [0, 0], [0, 1])))
        t.start()
        t.join()
        b.forward([3], 1, slot=0)
    finally:
        cpu.cpu_forward.forward = real
    assert calls == [True, True]
    assert out[0].shape == (2, cfg.vocab_size) and np.isfinite(out[0]).all()


def test_a_forked_child_gets_its_own_compute_thread() -> None:
    import os

    compute_thread.call(lambda: None)           # the parent's thread exists
    pid = os.fork()
    if pid == 0:                                 # the child: must not wait on the parent's queue
        import signal
        signal.alarm(20)                         # a hang ends the child, not the test run
        try:
            ok = compute_thread.call(lambda: 41 + 1) == 42
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


def test_a_loop_runs_there_and_an_interrupt_waits_for_it_to_stop() -> None:
    """call_interruptible: the loop's nested calls run in place; Ctrl-C in the caller
    asks the loop to stop and returns only once it has (nothing it writes comes later)."""
    import signal
    import time

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    stop = threading.Event()
    log: list[str] = []

    main = threading.main_thread().ident

    def loop() -> str:
        assert compute_thread.call(compute_thread.on_compute_thread)      # nested: in place
        time.sleep(0.2)       # the caller is waiting by now: Ctrl-C reaches it there
        signal.pthread_kill(main, signal.SIGINT)
        deadline = time.monotonic() + 10        # never hang the suite
        while not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        log.append("loop ended")
        return "done"

    assert compute_thread.call_interruptible(compute_thread.on_compute_thread, (), None)
    # Python's own Ctrl-C, whatever handler earlier code in this process left installed
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    try:
        with pytest.raises(KeyboardInterrupt):
            compute_thread.call_interruptible(loop, (), lambda: (log.append("asked to stop"), stop.set()))
    finally:
        signal.signal(signal.SIGINT, old)
    assert log == ["asked to stop", "loop ended"]
    assert compute_thread.call(lambda: "still serving") == "still serving"
