"""Sampling chains: the DAE applied again and again, as four samplers.

Legend: N chains, D pixels, T steps, L noise levels.

With Gaussian corruption of size sigma, r(x) - x ~ sigma^2 grad log p_sigma(x) (PAPER.md,
Tweedie), so (r(x) - x) / sigma^2 estimates the score of the noise-smoothed density p_sigma.

  mean       x_{t+1} = r(c(x_t)) (the paper's chain; `corruption="none"` gives r(x_t)).  The
             posterior *mean* each step: mode-seeking, it loses classes and drifts over long runs.
  bernoulli  the GSN chain of Bengio et al. 2013: x_{t+1} ~ P(X | X~ = c(x_t)), which for a BCE
             decoder is Bernoulli(r(c(x_t))); any corruption.  Its stationary law estimates the
             data distribution when the data are binary; glyphs and MNIST are grey-level, and on
             glyphs the binarised states drift to faint, near-empty images (measured: 76 % of
             500 chains at 50 steps, 94 % at 200, below the ink of 99.5 % of real glyphs).
  langevin   unadjusted Langevin dynamics on the DAE's score (Alain & Bengio 2014):
             x <- x + eta (r(x) - x) / sigma^2 + sqrt(2 eta) n, eta = step_size * sigma^2, so
             the drift is step_size * (r(x) - x) and the noise sqrt(2 step_size) * sigma.  It
             samples p_sigma, the data blurred by N(0, sigma^2): sigma is the model's training
             level (a range's lowest).  States are not clipped: p_sigma lives on all of R^D, and
             r was trained on exactly such out-of-range inputs x + sigma n.  The step size trades
             accuracy for mixing: on a Gaussian of variance s^2 the chain's stationary variance
             is s^2 / (1 - step_size / 2).  Measured on gmm:2 (200 steps from noise), the states'
             mean log p_sigma is off by 0.005 nats at 0.1 and 0.17 at 0.5; on glyphs, chains
             from noise first fall into a filled blob, and after 200 annealed steps 51 % are
             still blobs at 0.1, 12 % at 0.5.  The default is 0.5 (NCSN's last level used 0.2,
             with 100 steps a level); pass 0.1 for accuracy on long chains.
  annealed   annealed Langevin (Song & Ermon 2019): the same update over a geometric ladder
             sigma_1 > ... > sigma_L, eta_i = step_size * sigma_i^2 (= eta * sigma_i^2 /
             sigma_L^2), T / L steps per level; large levels mix between classes, small ones
             refine.  The sample is the state after the whole ladder (with its final denoising):
             a state kept before step T is mid-ladder, not an annealing result.
  ddim       deterministic denoising (DDIM with eta = 0, Song et al. 2021, in the variance-
             exploding form of Karras et al. 2022): the start is first put at the top of the
             ladder, x_1 = x_0 + sigma_1 n (one Gaussian draw, STREAM_LANGEVIN at step 0: the ODE
             needs a start that looks like data plus noise of that size, which uniform noise in
             [0, 1] does not), then one level per step, sigma_t geometric from the range's top to
             its bottom, x0_t = r(x_t) read at sigma_t (the posterior mean), x_(t+1) = x0_t +
             (sigma_(t+1) / sigma_t) (x_t - x0_t), and sigma_(T+1) = 0, so the last step lands on
             x0_T.  No draw after the start.  Needs a DAE trained across a range
             (gaussian:LO..HI), best one that is told sigma (arch unet:...,sigma).

What a chain shows (`final`): 'mean' (the default) shows E[x | state], 'sample' the state itself.
For bernoulli 'mean' is r(c(x_t)), the expected value of the next draw: a Bernoulli draw of a
grey-level image is salt-and-pepper noise, and showing the expected value is the usual GSN
practice.  For langevin / annealed 'mean' is r(x_t), the "final denoising" step of score-based
samplers (Song & Ermon 2019; Jolicoeur-Martineau et al. 2021): without it a sample carries
noise of size sigma.  The trajectory, quality and mean_abs_change follow the same choice; the
states themselves evolve the same either way.

Annealing: ONE DAE trained across the levels (`--corruption gaussian:0.05..1`, a level per
training row, log-uniform), not one checkpoint per level.  A noise-blind denoiser's
(r(x) - x) / sigma^2 is a score estimate at level sigma only if it can tell sigma from x~; in
D = 784 it can, as |x~ - x|^2 ~ D sigma^2 concentrates and images lie near a low-dimensional
set (blind denoisers: Kadkhodaie & Simoncelli 2021; Sun et al. 2025, "Is noise conditioning
necessary?").  One training run, one checkpoint, and `sample --sampler annealed` reads the
ladder from it; training L models would cost L times as much for the same purpose.  In low D
(gmm:2) sigma is not identifiable and the estimate is a blend of levels.  The top level should
be comparable to the largest distance between data points (Song & Ermon 2020: 15.6 / sqrt(784)
= 0.56 per pixel on glyphs); measured on glyphs, 0.05..1 kept more classes than 0.1..0.5.

Chains run in batches; every draw of chain i at step t is element i*D + j of its Philox stream
at step t (corruption STREAM_CHAIN, Bernoulli STREAM_GSN, Langevin noise STREAM_LANGEVIN), so
the draws do not depend on the batch size (the results then differ only by BLAS rounding,
which varies with matrix shape: measured 1.5e-7 after 30 steps; a Bernoulli draw flips where
that rounding moves p across its uniform, about once in 10^7 draws), and a chain is
bit-reproducible for a given seed and batch size.  Inside the step loop nothing is read back
to the host but the kept states; Philox words are drawn on the device (philox_uint32, corrupt).  The trajectory is kept only every
`keep_every` steps for the first `keep_chains` chains.
"""
import math
from dataclasses import dataclass, field

import numpy as np

from tinydae.kernels.reference import TWO_M24, philox_normal, philox_uniform
from tinydae.backend import as_host_array
from tinydae.corruption import Corruption, gaussian
from tinydae.errors import ConfigError, DataError
from tinydae.rng import STREAM_CHAIN, STREAM_GSN, STREAM_LANGEVIN, STREAM_START
from tinydae.safety import check_memory

START_KINDS = ("noise", "bernoulli", "pca", "pixels")
CHANGE_ROWS = 256  # steps of per-chain changes held on the device before they are summed
SAMPLERS = ("mean", "bernoulli", "langevin", "annealed", "ddim")
FINALS = ("mean", "sample")
STEP_SIZE = 0.5    # Langevin eta as a fraction of sigma^2 (module docstring: why 0.5)
LEVELS = 10        # annealed: noise levels in the ladder


@dataclass
class ChainResult:
    samples: np.ndarray          # (N, D) the final states (as `final` shows them)
    trajectory: np.ndarray       # (min(N, keep_chains), len(kept_steps), D) kept states (as shown)
    kept_steps: list             # steps held in trajectory; 0 is the start
    mean_abs_change: np.ndarray  # (T,) mean |x_t - x_{t-1}| over chains and pixels, t = 1..T
    quality: dict = field(default_factory=dict)  # {step: mean quality} at kept steps
    host_syncs: int = 0          # device -> host copies made inside the step loop

    def save_h5(self, path):
        """Write the chain to HDF5 (atomically): datasets samples, trajectory, kept_steps,
        mean_abs_change, and quality_steps / quality when a quality measure was given."""
        import h5py

        from tinydae.checkpoint import atomic_write

        def write(out):
            with h5py.File(out, "w") as f:
                f.attrs["format"] = "tinydae-chain"
                for name in ("samples", "trajectory", "kept_steps", "mean_abs_change"):
                    f.create_dataset(name, data=np.asarray(getattr(self, name)))
                if self.quality:
                    f.create_dataset("quality_steps", data=np.array(list(self.quality), np.int64))
                    f.create_dataset("quality", data=np.array(list(self.quality.values())))
        atomic_write(path, write)


def _check_states(x, dim, what, backend=None):
    # any array (Backend.as_array); host arrays stay on the host, chain() copies a batch at a time
    x = backend.as_array(x, what, keep_host=True) if backend is not None else as_host_array(x, what)
    if x.ndim != 2 or x.shape[1] != dim or x.shape[0] == 0:
        raise DataError(f"{what} must have shape (N, {dim}), got {x.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"{what} hold NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:  # as the CLI refuses a samples file outside [0, 1] (without --rescale)
        raise DataError(f"{what} lie in [{lo:g}, {hi:g}], outside [0, 1]; rescale them (e.g. x / 255)")
    return x


@dataclass(frozen=True)
class Sampler:
    """A checked sampler: name, the corruption c (mean, bernoulli) or the Gaussian whose
    level(s) the score is read at (langevin, annealed), final, step_size, and `sigmas`: the
    Langevin levels, sigma_1 > ... > sigma_L (one for langevin, none for the others); for ddim
    (top, bottom): the range its per-step ladder spans."""
    name: str
    corruption: Corruption
    final: str = "mean"
    step_size: float | None = None
    sigmas: tuple = ()

    def sigma(self, t, steps):
        """The level of step t = 1..steps: Langevin's ladder in equal runs of steps / L (with fewer
        steps than levels, L - 1 levels spread over the steps: the first step at the top, the last
        at the bottom, so that a short chain still ends where the ladder ends); ddim's geometric
        from top (t = 1) to bottom (t = steps)."""
        if self.name == "ddim":
            top, bottom = self.sigmas
            return top if steps <= 1 else top * (bottom / top) ** ((t - 1) / (steps - 1))
        L = len(self.sigmas)
        if steps < L:
            return self.sigmas[-1] if steps <= 1 else self.sigmas[round((t - 1) * (L - 1) / (steps - 1))]
        return self.sigmas[min(L - 1, (t - 1) * L // steps)]

    def next_sigma(self, t, steps):
        """The level after step t: where that step's r(x) is read next (langevin, annealed: the
        next drift; after the last step, the final denoising at the last level), or the level
        ddim moves to (0 after its last step: the sample is the denoised x0)."""
        if self.name == "ddim" and t >= steps:
            return 0.0
        return self.sigma(min(t + 1, steps), steps)


def make_sampler(sampler="mean", corruption="gaussian:0.3", final=None, step_size=None, levels=None):
    """Check a sampler's options (before any work) and fill in the defaults -> Sampler.

    corruption: a spec or Corruption (already resolved from 'model');
    final: 'mean' (default) | 'sample'; step_size: langevin / annealed only, eta / sigma^2 in
    (0, 1], default STEP_SIZE; levels: annealed only, ladder length >= 2, default LEVELS
    """
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    final = "mean" if final is None else final
    if final not in FINALS:
        raise ConfigError(f"unknown final {final!r}; choose mean (E[x | state]) or sample (the state)")
    if sampler == "mean" and final != "mean":
        raise ConfigError("the mean sampler's state is already the mean: final='sample' needs "
                          "sampler bernoulli, langevin or annealed")
    c = Corruption.parse(corruption)
    for name, value, takers in (("step_size", step_size, ("langevin", "annealed")),
                                ("levels", levels, ("annealed",))):
        if value is not None and sampler not in takers:
            raise ConfigError(f"{name} applies to the {' and '.join(takers)} sampler{'s' * (len(takers) > 1)}, "
                              f"not {sampler}")
    if sampler in ("mean", "bernoulli"):
        return Sampler(sampler, c, final)
    if sampler == "ddim":
        if c.mode != "gaussian" or c.level_max is None:
            raise ConfigError(f"the ddim sampler walks a range of Gaussian levels, and corruption {c} has none: "
                              "train with e.g. --corruption gaussian:0.01..1, or pass a range such as "
                              "gaussian:0.01..1")
        return Sampler(sampler, c, final, None, (c.level_max, c.level))
    step_size = STEP_SIZE if step_size is None else step_size
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not 0 < step_size <= 1:
        raise ConfigError(f"step size must be a number in (0, 1] (eta as a fraction of sigma^2; "
                          f"default {STEP_SIZE}), got {step_size!r}")
    if c.mode != "gaussian" or c.level <= 0:
        raise ConfigError(f"the {sampler} sampler reads the score (r(x) - x) / sigma^2 of a DAE trained "
                          f"with Gaussian corruption; got corruption {c}: pass gaussian:SIGMA")
    if sampler == "langevin":
        return Sampler(sampler, c, final, float(step_size), (c.level,))  # a range: its best score
    levels = LEVELS if levels is None else levels
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ConfigError(f"levels must be an integer >= 2, got {levels!r}")
    if c.level_max is None:
        raise ConfigError(f"annealed sampling needs a range of noise levels, and corruption {c} has one: "
                          "train with e.g. --corruption gaussian:0.05..1 (one DAE across levels), or "
                          "pass a range such as gaussian:0.1..0.5")
    sigmas = tuple(float(v) for v in np.geomspace(c.level_max, c.level, levels))
    return Sampler(sampler, c, final, float(step_size), sigmas)


def check_sampler_for(model, s):
    """A noise-conditional model is told the level of its input: the mean and bernoulli chains
    need c to have one Gaussian level (a ladder sampler reads its own levels)."""
    if getattr(model, "noise_conditional", False) and not s.sigmas:
        c = s.corruption
        if c.mode != "gaussian" or not c.level > 0 or c.level_max is not None:
            raise ConfigError(f"a noise-conditional model is told the noise level of its input: the {s.name} chain "
                              f"needs one Gaussian level, got {c}: pass one (--chain-corruption gaussian:0.3; "
                              f"corruption='gaussian:0.3' in Python), or walk the ladder with --sampler ddim or "
                              f"annealed")


def _kept_steps(steps, keep_every, keep_steps):
    """The steps whose states chain() keeps: 0, every keep_every-th and the last, or exactly
    0, the given keep_steps and the last."""
    if keep_steps is None:
        return sorted(set(range(0, steps + 1, keep_every)) | {steps})
    keep_steps = sorted(set(keep_steps))
    if any(not isinstance(t, (int, np.integer)) or t < 0 or t > steps for t in keep_steps):
        raise ConfigError(f"keep_steps must be integers in [0, {steps}], got {keep_steps}")
    return sorted({0, steps, *(int(t) for t in keep_steps)})


def chain(model, x0, steps, corruption="model", keep_every=1, keep_chains=64, seed=0,
          batch_size=1024, quality=None, sampler="mean", final=None, step_size=None, levels=None,
          keep_steps=None, first_chain=0):
    """Run N chains for `steps` steps from x0 (N, D).

    corruption: 'model' (the model's training corruption), a spec such as 'gaussian:0.3',
                or 'none' for x_{t+1} = r(x_t); for langevin / annealed the Gaussian level
                (range) the score is read at
    quality:    optional callable (n, D) host array -> (n,) per-sample scores, averaged at the
                kept steps (e.g. exact log p on known-density data)
    sampler:    'mean' (the default, x_{t+1} = r(c(x_t))) | 'bernoulli' | 'langevin' | 'annealed'
    final:      'mean' (default) | 'sample': what samples, trajectory, quality and
                mean_abs_change show (module docstring)
    step_size:  langevin / annealed: eta / sigma^2, default STEP_SIZE
    levels:     annealed: the ladder's length, default LEVELS
    keep_steps: the steps to keep (0 and `steps` always are), instead of every keep_every-th
    first_chain: the index of x0's first chain in a larger set (chain i's draws depend on i only:
                a rank of a sharded run passes its share's first index and draws what one
                process would)
    -> ChainResult
    """
    x0 = _check_states(x0, model.input_dim, "chain starting points", model.backend)
    if not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"steps must be an integer >= 0, got {steps!r}")
    if keep_every < 1 or keep_chains < 0 or batch_size < 1:
        raise ConfigError("keep_every and batch_size must be >= 1, keep_chains >= 0")
    if corruption == "model":
        if model.corruption is None:
            raise ConfigError("this model does not record its training corruption; pass corruption= "
                              "(e.g. 'gaussian:0.3', or 'none' for x_{t+1} = r(x_t))")
        corruption = model.corruption
    s = make_sampler(sampler, corruption, final, step_size, levels)
    check_sampler_for(model, s)
    check_memory(chain_memory(model, len(x0), steps, keep_every, keep_chains, batch_size, sampler=sampler,
                              keep_steps=keep_steps),
                 f"{len(x0):,} chains of {model.input_dim} values x {steps:,} steps",
                 "use fewer chains or steps, a larger keep_every or fewer keep_chains")
    backend, D, N = model.backend, model.input_dim, len(x0)
    kept_steps = _kept_steps(steps, keep_every, keep_steps)
    n_traj = min(N, keep_chains)
    trajectory = np.empty((n_traj, len(kept_steps), D), np.float32)
    samples = np.empty((N, D), np.float32)
    change = np.zeros(steps)
    quality_sum = {t: 0.0 for t in kept_steps} if quality else {}
    syncs = 0

    def keep(x_dev, start, k, t):
        """Copy kept states to the host, only when there is something to keep."""
        if start >= n_traj and not quality:
            return 0
        x_host = backend.to_host(x_dev)
        stop = min(n_traj, start + len(x_host))  # the kept chains of this batch
        if start < stop:
            trajectory[start:stop, k] = x_host[:stop - start]
        if quality:
            quality_sum[t] += float(np.sum(quality(x_host)))
        return 1

    xp = backend.xp
    step = STEPS[s.name]
    for start in range(0, N, batch_size):
        x = model.as_input(x0[start:start + batch_size])
        # Per-chain changes of up to CHANGE_ROWS steps stay on the device (no sync per step);
        # each full block is summed over chains into `changes`, still on the device.
        row_changes = xp.empty((min(steps, CHANGE_ROWS), len(x)), np.float64)
        changes = xp.zeros(steps, np.float64)
        # state: what the next step needs; view: what is shown (x_0 at step 0, module docstring)
        langevin = s.name in ("langevin", "annealed")  # their state carries r(x)
        state = (x, model.reconstruct(x, check=False, sigma=s.sigmas[0])) if langevin else x
        if s.name == "ddim":  # x_T = x_0 + sigma_top n: the start at the top of the ladder (STREAM_LANGEVIN, step 0)
            state = gaussian(s.sigmas[0]).apply(backend, x, seed, 0, STREAM_LANGEVIN, offset=(first_chain + start) * D)
        view = x
        k = 0
        keep(view, start, k, 0)
        for t in range(1, steps + 1):
            draw = Draw(seed, t, (first_chain + start) * D, *((s.sigma(t, steps), s.next_sigma(t, steps)) if s.sigmas
                                               else (None, None)))
            state, view = step(model, s, state, view, draw, row_changes[(t - 1) % CHANGE_ROWS])
            if t % CHANGE_ROWS == 0 or t == steps:
                first = (t - 1) // CHANGE_ROWS * CHANGE_ROWS
                changes[first:t] = row_changes[:t - first].sum(axis=1)
            if k + 1 < len(kept_steps) and t == kept_steps[k + 1]:
                k += 1
                syncs += keep(view, start, k, t)
        change += backend.to_host(changes)
        samples[start:start + batch_size] = backend.to_host(view)
    return ChainResult(samples, trajectory, kept_steps, change / (N * D),
                       {t: q / N for t, q in quality_sum.items()}, syncs)


# ----------------------------------------------------------------------------------------
# One step of each sampler: (model, Sampler, state, view, Draw, change) -> (state, view).
# x: (B, D) on the model's device; change: (B,) float64, receives sum_j |view' - view|.
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Draw:
    """Where a step's random draws come from: Philox (seed, step t), stream element
    offset + i*D + j for chain i, pixel j of the batch; sigma: the step's Langevin level;
    sigma_next: the next step's (the level at which the step's r(x) is read: the next drift's)."""
    seed: int
    t: int
    offset: int
    sigma: float | None = None
    sigma_next: float | None = None


def _corrupted(model, c, x, draw):
    """c(x) from STREAM_CHAIN, or x itself for 'none'."""
    if c.mode == "none":
        return x
    return c.apply(model.backend, x, draw.seed, draw.t, STREAM_CHAIN, offset=draw.offset)


def _changed(xp, new, old, change):
    """change[i] = sum_j |new_ij - old_ij| in float64 (as the fused chain step) -> new"""
    change[...] = xp.abs(new.astype(np.float64) - old).sum(axis=1)
    return new


def uniforms(backend, shape, draw, stream):
    """Philox uniforms in [0, 1) on the backend, element draw.offset + k of `stream` at step
    draw.t: (shape) float32, equal to reference.philox_uniform's bit for bit."""
    words = backend.xp.empty(int(np.prod(shape)), np.uint32)
    backend.kernels.philox_uint32(words, int(draw.seed), int(draw.t), stream, int(draw.offset))
    return ((words >> np.uint32(8)).astype(np.float32) * TWO_M24).reshape(shape)


def _told(s):
    """The noise level a noise-conditional model is told for c(x): c's level (noise-blind
    models ignore it; chain() checked that c has one Gaussian level for such a model)."""
    return s.corruption.level if s.corruption.level > 0 else None


def mean_step(model, s, x, view, draw, change):
    """x_{t+1} = r(c(x_t)): the fused chain step (bias, sigmoid and change in one pass)."""
    x = model.chain_step(_corrupted(model, s.corruption, x, draw), x, change, sigma=_told(s))
    return x, x


def bernoulli_step(model, s, x, view, draw, change):
    """p = r(c(x_t)), x_{t+1} = [u < p] ~ Bernoulli(p), u from STREAM_GSN; shows p or x_{t+1}."""
    x_in = _corrupted(model, s.corruption, x, draw)
    p = model.chain_step(x_in, view, change, sigma=_told(s)) if s.final == "mean" else \
        model.reconstruct(x_in, check=False, sigma=_told(s))
    x = (uniforms(model.backend, p.shape, draw, STREAM_GSN) < p).astype(p.dtype)
    return x, p if s.final == "mean" else _changed(model.backend.xp, x, view, change)


def langevin_step(model, s, state, view, draw, change):
    """x <- x + eta (r(x) - x) / sigma^2 + sqrt(2 eta) n, eta = step_size * sigma^2, n from
    STREAM_LANGEVIN (the corrupt kernel adds it); state = (x, r(x)), so r runs once a step
    and r(x_T) is the final denoising.  Shows r(x) or x."""
    x, rx = state
    drift = x + s.step_size * (rx - x)  # x + eta * score, the score (r(x) - x) / sigma^2
    x = gaussian(math.sqrt(2 * s.step_size) * draw.sigma).apply(
        model.backend, drift, draw.seed, draw.t, STREAM_LANGEVIN, offset=draw.offset)
    level = draw.sigma_next  # r(x) serves the next step's drift (and, after the last, the final denoising)
    rx = model.chain_step(x, view, change, sigma=level) if s.final == "mean" else \
        model.reconstruct(x, check=False, sigma=level)
    return (x, rx), rx if s.final == "mean" else _changed(model.backend.xp, x, view, change)


def ddim_step(model, s, x, view, draw, change):
    """x0 = r(x) at sigma_t, x <- x0 + (sigma_(t+1) / sigma_t) (x - x0): deterministic, no draw.
    Shows x0 (the posterior mean) or x."""
    x0 = model.chain_step(x, view, change, sigma=draw.sigma) if s.final == "mean" else \
        model.reconstruct(x, check=False, sigma=draw.sigma)
    x = x0 + x.dtype.type(draw.sigma_next / draw.sigma) * (x - x0)
    return x, x0 if s.final == "mean" else _changed(model.backend.xp, x, view, change)


STEPS = {"mean": mean_step, "bernoulli": bernoulli_step, "langevin": langevin_step,
         "annealed": langevin_step, "ddim": ddim_step}  # annealed: the level changes with the step (Draw.sigma)


# Peak bytes per value while (n, D) start points are drawn: Philox's uint64 counters and index
# arrays on top of the float32 result (tracemalloc: 46 for noise, bernoulli and pixels, 16 for pca).
START_BYTES_PER_VALUE = 48


# Extra bytes per value of a batch for the samplers beyond the fused mean step: the carried
# r(x), the drift or the uniforms, a float64 change temporary (tracemalloc, float64 model: 16
# at most, for langevin with final='sample').
SAMPLER_BYTES_PER_VALUE = {"mean": 0, "bernoulli": 24, "langevin": 24, "annealed": 24, "ddim": 24}


def chain_memory(model, n, steps, keep_every=1, keep_chains=64, batch_size=1024, start=None,
                 sampler="mean", keep_steps=None):
    """Bytes of host memory that chain() on n chains needs at its peak, on the high side, so
    that a caller can refuse a run before it starts instead of failing with MemoryError.

    Counts the (n, D) starting points and final samples, the kept trajectory, one batch's
    activations, corruption draws and sampler temporaries, the per-step change sums, and, with start= one of
    START_KINDS, drawing the starting points (a peak of its own, before the chains run).
    The model's parameters are not counted.
    """
    D, B = model.input_dim, min(n, batch_size)
    kept = steps // keep_every + 2 if keep_steps is None else len(set(keep_steps)) + 2
    item = np.dtype(model.dtype).itemsize
    from tinydae.model import model_cost

    widths = model_cost(dict(model.config, input_dim=D))[1]   # what each layer holds (on the high side)
    nbytes = 2 * n * D * 4                                    # x0 and samples (float32)
    nbytes += min(n, keep_chains) * kept * D * 4              # trajectory
    nbytes += 2 * B * widths * item                           # a batch's layer inputs and outputs
    nbytes += B * D * START_BYTES_PER_VALUE                   # its corruption draws (NumPy Philox)
    nbytes += B * D * SAMPLER_BYTES_PER_VALUE[sampler]       # and the sampler's own temporaries
    nbytes += min(steps, CHANGE_ROWS) * B * 8 + 3 * steps * 8 + kept * 100  # changes, kept_steps
    if start in START_KINDS:  # drawn, and its temporaries freed, before the chains run
        nbytes = max(nbytes, n * D * START_BYTES_PER_VALUE)
    return nbytes


def kernel_launches_per_chain_step(model, corruption):
    """Fused-kernel launches in one chain step, as the code is written: the corruption (1, or
    none for 'none'), each layer's bias+activation but the last (1 each), and the last layer's
    bias+sigmoid+change (1).  The GEMMs are cuBLAS (or BLAS) calls on top of these; every
    CHANGE_ROWS steps one sum over the chains (an xp call) folds the changes."""
    # the last layer's bias+activation is the fused bias+sigmoid+change: one launch either way
    from tinydae.layers import launches

    return int(Corruption.parse(corruption).mode != "none") + sum(launches(layer)[0] for layer in model.layers)


def improve(model, samples, steps, **kwargs):
    """Run the chain from given samples (another model's output) to improve them; any
    sampler of chain() (sampler=, final=, step_size=, levels=)."""
    return chain(model, samples, steps, **kwargs)


# ----------------------------------------------------------------------------------------
# Starting points and baseline generators
# ----------------------------------------------------------------------------------------


def noise_start(n, dim, seed=0, first=0):
    """Uniform noise in [0, 1): (n, dim) float32 from Philox stream STREAM_START, step 0.
    first: the index of the first chain (chains first..first+n-1 of a larger set: a rank's share)."""
    return philox_uniform(n * dim, seed, 0, STREAM_START, first * dim).reshape(n, dim)


def bernoulli_start(n, dim, seed=0, first=0):
    """Bernoulli(0.5) pixels: (n, dim) float32 of 0s and 1s (STREAM_START, step 1)."""
    return (philox_uniform(n * dim, seed, 1, STREAM_START, first * dim) < 0.5).astype(np.float32).reshape(n, dim)


class PCABaseline:
    """A weak generative model: a Gaussian in the top-k principal components of the data,
    sampled and clipped to [0, 1]."""

    name = "pca"

    def __init__(self, components=20):
        if components < 1:
            raise ConfigError(f"PCA baseline needs components >= 1, got {components}")
        self.components = components

    def fit(self, data, max_rows=5000):
        x = as_host_array(data, "baseline training data", np.float64)[:max_rows]
        self.mean = x.mean(0)
        _, s, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        k = min(self.components, len(s))
        self.basis = vt[:k]                                   # (k, D)
        self.std = s[:k] / math.sqrt(max(len(x) - 1, 1))      # per-component standard deviation
        return self

    def sample(self, n, seed=0, first=0):
        """-> (n, D) float32 in [0, 1] (Philox normals, STREAM_START step 2); first: as noise_start."""
        k = len(self.std)
        z = philox_normal(n * k, seed, 2, STREAM_START, first * k).reshape(n, -1).astype(np.float64)
        return np.clip(self.mean + (z * self.std) @ self.basis, 0, 1).astype(np.float32)


class PixelBernoulliBaseline:
    """A weak generative model: each pixel on with its mean intensity, independently."""

    name = "pixels"

    def fit(self, data):
        self.p = as_host_array(data, "baseline training data", np.float64).mean(0)
        return self

    def sample(self, n, seed=0, first=0):
        u = philox_uniform(n * len(self.p), seed, 3, STREAM_START, first * len(self.p)).reshape(n, -1)
        return (u < self.p).astype(np.float32)


def start_points(kind, n, dim, seed=0, data=None, first=0):
    """'noise' | 'bernoulli' | 'pca' | 'pixels' -> (n, dim) float32 starting points.
    The baselines ('pca', 'pixels') are fitted to `data` (N, dim).  first: the first chain's index
    (chain i's start depends on i only, so a rank draws just its share)."""
    if kind not in START_KINDS:
        raise ConfigError(f"unknown start {kind!r}; choose one of {', '.join(START_KINDS)}")
    if n < 1:
        raise ConfigError(f"need at least one chain, got n={n}")
    if kind == "noise":
        return noise_start(n, dim, seed, first)
    if kind == "bernoulli":
        return bernoulli_start(n, dim, seed, first)
    if data is None:
        raise ConfigError(f"the {kind!r} baseline is fitted to training data; pass data=")
    data = _check_states(data, dim, "baseline training data")
    baseline = PCABaseline().fit(data) if kind == "pca" else PixelBernoulliBaseline().fit(data)
    return baseline.sample(n, seed, first)
