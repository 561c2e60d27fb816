"""Compute kernels: Numba CPU kernels and CUDA C sources compiled at run time by NVRTC."""
