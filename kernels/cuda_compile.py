"""Compile the CUDA C sources in `kernels/cuda/` to cubins with NVRTC, with a disk cache.

Cubins are built for the device's own compute capability (`sm_XY`), so the driver loads
machine code as is and never JIT-compiles PTX. A warm start compiles nothing: a cubin is
cached under the user cache dir, keyed by a hash of the source, the headers it may include,
the target arch, the compile options and the NVRTC version. NVRTC needs no GPU, so CI can
compile every source for several arches (`compile_all`).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .cuda_driver import INSTALL, CudaError

SOURCE_DIR = Path(__file__).resolve().parent / "cuda"
#: No fast-math: the CUDA backend is cross-validated against the CPU to a tight tolerance.
OPTIONS: tuple[str, ...] = ("-std=c++17", "-default-device")


class CompileError(CudaError):
    """NVRTC rejected a source; `log` holds the full compiler output."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as e:
        raise CudaError("CUDA support needs cuda-python and NVRTC", INSTALL) from e
    return nvrtc


def _check(result, what: str):
    """Unpack an NVRTC (status, *values) tuple; raise CudaError on failure."""
    nvrtc = _nvrtc()
    status, *values = result
    if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise CudaError(f"NVRTC {what} failed: {status.name}")
    return values[0] if len(values) == 1 else values


def nvrtc_version() -> str:
    """e.g. '13.5'; raises CudaError when NVRTC cannot be loaded."""
    nvrtc = _nvrtc()
    try:
        major, minor = _check(nvrtc.nvrtcVersion(), "version query")
    except CudaError:
        raise
    except Exception as e:  # the NVRTC shared library itself is missing
        raise CudaError(f"cannot load NVRTC ({type(e).__name__})", INSTALL) from e
    return f"{major}.{minor}"


def source_names() -> list[str]:
    """Names (without .cu) of every kernel source."""
    return sorted(p.stem for p in SOURCE_DIR.glob("*.cu"))


def _headers() -> str:
    return "".join(f"//{p.name}\n{p.read_text()}" for p in sorted(SOURCE_DIR.glob("*.cuh")))


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/llama-chat/cuda, else ~/.cache/llama-chat/cuda."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llama-chat" / "cuda"


def cache_key(source: str, arch: str, version: str, options: tuple[str, ...] = OPTIONS) -> str:
    """Hash of everything that changes the cubin."""
    h = hashlib.sha256()
    for part in (source, _headers(), arch, version, "\0".join(options)):
        h.update(part.encode())
        h.update(b"\0\1")
    return h.hexdigest()[:24]


def compile_source(source: str, name: str, arch: str, options: tuple[str, ...] = OPTIONS) -> bytes:
    """NVRTC-compile one source text to a cubin for `arch` (e.g. 'sm_90')."""
    nvrtc = _nvrtc()
    nvrtc_version()  # a clear error when the library is missing
    prog = _check(nvrtc.nvrtcCreateProgram(source.encode(), f"{name}.cu".encode(), 0, [], []),
                  "program creation")
    try:
        opts = [o.encode() for o in (*options, f"-arch={arch}", f"-I{SOURCE_DIR}")]
        (status,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        log_size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "log size")
        # A fresh zeroed buffer: `b" " * 1` would be CPython's shared one-byte object,
        # and NVRTC writing into it corrupts every b" " in the process.
        log_buf = bytes(max(log_size, 1))
        _check(nvrtc.nvrtcGetProgramLog(prog, log_buf), "log")
        log = log_buf.decode(errors="replace").rstrip("\0 \n")
        if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            first = next((ln for ln in log.splitlines() if "error" in ln), status.name)
            raise CompileError(f"NVRTC could not compile {name}.cu for {arch}: {first.strip()}", log)
        size = _check(nvrtc.nvrtcGetCUBINSize(prog), "cubin size")
        cubin = bytes(max(size, 1))
        _check(nvrtc.nvrtcGetCUBIN(prog, cubin), "cubin")
        return bytes(cubin)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def get_cubin(name: str, arch: str, use_cache: bool = True, defines: tuple[str, ...] = ()) -> bytes:
    """The cubin of `kernels/cuda/<name>.cu` for `arch`, from the disk cache when present.

    `defines` are extra `-D` options (tile shapes). An unwritable cache directory only
    costs a recompile next time; it is never an error.
    """
    path = SOURCE_DIR / f"{name}.cu"
    if not path.is_file():
        raise CudaError(f"no CUDA kernel source {path}")
    source = path.read_text()
    version = nvrtc_version()
    options = OPTIONS + tuple(defines)
    cached = cache_dir() / f"{name}-{arch}-{cache_key(source, arch, version, options)}.cubin"
    if use_cache and cached.is_file():
        try:
            return cached.read_bytes()
        except OSError:
            pass
    cubin = compile_source(source, name, arch, options) if defines else compile_source(source, name, arch)
    if use_cache:
        _store(cached, cubin)
    return cubin


def _store(path: Path, data: bytes) -> None:
    """Write atomically (temp file + rename), so concurrent starts never see half a cubin."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".cubin")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass


def compile_all(arch: str, use_cache: bool = False) -> dict[str, bytes]:
    """Compile every source for `arch`; needs NVRTC but no GPU (used by CI)."""
    return {name: get_cubin(name, arch, use_cache=use_cache) for name in source_names()}
