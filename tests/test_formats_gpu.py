"""Models read from every format run on the CUDA backend as on the CPU one (needs a GPU).

GGUF Q8_0 arrives with int8 groups of 32 (not the 64 our own quantizer picks), fp16 and
bf16 files arrive as fp32: the CUDA backend must take each as it is.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from inference.errors import BackendError
from kernels.cuda_driver import CudaError

from .conftest import DATA

pytestmark = pytest.mark.gpu
FIX = os.path.join(DATA, "formats")
TOKENS = [1, 5, 9, 3, 17, 30, 2, 11]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """GGUF tokenizers are written to the user cache: keep the tests' copies out of it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))



@pytest.fixture(scope="module", autouse=True)
def _need_gpu():
    try:
        from kernels import cuda_compile, cuda_driver
        cuda_driver.init()
        cuda_compile.nvrtc_version()
    except (BackendError, ImportError, CudaError) as e:
        pytest.skip(f"no usable CUDA GPU: {e}")


def _logits(backend) -> np.ndarray:
    out = []
    for pos, t in enumerate(TOKENS):
        backend.forward([t], pos)
        out.append(np.asarray(backend.logits(), np.float32).copy())
    return np.stack(out)


@pytest.mark.parametrize("name", ["tiny-q8_0.gguf", "tiny-f16.gguf", "meta2", "hf_sharded", "meta_legacy"])
def test_cuda_equals_cpu_for_every_format(name):
    from inference.backends.cpu import CpuBackend
    from inference.formats import load
    from inference.loader import create_backend
    w = load(os.path.join(FIX, name)).weights
    cpu = _logits(CpuBackend(w))
    gpu_backend = create_backend(w, "cuda")
    try:
        gpu = _logits(gpu_backend)
    finally:
        gpu_backend.close()
    np.testing.assert_allclose(gpu, cpu, atol=2e-3, rtol=0)
