"""Stream ids and host-side draws of the Philox generator (kernels/philox.py).

Every random draw is a pure function of (seed, stream, step, element index), so a
resumed run continues the same streams and backends agree bit for bit.
"""
import numpy as np

from tinydae.kernels.reference import philox_normal

STREAM_TRAIN_CORRUPTION = 0  # step = training step
STREAM_VALID_CORRUPTION = 1  # step = 0: the same corrupted validation set every epoch
STREAM_INIT = 2              # step = layer index
STREAM_CHAIN = 3             # step = chain step
STREAM_START = 4             # noise starting points for chains
STREAM_GSN = 5               # the GSN chain's Bernoulli draws; step = chain step
STREAM_LANGEVIN = 6          # Langevin chains' noise; step = chain step
STREAM_NOISE_LEVEL = 1 << 16  # + a corruption's stream: per-row levels of a noise range


def host_normal(shape, seed, step, stream):
    """Standard normals of the given shape, float64 (from float32 Box-Muller)."""
    n = int(np.prod(shape))
    return philox_normal(n, seed, step, stream).reshape(shape).astype(np.float64)

