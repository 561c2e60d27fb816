"""Compute backends: `cpu` (Numba kernels) and `cuda` (NVRTC kernels via cuda-python)."""
