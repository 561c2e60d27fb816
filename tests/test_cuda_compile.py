"""CUDA pieces that need no GPU: NVRTC compiles every kernel for sm_80 and sm_90, the
cubin cache logic, the layer split, validate's comparison, and the one-line errors."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from inference.errors import BackendError
from kernels.cuda_driver import CudaError
from kernels import cuda_compile as cc


def _nvrtc_or_skip() -> None:
    try:
        cc.nvrtc_version()
    except CudaError as e:
        pytest.skip(f"NVRTC unavailable: {e}")


def test_sources_exist() -> None:
    assert {"linear", "linear_blocks", "attention", "sample"} <= set(cc.source_names())


def _backend_kernels() -> dict[str, list[str]]:
    """Every kernel name the CUDA backend looks up, by source."""
    from inference.backends.cuda import TOKEN_TILE, WIDE_VEC, WT_CODE
    linear = [f"linear_w{code}_v{vec}_t{nt}" for wt, code in WT_CODE.items() for vec in (WIDE_VEC[wt], 1)
              for nt in (1, TOKEN_TILE)]
    return {"linear": linear, "linear_blocks": [f"linear_blocks_t{nt}" for nt in (1, TOKEN_TILE)],
            "attention": ["attention_split"],
            "sample": ["embed", "embed_i8", "sumsq", "argmax", "topk", "fill_f32", "fill_f16", "fill_i8", "fill_u32", "set_u16"]}


def _backend_defines() -> dict[str, tuple[str, ...]]:
    """The -D tile options the backend compiles each source with."""
    from inference.backends.cuda import KERNEL_DEFINES
    return KERNEL_DEFINES


ARCHS = ("sm_80", "sm_90")


@pytest.fixture(scope="module")
def cubins() -> dict[tuple[str, str], object]:
    """(source, arch) -> its cubin, or the exception compiling it raised. NVRTC releases
    the GIL, so the compiles run side by side, one per core (largest source first):
    on CI's two cores this halves the longest part of the suite."""
    _nvrtc_or_skip()
    jobs = sorted(((n, a) for n in cc.source_names() for a in ARCHS),
                  key=lambda j: -(cc.SOURCE_DIR / f"{j[0]}.cu").stat().st_size)

    def compile_one(job: tuple[str, str]) -> object:
        name, arch = job
        try:
            src = (cc.SOURCE_DIR / f"{name}.cu").read_text()
            return cc.compile_source(src, name, arch, cc.OPTIONS + _backend_defines().get(name, ()))
        except Exception as e:  # reported by that source's own test
            return e

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(jobs, pool.map(compile_one, jobs)))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", cc.source_names())
def test_every_kernel_compiles(cubins, name: str, arch: str) -> None:
    """Each source compiles with the backend's own tile options, and its cubin holds every
    entry point the backend asks for (a missing variant would only fail on a GPU)."""
    cubin = cubins[name, arch]
    if isinstance(cubin, Exception):
        raise cubin
    assert cubin[:4] == b"\x7fELF"
    for k in _backend_kernels().get(name, []):
        assert k.encode() + b"\0" in cubin, f"{k} missing from {name}.cu for {arch}"


def test_every_source_is_launched() -> None:
    assert set(_backend_kernels()) == set(cc.source_names())


def test_argument_structs_match_the_cuda_structs() -> None:
    """The ctypes mirrors of `struct Part` / `struct LinearArgs` have the CUDA structs'
    offsets and sizes: NVRTC checks static_asserts generated from the ctypes fields."""
    _nvrtc_or_skip()
    import ctypes
    from inference.backends.cuda import LinearArgs, PartArgs
    lines = ['#include "linear.cuh"']
    for cname, st in (("Part", PartArgs), ("LinearArgs", LinearArgs)):
        lines.append(f'static_assert(sizeof({cname}) == {ctypes.sizeof(st)}, "sizeof {cname}");')
        for fname, *_ in st._fields_:
            off = getattr(st, fname).offset
            lines.append(f'static_assert(__builtin_offsetof({cname}, {fname}) == {off}, "{cname}.{fname}");')
    lines.append('extern "C" __global__ void layout_probe(LinearArgs a) {}')
    cc.compile_source("\n".join(lines), "layout_probe", "sm_90")


def test_compile_error_is_one_line() -> None:
    _nvrtc_or_skip()
    with pytest.raises(cc.CompileError) as e:
        cc.compile_source("extern \"C\" __global__ void k() { undefined_thing(); }", "broken", "sm_90")
    assert "\n" not in str(e.value) and "broken.cu" in str(e.value)
    assert "undefined_thing" in e.value.log


@pytest.fixture
def fake_nvrtc(monkeypatch, tmp_path):
    """Count compiles without NVRTC: the cache logic is plain Python."""
    calls = []

    def compile_source(source, name, arch, options=cc.OPTIONS):
        calls.append((name, arch))
        return b"\x7fELF" + f"{name}:{arch}:{len(source)}".encode()

    monkeypatch.setattr(cc, "compile_source", compile_source)
    monkeypatch.setattr(cc, "nvrtc_version", lambda: "13.0")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return calls


def test_cache_dir_follows_xdg(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cc.cache_dir() == tmp_path / "llama-chat" / "cuda"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert str(cc.cache_dir()).endswith(".cache/llama-chat/cuda")


def test_warm_start_compiles_nothing(fake_nvrtc, tmp_path) -> None:
    first = cc.get_cubin("linear", "sm_90")
    assert fake_nvrtc == [("linear", "sm_90")]
    assert cc.get_cubin("linear", "sm_90") == first
    assert fake_nvrtc == [("linear", "sm_90")]          # served from disk
    assert len(list((tmp_path / "llama-chat" / "cuda").glob("linear-sm_90-*.cubin"))) == 1
    cc.get_cubin("linear", "sm_80")                      # another arch is another entry
    assert len(fake_nvrtc) == 2


def test_cache_key_covers_source_arch_version_options() -> None:
    k = cc.cache_key("src", "sm_90", "13.0")
    assert k != cc.cache_key("src2", "sm_90", "13.0")
    assert k != cc.cache_key("src", "sm_80", "13.0")
    assert k != cc.cache_key("src", "sm_90", "13.1")
    assert k != cc.cache_key("src", "sm_90", "13.0", ("-O1",))
    assert k == cc.cache_key("src", "sm_90", "13.0")


def test_unwritable_cache_still_compiles(fake_nvrtc, monkeypatch, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert cc.get_cubin("attention", "sm_90").startswith(b"\x7fELF")
    assert cc.get_cubin("attention", "sm_90")
    assert len(fake_nvrtc) == 2   # no cache, so it compiled twice, without an error


def test_compile_all_without_gpu(fake_nvrtc) -> None:
    out = cc.compile_all("sm_90")
    assert set(out) == set(cc.source_names())


def test_unknown_source_is_a_cuda_error(fake_nvrtc) -> None:
    with pytest.raises(CudaError):
        cc.get_cubin("no_such_kernel", "sm_90")


def test_layer_split_in_proportion() -> None:
    from inference.backends.cuda import split_layers
    assert split_layers(32, [17, 24, 24, 24]) == [(0, 0, 6), (1, 6, 15), (2, 15, 23), (3, 23, 32)]
    assert split_layers(5, [1, 1]) == [(0, 0, 2), (1, 2, 5)]
    assert split_layers(2, [1, 0.01, 1]) == [(0, 0, 1), (2, 1, 2)]
    with pytest.raises(BackendError):
        split_layers(4, [0, 0])


def test_linear_args_layout_matches_the_kernel() -> None:
    import ctypes
    from inference.backends.cuda import MAX_PARTS, LinearArgs, PartArgs
    # pointers are 8-aligned: 3 parts of (W S S2 | type rows row0 block0) | nparts rows in_dim gsize | x ...
    assert ctypes.sizeof(PartArgs) == 40 and MAX_PARTS == 3
    assert LinearArgs.x.offset == 136 and LinearArgs.ss.offset == 152 and LinearArgs.eps.offset == 168
    assert LinearArgs.kcache.offset == 208 and LinearArgs.gate.offset == 264
    assert ctypes.sizeof(LinearArgs) == 272


def _has_gpu() -> bool:
    try:
        from kernels import cuda_driver
        cuda_driver.init()
        return True
    except CudaError:
        return False


def test_cuda_device_without_gpu_is_one_line_error() -> None:
    if _has_gpu():
        pytest.skip("a GPU is present")
    from inference.loader import create_backend, load_model
    with pytest.raises(BackendError) as e:
        create_backend(load_model(), "cuda")
    assert "\n" not in str(e.value) and "--device cpu" in str(e.value)


@pytest.mark.parametrize("argv", [
    ["generate", "--device", "cuda", "-p", "Once", "-n", "2"],
    ["bench", "--random", "stories15M", "--device", "cuda", "--quant", "q4_k", "--gen-tokens", "2"],
    ["validate", "--random", "stories15M", "--quant", "q6_k", "-n", "1"],
    ["validate", "--model", "assets/stories260K.bin", "--json"],
])
def test_cli_on_cuda_without_gpu_is_one_line_exit_2(argv) -> None:
    if _has_gpu():
        pytest.skip("a GPU is present")
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-m", "app.cli", *argv], cwd=root, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=root))
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llama-chat: error:") and "--device cpu" in lines[0], p.stderr
    assert "Traceback" not in p.stderr


def test_validate_cli_has_help(capsys) -> None:
    from app.commands import validate
    import argparse
    p = argparse.ArgumentParser()
    validate.add_arguments(p)
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--help"])
    assert e.value.code == 0
    assert "--random" in capsys.readouterr().out


def test_validate_compare_logic_with_two_cpu_backends() -> None:
    from app.commands.validate import compare, prepare_weights
    from inference.backends.cpu import CpuBackend
    from inference.loader import load_model
    w = load_model().weights
    lines: list[str] = []
    assert compare(CpuBackend(w), CpuBackend(w), [1, 400, 22], 3, out=lines.append)
    assert "agree" in lines[-1] and len(lines) == 1 + 4 + 1

    class Skewed(CpuBackend):
        def logits(self) -> np.ndarray:
            return super().logits() + np.arange(self.config.vocab_size, dtype=np.float32)

        def argmax(self) -> int:
            return int(np.argmax(self.logits()))

    lines.clear()
    assert not compare(CpuBackend(w), Skewed(w), [1, 400], 1, out=lines.append)
    assert "DISAGREE" in lines[-1]
    w16 = prepare_weights(w, "fp16")
    assert w16.wq[0].dtype == np.float32 and np.array_equal(w16.wq[0], w16.wq[0].astype(np.float16).astype(np.float32))
