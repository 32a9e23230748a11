"""Code generation: schedule the IR into kernels and render them for Numba (CPU) or numba.cuda."""
