"""The codes the host and the device kernels share: the non-finite policies
and the actions a step takes (kernels/cuda.py's finalize writes A_NONE,
A_SCALE and A_ZERO to its state; ``fusedclip._policy`` decides with them on
the host).  Constants only: the kernels import nothing above them."""

POLICIES = ("error", "skip", "zero", "random", "propagate")
#: the policies' codes (the CUDA finalize kernel reads them)
POLICY_CODES = {name: i for i, name in enumerate(POLICIES)}
#: what a step does to the buffers: the one table of actions, host and device
A_NONE, A_SCALE, A_ZERO, A_RAISE, A_RANDOM = 0, 1, 2, 3, 4
