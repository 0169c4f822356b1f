"""Corruption processes c(x~ | x), via the backend's fused ``corrupt`` kernel.

    gaussian(sigma)    x~ = x + sigma * n, n ~ N(0, I)  (additive, not clipped: this is
                       the corruption under which r(x) - x = sigma^2 grad log p_sigma(x))
    gaussian(lo, hi)   the same with a noise level per row, log-uniform in [lo, hi): one DAE
                       trained across a range of levels, for annealed sampling (sampling.py);
                       spec 'gaussian:0.1..0.5'
    masking(p)         each pixel set to 0 with probability p
    salt_pepper(p)     each pixel set to 0 or 1 (half each) with probability p
    none()             x~ = x

Draws come from Philox keyed by the seed and countered by (stream, step, element),
so the same (seed, step) corrupts the same batch identically on any backend.  A range's
per-row level is element (row index) of stream STREAM_NOISE_LEVEL + stream at the same step,
so it too depends on (seed, step, row) only, not on the batch size.
"""
import math
from dataclasses import dataclass

import numpy as np

from tinydae.kernels.reference import (CORRUPTION_GAUSSIAN, CORRUPTION_MASKING, CORRUPTION_NONE,
                               CORRUPTION_SALT_PEPPER)
from tinydae.errors import ConfigError
from tinydae.kernels.reference import TWO_M24
from tinydae.rng import STREAM_NOISE_LEVEL, STREAM_TRAIN_CORRUPTION

MODES = {"none": CORRUPTION_NONE, "gaussian": CORRUPTION_GAUSSIAN,
         "masking": CORRUPTION_MASKING, "salt_pepper": CORRUPTION_SALT_PEPPER}


@dataclass(frozen=True)
class Corruption:
    mode: str
    level: float = 0.0               # sigma or p; for a range, its lowest level
    level_max: float | None = None   # a range's highest level (gaussian only), else None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"unknown corruption {self.mode!r}; choose one of "
                              "gaussian:SIGMA, masking:P, salt_pepper:P, none")
        level = self.level
        if not isinstance(level, (int, float)) or not math.isfinite(level) or level < 0:
            raise ConfigError(f"corruption level must be a finite number >= 0, got {level!r}")
        if self.mode in ("masking", "salt_pepper") and level > 1:
            raise ConfigError(f"{self.mode} probability must be in [0, 1], got {level}")
        top = self.level_max
        if top is not None:
            if self.mode != "gaussian":
                raise ConfigError(f"only gaussian corruption takes a range of levels, got {self.mode}")
            if not isinstance(top, (int, float)) or not math.isfinite(top) or not 0 < level < top:
                raise ConfigError(f"a noise range LO..HI needs 0 < LO < HI, finite, got {level!r}..{top!r}")

    @property
    def sigmas(self):
        """(lowest, highest) Gaussian level: equal for a single level."""
        return self.level, self.level if self.level_max is None else self.level_max

    @classmethod
    def parse(cls, spec):
        """'gaussian:0.3', 'gaussian:0.1..0.5', 'masking:0.25', 'salt_pepper:0.1' or 'none'
        -> Corruption."""
        if isinstance(spec, Corruption):
            return spec
        name, _, value = str(spec).strip().partition(":")
        if name == "none":
            if value:
                raise ConfigError(f"corruption 'none' takes no level, got {spec!r}")
            return cls("none", 0.0)
        if name not in MODES:
            raise ConfigError(f"unknown corruption {spec!r}; use gaussian:SIGMA, masking:P, "
                              "salt_pepper:P or none")
        low, dots, high = value.partition("..")
        try:
            level, top = float(low), float(high) if dots else None
        except ValueError:
            raise ConfigError(f"corruption {spec!r} needs a numeric level, e.g. {name}:0.3") from None
        return cls(name, level, top)

    def __str__(self):
        if self.level_max is not None:
            return f"{self.mode}:{self.level:g}..{self.level_max:g}"
        return "none" if self.mode == "none" else f"{self.mode}:{self.level:g}"

    def apply(self, backend, x, seed, step, stream=STREAM_TRAIN_CORRUPTION, offset=0):
        """x: (B, D) on the backend -> a new corrupted array (B, D).  offset: the stream element
        of x[0, 0] (a multiple of D when x holds rows offset // D onwards of a larger set)."""
        xp, out = backend.xp, backend.xp.empty_like(x)
        if self.level_max is None:
            backend.kernels.corrupt(out, x, MODES[self.mode], float(self.level), int(seed), int(step),
                                    int(stream), int(offset))
            return out
        backend.kernels.corrupt(out, xp.zeros_like(x), MODES["gaussian"], 1.0, int(seed), int(step),
                                int(stream), int(offset))  # the standard normals of the fixed level
        levels = self.row_levels(backend, len(x), seed, step, stream, offset // x.shape[1])
        out *= levels.astype(x.dtype)[:, None]
        out += x
        return out

    def row_sigmas(self, backend, rows, seed, step, stream=STREAM_TRAIN_CORRUPTION, first_row=0):
        """The Gaussian level of each row as apply() draws it (what a noise-conditional model is
        told): the level itself for one level, row_levels for a range."""
        if self.mode != "gaussian" or not self.level > 0:
            raise ConfigError(f"a noise-conditional model is told the Gaussian level of its input, and corruption "
                              f"{self} has none: use gaussian:SIGMA or gaussian:LO..HI")
        return self.level if self.level_max is None else self.row_levels(backend, rows, seed, step, stream, first_row)

    def row_levels(self, backend, rows, seed, step, stream=STREAM_TRAIN_CORRUPTION, first_row=0):
        """A range's noise level of each row: (rows,) log-uniform in [lo, hi), on the backend.
        Log-uniform gives each octave of sigma the same share of training, as a geometric
        ladder of levels does (Song & Ermon 2019)."""
        xp, lo, hi = backend.xp, self.level, self.level_max
        words = xp.empty(rows, np.uint32)
        backend.kernels.philox_uint32(words, int(seed), int(step), STREAM_NOISE_LEVEL + int(stream),
                                      int(first_row))
        u = (words >> np.uint32(8)).astype(np.float64) * float(TWO_M24)  # as uniform_from_words
        return lo * (hi / lo) ** u  # float64


def gaussian(sigma, sigma_max=None):
    """gaussian(0.3): one level; gaussian(0.1, 0.5): a level per row, log-uniform in [0.1, 0.5)."""
    return Corruption("gaussian", float(sigma), None if sigma_max is None else float(sigma_max))


def masking(p):
    return Corruption("masking", float(p))


def salt_pepper(p):
    return Corruption("salt_pepper", float(p))


def none():
    return Corruption("none", 0.0)
