"""tests/gpu/check.sh without a GPU: its dry run, its argument handling, and the pieces of
tests/gpu/steps.py that turn results into the one JSON file (so a GPU lease is spent
running the script, not debugging it)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "gpu", "check.sh")


def _steps():
    spec = importlib.util.spec_from_file_location("gpu_steps", os.path.join(ROOT, "tests", "gpu", "steps.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _has_gpu() -> bool:
    try:
        from kernels import cuda_driver
        cuda_driver.init()
        return True
    except Exception:
        return False


def _run(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    e.pop("OUT", None)
    return subprocess.run(["bash", SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=e)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    if _has_gpu():
        pytest.skip("a GPU is present: the dry run is for machines without one")
    out = tmp_path_factory.mktemp("gpu-check")
    p = _run("--dry-run", "--out", str(out))
    with open(out / "gpu_check.json") as f:
        return p, json.load(f), out


def test_dry_run_finishes_and_writes_one_json(dry_run) -> None:
    p, res, out = dry_run
    assert p.returncode == 0, p.stderr[-2000:]
    assert res["dry_run"] is True and res["status"] == "ok"
    steps = _steps()
    assert set(res["steps"]) == set(steps.STEP_ORDER)
    assert (out / "check.log").stat().st_size > 0
    assert sorted(os.listdir(out)) == ["check.log", "gpu_check.json"]   # nothing else comes back
    # no check is claimed without a GPU, and no figure of a GPU step is reported
    assert all(v is None for v in res["checks"].values())
    assert res["figures"]["copy_bandwidth_gb_s"] is None
    assert all(res["figures"][f"decode_{q}"]["tok_s"] is None for q in steps.TARGETS)


def test_dry_run_skips_gpu_steps_with_reasons(dry_run) -> None:
    _, res, _ = dry_run
    for name in ("env", "warm", "gpu_tests", "speculate", "tui", "tiles"):
        st = res["steps"][name]
        assert st["status"] == "skipped" and "dry run" in st["reason"], name


def test_dry_run_runs_the_non_gpu_parts(dry_run) -> None:
    _, res, _ = dry_run
    st = res["steps"]
    # the compile pool ran (on the quick sources), where NVRTC is installed
    assert set(st["warm"].get("compile_s", {})) == {"attention", "sample"} or "NVRTC" in st["warm"]["reason"]
    # the model file is written and cold-loaded into the int8 cache, then timed warm (CPU)
    assert st["ttft_prepare"]["status"] == "ok" and st["ttft_prepare"]["weight_type"] == "int8"
    assert st["ttft_prepare"]["cold_load_s"] > 0
    assert st["ttft"]["device"] == "cpu" and st["ttft"]["ttft_s"] > 0 and st["ttft"]["weight_type"] == "int8"
    # bench: the same command line on the CPU, its JSON parsed
    for q in ("int8", "fp16", "q4_k"):
        b = st[f"bench_{q}"]
        assert b["rc"] == 0 and b["decode_tok_s"] > 0 and b["bytes_per_token"] > 0, q
        assert b["command"].startswith("llama-chat bench --random") and f"--quant {q}" in b["command"]
    # pytest collected the GPU tests
    assert st["gpu_tests"]["collected"] > 50
    # validate: runs were made and each ended in the one-line no-GPU error, exit 2
    cases = st["validate"]["cases"]
    assert cases and all(c["rc"] == 2 and "use --device cpu" in c["error"] for c in cases)
    assert st["validate"]["planned"] == len(_steps().validate_cases(False))


def test_bad_arguments_are_one_line_exit_2(tmp_path) -> None:
    for args in (["--frobnicate"], ["--budget", "abc"], ["--out"]):
        p = _run(*args, "--out", str(tmp_path)) if args != ["--out"] else _run(*args)
        assert p.returncode == 2, args
        assert len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
    p = _run("--help")
    assert p.returncode == 0 and "--dry-run" in p.stdout


def test_only_and_budget_select_steps(tmp_path) -> None:
    p = _run("--dry-run", "--out", str(tmp_path), "--only", "env,warm")
    assert p.returncode == 0
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["steps"]["env"]["status"] == "skipped" and "dry run" in res["steps"]["env"]["reason"]
    assert res["steps"]["bench_int8"]["reason"] == "not selected"
    p = _run("--dry-run", "--out", str(tmp_path), "--budget", "0", "--skip", "ttft_prepare")
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "out of time" in res["steps"]["env"]["reason"] and res["steps"]["ttft_prepare"]["reason"] == "not selected"


# ---------------------------------------------------------------- steps.py pieces
def test_last_json_and_junit(tmp_path) -> None:
    s = _steps()
    assert s.last_json("noise\n{\"a\": 1}\nmore\n{\"b\": 2}\n") == {"b": 2}
    assert s.last_json("no json here") is None
    xml = tmp_path / "j.xml"
    xml.write_text('<testsuites><testsuite>'
                   '<testcase classname="t" name="ok"/>'
                   '<testcase classname="t" name="bad"><failure message="boom"/></testcase>'
                   '<testcase classname="t" name="gone"><skipped message="no usable CUDA GPU: x"/></testcase>'
                   '</testsuite></testsuites>')
    r = s._junit(str(xml))
    assert (r["passed"], r["failed"], r["skipped"]) == (1, 1, 1)
    assert r["failures"] == [{"test": "t::bad", "message": "boom"}]


def test_validate_cases_cover_every_type_and_the_shapes() -> None:
    s = _steps()
    cases = [" ".join(c) for c in s.validate_cases(False)]
    for q in s.ALL_TYPES:
        assert any(f"--quant {q}" in c and "--random" in c for c in cases), q
    assert sum("stories260K.bin" in c for c in cases) == 3
    from inference.config import SHAPES
    kinds = {(SHAPES[sh].n_kv_heads < SHAPES[sh].n_heads, SHAPES[sh].shared_classifier) for sh, _, _ in s.VALIDATE_RANDOM}
    assert kinds == {(True, True), (False, True), (True, False)}   # GQA and not, shared and separate
    assert any(SHAPES[sh].rope_style == "neox" and SHAPES[sh].qkv_bias for sh, _, _ in s.VALIDATE_RANDOM)


def test_assemble_reports_targets(tmp_path) -> None:
    s = _steps()
    w = str(tmp_path)
    s.write(os.path.join(w, "env.json"), {"status": "ok", "gpu": "NVIDIA H200", "copy_bandwidth_gb_s": 4300.0})
    s.write(os.path.join(w, "bench_int8.json"), {"status": "ok", "decode_tok_s": 400.0, "meets_target": True,
                                                  "fraction_of_copy_bandwidth": 0.8})
    s.write(os.path.join(w, "bench_fp16.json"), {"status": "failed", "error": "x"})
    s.write(os.path.join(w, "ttft.json"), {"status": "ok", "ttft_s": 0.8, "meets_target": True})
    s.write(os.path.join(w, "tui.run.json"), {"skipped": "out of time"})
    s.write(os.path.join(w, "speculate.run.json"), {"rc": 137, "seconds": 90})
    assert s.main(["assemble", "--work", w, "--total-s", "12"]) == 0
    r = s.read(os.path.join(w, "gpu_check.json"))
    assert r["checks"]["bench_int8_meets_target"] is True and r["checks"]["bench_fp16_meets_target"] is False
    assert r["checks"]["bench_q4_k_meets_target"] is None and r["checks"]["ttft_warm_under_1s"] is True
    assert r["steps"]["tui"] == {"status": "skipped", "reason": "out of time", "wall_s": None}
    assert r["steps"]["speculate"]["status"] == "failed" and "exit 137" in r["steps"]["speculate"]["reason"]
    assert r["figures"]["decode_int8"]["tok_s"] == 400.0 and r["figures"]["gpu"] == "NVIDIA H200"
    assert r["total_s"] == 12.0


def test_random_gguf_writer_reads_back(tmp_path) -> None:
    """The TTFT model file: a valid GGUF of the shape, read by the project's own reader."""
    s = _steps()
    path = str(tmp_path / "m.gguf")
    info = s.write_random_gguf(path, "stories260K")
    from inference.formats import open_source
    src = open_source(path)
    src.check()
    from inference.config import SHAPES
    c = SHAPES["stories260K"]
    assert (src.config.dim, src.config.n_layers, src.config.vocab_size) == (c.dim, c.n_layers, c.vocab_size)
    assert src.all_float() and info["shape"] == "stories260K"
    w = src.weights()
    assert str(w.wq[0].dtype) in ("float16", "float32") or w.weight_type == "fp16"
