"""Corruption processes c(x~ | x), via the backend's fused ``corrupt`` kernel.

    gaussian(sigma)    x~ = x + sigma * n, n ~ N(0, I)  (additive, not clipped: this is
                       the corruption under which r(x) - x = sigma^2 grad log p_sigma(x))
    masking(p)         each pixel set to 0 with probability p
    salt_pepper(p)     each pixel set to 0 or 1 (half each) with probability p
    none()             x~ = x

Draws come from Philox keyed by the seed and countered by (stream, step, element),
so the same (seed, step) corrupts the same batch identically on any backend.
"""
import math
from dataclasses import dataclass

from tinydae.kernels.reference import (CORRUPTION_GAUSSIAN, CORRUPTION_MASKING, CORRUPTION_NONE,
                               CORRUPTION_SALT_PEPPER)
from tinydae.errors import ConfigError
from tinydae.rng import STREAM_TRAIN_CORRUPTION

MODES = {"none": CORRUPTION_NONE, "gaussian": CORRUPTION_GAUSSIAN,
         "masking": CORRUPTION_MASKING, "salt_pepper": CORRUPTION_SALT_PEPPER}


@dataclass(frozen=True)
class Corruption:
    mode: str
    level: float = 0.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"unknown corruption {self.mode!r}; choose one of "
                              "gaussian:SIGMA, masking:P, salt_pepper:P, none")
        level = self.level
        if not isinstance(level, (int, float)) or not math.isfinite(level) or level < 0:
            raise ConfigError(f"corruption level must be a finite number >= 0, got {level!r}")
        if self.mode in ("masking", "salt_pepper") and level > 1:
            raise ConfigError(f"{self.mode} probability must be in [0, 1], got {level}")

    @classmethod
    def parse(cls, spec):
        """'gaussian:0.3', 'masking:0.25', 'salt_pepper:0.1' or 'none' -> Corruption."""
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
        try:
            level = float(value)
        except ValueError:
            raise ConfigError(f"corruption {spec!r} needs a numeric level, e.g. {name}:0.3") from None
        return cls(name, level)

    def __str__(self):
        return "none" if self.mode == "none" else f"{self.mode}:{self.level:g}"

    def apply(self, backend, x, seed, step, stream=STREAM_TRAIN_CORRUPTION, offset=0):
        """x: (B, D) on the backend -> a new corrupted array (B, D)."""
        out = backend.xp.empty_like(x)
        backend.kernels.corrupt(out, x, MODES[self.mode], float(self.level), int(seed), int(step),
                                int(stream), int(offset))
        return out


def gaussian(sigma):
    return Corruption("gaussian", float(sigma))


def masking(p):
    return Corruption("masking", float(p))


def salt_pepper(p):
    return Corruption("salt_pepper", float(p))


def none():
    return Corruption("none", 0.0)
