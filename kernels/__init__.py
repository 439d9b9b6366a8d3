"""Numba kernels for best-of-N scoring (installed as ``oirl_fast.kernels``)."""
