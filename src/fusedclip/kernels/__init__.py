"""fusedclip's compiled kernels: ``cpu`` (Cython + OpenMP); the GPU kernels come in their own module."""
