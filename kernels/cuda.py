"""CUDA twins of kernels/reference.py: numba-cuda kernels launched on CuPy arrays.

The kernels' bodies live beside their references in the op modules (kernels/noise.py,
bias_act.py, loss.py, optim.py, conv.py); this module compiles them (common.rebind: their
`cuda` becomes numba.cuda, their helpers device functions), declares their signatures and
launches them.  Same signatures as the reference.  Arrays are CuPy arrays on a GPU, or NumPy arrays under
Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), which is how CI tests this file.

Each kernel declares its signatures (``kernel("void(T[::1], ...)")(body)``, T the data dtype):
``python cli.py build-cuda`` compiles every variant for a GPU architecture without a GPU,
and kernels/cuda_launch.py launches them: by default from cubins through CuPy (expected: a few
microseconds per launch; not yet measured on a GPU), or through numba's dispatcher (TINYDAE_CUDA_LAUNCHER=numba, and
always under the simulator).  Launches go on CuPy's current stream: tinydae orders all of
its work on that one stream, so a launch never blocks the host.

Results do not depend on the grid size: elementwise kernels are grid-stride loops; the
loss sum is reduced per row by one block of LOSS_THREADS threads in a fixed tree order,
then the last block to finish adds the row partials in row order; the bias gradient is summed
per column over fixed 64-row chunks, one block per (column tile, chunk), and the last block of
each tile adds the chunk partials in chunk order, as the CPU twin does.  No float atomics.
No fastmath: results must match the other twins.  A float32 kernel does float32 arithmetic;
only the documented sums (loss, bias gradient, the chain's change) accumulate in float64
(tests/test_cuda_build.py checks the f64 instructions of every float32 kernel's PTX).
"""
import functools
import os

import numpy as np
from numba import cuda, float64, int32
from numba.cuda import libdevice

from . import bias_act, conv, cuda_launch, loss, noise, optim, scalar
from .common import (LOSS_BCE, LOSS_MSE, adam_scalars, check_columns, check_contiguous, check_im2col,
                     check_row_sums, check_same_shape, check_total, check_uint32_vector,
                     drop_stale_numba_cache, rebind, sgd_scalars)
from .cuda_launch import kernel
from .noise import CORRUPTION_GAUSSIAN, CORRUPTION_MASKING, CORRUPTION_NONE, CORRUPTION_SALT_PEPPER
from .philox import philox4x32_10, seed_key
from .scalar import ACT_CODES

SIMULATOR = cuda_launch.SIMULATOR
if not SIMULATOR:
    cuda_launch.numpy_compat()  # numba-cuda's first compile fails on NumPy >= 2.5 without it
    # kernels/__init__.py sets NUMBA_CUDA_ARRAY_INTERFACE_SYNC=0 before numba loads; if the user
    # imported numba first, turn the setting off where numba-cuda (>= 0.20) reads it at launch.
    try:
        from numba.cuda.core import config as _config
    except ImportError:  # older numba-cuda reads numba's own config
        from numba import config as _config
    _config.CUDA_ARRAY_INTERFACE_SYNC = False

# The simulator runs every GPU thread as a Python thread: smaller blocks keep CI fast.
LOSS_THREADS = 32 if SIMULATOR else loss.LOSS_THREADS  # threads per row in the loss sum (sets its order)

# Launch configuration for elementwise kernels; tests change it to show results do not.
LAUNCH = {"threads": 32 if SIMULATOR else 256, "max_blocks": 4096}
LAUNCHES = {"count": 0}  # kernel launches since import (the GPU tests count them per step)
LAUNCHER = cuda_launch.make_launcher()  # TINYDAE_CUDA_LAUNCHER=cupy|numba; set_launcher() to switch

# The names an op module's CUDA body uses that only numba-cuda gives meaning: numba.cuda, the
# shared arrays' types, the block size of the sums, and the device functions (the shared math of
# kernels/scalar.py, and the op modules' own helpers).
_NAMES = {"cuda": cuda, "float64": float64, "int32": int32, "LOSS_THREADS": LOSS_THREADS}
_SPACES = {}  # op module -> the globals its compiled bodies share (common.rebind)


def _device(func, name=None):
    """Compile an op module's helper as an inlined device function, under `name` for the bodies."""
    name = name or func.__name__
    compiled = cuda.jit(device=True, inline="always")(rebind(func, _NAMES, _SPACES, name))  # "always": a bool is deprecated
    _add_name(name, compiled)
    return compiled


def _add_name(name, value):
    assert name not in _NAMES, f"{name}: a second CUDA helper of one name would replace the first everywhere"
    _NAMES[name] = value
    for space in _SPACES.values():
        space[name] = value


def _body(func, name):
    """An op module's CUDA body, named `name` for the launcher and the build (its qualname, which
    names numba's cache entries, stays the body's own)."""
    return rebind(func, _NAMES, _SPACES, name, qualname=func.__name__)


_device(philox4x32_10, "philox")
_device(scalar.sigmoid, "sigmoid_element")
for _helper in (scalar.uniform, scalar.act, scalar.act_grad, scalar.sgd_element, scalar.adam_element):
    _device(_helper)
if SIMULATOR:  # the simulator's libdevice functions are stubs that return None: the plain version
    _device(noise.sincospif)
else:
    _add_name("sincospif", libdevice.sincospif)  # (sin(pi x), cos(pi x)) in float32
for _helper in (noise.box_muller_cuda, noise.noisy_cuda, noise.masked_cuda, loss.block_sum_cuda,
                loss.finish_cuda, optim.finite_cuda):
    _device(_helper)


def set_launcher(name):
    """Switch the launcher ('cupy' or 'numba') for every later launch; returns the old name."""
    global LAUNCHER
    old, LAUNCHER = LAUNCHER.name, cuda_launch.make_launcher(name)
    return old


# ----------------------------------------------------------------------------------------
# The self-check: known-answer launches before any real work, with a fallback
# ----------------------------------------------------------------------------------------
#
# A first launch can fail in ways no import reveals: a cubin the driver refuses, an entry
# whose parameters moved, a numba-cuda whose dispatcher cannot reach this driver.  And an
# illegal-address fault poisons the CUDA context for the rest of the process, so the check
# must run before real work, while the CPU is still a way out.  Verdicts are kept per
# process and on disk (per device, toolchain, kernel sources and launcher), so that later
# processes skip the launches; TINYDAE_CUDA_SELFCHECK=always re-runs them, =off trusts.

SELF_CHECK_MODES = ("once", "always", "off")
_VERDICTS = {}  # verdict key -> (ok, detail), this process


def self_check():
    """Known-answer launches through the current LAUNCHER: Philox words (exact), a float32 SGD
    update and a float64 BCE loss over 2-D arrays (block sums, tickets) against the reference
    twin; before them, a launcher that loads cubins loads every declared variant (no launch), so
    that a bundle missing one fails here and not in the middle of training.  -> None; raises
    cuda_launch.LaunchError naming the case and the exception."""
    from . import reference as ref

    xp = np if SIMULATOR else __import__("cupy")
    host = np.asarray if SIMULATOR else xp.asnumpy
    rng = np.random.default_rng(7)

    def every_variant():
        preload = getattr(LAUNCHER, "preload", None)
        if preload is not None:
            preload(cuda_launch.KERNELS.values())
        return []

    def words():
        got, want = xp.zeros(1001, np.uint32), np.zeros(1001, np.uint32)
        philox_uint32(got, 123, 7, 1, 5)
        ref.philox_uint32(want, 123, 7, 1, 5)
        return [(host(got), want, 0.0)]

    def sgd():
        p, g, vel = (rng.normal(size=1000).astype(np.float32) for _ in range(3))
        dev = [xp.array(a) for a in (p, g, vel)]  # copies (np.asarray would share p with the reference)
        sgd_update(*dev, 0.05, 0.9, True, 0.01)
        ref.sgd_update(p, g, vel, 0.05, 0.9, True, 0.01)
        return [(host(dev[0]), p, 2e-6), (host(dev[2]), vel, 2e-6)]  # a GPU may contract a*b+c: ulps

    def bce():
        z, t = rng.normal(0, 3, (5, 130)), rng.uniform(0, 1, (5, 130))
        d, want_d = xp.zeros((5, 130)), np.zeros((5, 130))
        total = sigmoid_bce_forward_backward(d, xp.array(z), xp.array(t), 0.5)
        want = ref.sigmoid_bce_forward_backward(want_d, z, t, 0.5)
        return [(host(d), want_d, 1e-12), (np.float64(total), np.float64(want), 1e-10)]

    for name, case in (("loading every variant", every_variant), ("philox_uint32 words", words),
                       ("sgd_update float32", sgd), ("sigmoid_bce_forward_backward float64", bce)):
        try:
            pairs = case()
        except Exception as e:
            raise cuda_launch.LaunchError(f"{name}: {type(e).__name__}: {cuda_launch._first_line(e)}") from e
        for got, want, rtol in pairs:
            bad = ~np.isclose(got, want, rtol=rtol, atol=rtol * 0.5, equal_nan=False) if rtol else got != want
            if np.any(bad):
                raise cuda_launch.LaunchError(f"{name}: {int(np.sum(bad))} of {np.size(want)} values differ "
                                              f"from the reference twin's")


def _where():
    """What a verdict holds for, besides the launcher: the device and driver (or the simulator),
    the toolchain (versions, CUDA_HOME, the assemblers found) and every file of kernels/ (the
    kernels and the launch layer the check vouches for)."""
    from . import cuda_build

    device = "simulator"
    if not SIMULATOR:
        import cupy

        dev = cupy.cuda.Device()
        name = cupy.cuda.runtime.getDeviceProperties(dev.id)["name"]
        device = [name.decode() if isinstance(name, bytes) else name, dev.compute_capability,
                  cupy.cuda.runtime.driverGetVersion(), cupy.__version__]
    return [device, cuda_build.toolchain(), cuda_build.assemblers(), cuda_build.source_digest("all")]


def _verdict_path(launcher, where):
    import hashlib
    import json

    from . import cuda_build

    bundle = None
    if launcher.name == "cupy":  # its cubins: the bundle's, else the cache's
        bundle = getattr(launcher, "bundle", None) or os.environ.get("TINYDAE_CUDA_CUBINS") or cuda_build.cache_dir()
        bundle = os.path.abspath(bundle)
    key = hashlib.sha256(json.dumps([launcher.name, bundle, where], default=str).encode()).hexdigest()[:20]
    return os.path.join(cuda_build.cache_dir(), f"selfcheck-{launcher.name}-{key}.json")


def _verdict(launcher, mode, where, save_failure=True):
    """(ok, detail) for the launcher: remembered in this process, read from disk (mode 'once'),
    or found by self_check() now and written to disk (a failure only if save_failure)."""
    import json

    from . import cuda_build

    path = _verdict_path(launcher, where)
    if path in _VERDICTS and mode != "always":
        return _VERDICTS[path]
    verdict = None
    if mode == "once":
        try:
            with open(path) as f:
                saved = json.load(f)
            verdict = (bool(saved["ok"]), f"{saved['detail']} (cached verdict {path}; "
                                          f"TINYDAE_CUDA_SELFCHECK=always checks again)")
        except (OSError, ValueError, KeyError, TypeError):
            verdict = None
    if verdict is None:
        try:
            self_check()
            verdict = (True, "known answers match")
        except cuda_launch.LaunchError as e:
            verdict = (False, str(e))
        if verdict[0] or save_failure:
            try:  # a verdict that cannot be saved is only checked again next time
                os.makedirs(os.path.dirname(path), exist_ok=True)
                cuda_build._write_atomic(path, json.dumps(dict(ok=verdict[0], detail=verdict[1])).encode())
            except OSError:
                pass
    _VERDICTS[path] = verdict
    return verdict


def ensure_launcher():
    """Self-check the current launcher (once per process, verdicts cached on disk); if it fails,
    switch to numba's dispatcher and check that.  -> warnings (strings) for the user: one when
    it switched.  Raises cuda_launch.LaunchError, naming each launcher's failure, when none passes.
    TINYDAE_CUDA_SELFCHECK: once (default) | always | off.

    Only the first launcher's failure is saved: a fallback that fails right after it may fail
    only because the first one's fault poisoned this process's CUDA context, and saving that
    would keep the GPU off in every later process."""
    mode = os.environ.get("TINYDAE_CUDA_SELFCHECK", "once").strip() or "once"
    if mode not in SELF_CHECK_MODES:
        raise ValueError(f"TINYDAE_CUDA_SELFCHECK must be one of {', '.join(SELF_CHECK_MODES)}, got {mode!r}")
    if mode == "off":
        return []
    try:
        where = _where()
    except Exception as e:
        raise cuda_launch.LaunchError(f"the device could not be queried: {type(e).__name__}: "
                                      f"{cuda_launch._first_line(e)}") from e
    failures = []
    for name in dict.fromkeys([LAUNCHER.name, "numba"]):
        if LAUNCHER.name != name:
            set_launcher(name)
        ok, detail = _verdict(LAUNCHER, mode, where, save_failure=not failures)
        if ok:
            return [f"the {f[0]} launcher failed its self-check ({f[1]}); using numba's dispatcher "
                    f"(slower launches) instead" for f in failures]
        failures.append((name, detail))
    raise cuda_launch.LaunchError("; ".join(f"{n} launcher: {d}" for n, d in failures))


def _grid(n, threads=None):
    threads = threads or LAUNCH["threads"]
    return max(1, min(-(-n // threads), LAUNCH["max_blocks"])), threads


def _launch(k, blocks, threads, *args):
    LAUNCHES["count"] += 1
    LAUNCHER.launch(k, blocks, threads, args)


def _xp(a):
    if isinstance(a, np.ndarray):
        return np
    import cupy

    return cupy


@functools.cache
def _device_array_type():
    """The array type the twins take: cupy.ndarray, or np.ndarray in the simulator."""
    if SIMULATOR:
        return np.ndarray
    import cupy

    return cupy.ndarray


def check_arrays(**arrays):
    """The twins take CuPy arrays (NumPy arrays in the simulator), C-contiguous.  Another
    library's device array (a torch CUDA tensor ...) is refused here, clearly: the launchers read
    CuPy's own attributes.  The public API converts such arrays first (Backend.as_array)."""
    kind = _device_array_type()
    for name, a in arrays.items():
        if not isinstance(a, kind) and hasattr(a, "__cuda_array_interface__"):
            raise TypeError(f"{name}: the CUDA twins take CuPy arrays, got a {type(a).__module__}."
                            f"{type(a).__name__} in device memory; convert it without a copy first: "
                            f"cupy.asarray({name})")
    check_contiguous(arrays, lambda a: isinstance(a, kind), "a CuPy array")


_WORKSPACES = {}  # (key, device id) -> scratch arrays of the reductions, made once and reused


def _workspace(like, key, make):
    """The scratch arrays for `key` on like's device: make(xp) on first use, reused after, so a
    launch allocates and zeroes nothing (the kernels leave their tickets at 0 again).  Safe
    because tinydae queues all its work on one stream: launches sharing a workspace never overlap."""
    device = None if isinstance(like, np.ndarray) else like.device.id
    ws = _WORKSPACES.get((key, device))
    if ws is None:
        ws = _WORKSPACES[(key, device)] = make(_xp(like))
    return ws


# ----------------------------------------------------------------------------------------
# Random words, and corruption: one thread per block of four stream elements
# ----------------------------------------------------------------------------------------


_philox_uint32 = kernel("void(uint32[::1], uint32, uint32, int64, int64, int64)")(
    _body(noise.philox_uint32_cuda, "_philox_uint32"))


def philox_uint32(out, seed, step, stream, offset=0):
    """Twin of reference.philox_uint32."""
    check_arrays(out=out)
    check_uint32_vector(out)
    k0, k1 = seed_key(seed)
    if out.size:
        _launch(_philox_uint32, *_grid(out.size), out, np.uint32(k0), np.uint32(k1),
                np.int64(step), np.int64(stream), np.int64(offset))


_corrupt = kernel("void(T[::1], T[::1], int32, T, uint32, uint32, int64, int64, int64, int64, int64)")(
    _body(noise.corrupt_cuda, "_corrupt"))


def corrupt(out, x, mode, level, seed, step, stream, offset=0):
    """Twin of reference.corrupt."""
    check_arrays(out=out, x=x)
    check_same_shape(out, x)
    if mode not in (CORRUPTION_NONE, CORRUPTION_GAUSSIAN, CORRUPTION_MASKING, CORRUPTION_SALT_PEPPER):
        raise ValueError(f"unknown corruption mode {mode}")
    n = x.size
    if n == 0:
        return
    k0, k1 = seed_key(seed)
    first = offset >> 2
    nblocks = ((offset + n - 1) >> 2) - first + 1
    _launch(_corrupt, *_grid(nblocks), out.reshape(-1), x.reshape(-1), np.int32(mode), x.dtype.type(level),
            np.uint32(k0), np.uint32(k1), np.int64(step), np.int64(stream), np.int64(offset),
            np.int64(first), np.int64(nblocks))


# ----------------------------------------------------------------------------------------
# Bias + activation (kernels/bias_act.py; kernels/scalar.py's act in the data dtype)
# ----------------------------------------------------------------------------------------


_bias_act_forward = kernel("void(T[::1], T[::1], T[::1], int32, int64)")(
    _body(bias_act.bias_act_forward_cuda, "_bias_act_forward"))


_bias_act_inplace = kernel("void(T[::1], T[::1], int32, int64)")(
    _body(bias_act.bias_act_inplace_cuda, "_bias_act_inplace"))


def bias_act_forward(y, z, b, act):
    """Twin of reference.bias_act_forward (y may be z: the model works in place)."""
    check_arrays(y=y, z=z, b=b)
    check_same_shape(y, z)
    check_columns(b, z, "bias")
    if not z.size:
        return
    code, H = np.int32(ACT_CODES[act]), np.int64(z.shape[1])
    if y is z:  # one argument: aliased views would be copied separately by the simulator
        _launch(_bias_act_inplace, *_grid(z.size), y.reshape(-1), b, code, H)
    else:
        _launch(_bias_act_forward, *_grid(z.size), y.reshape(-1), z.reshape(-1), b, code, H)


# The bias gradient: work items (column tile, chunk of BIAS_ROWS rows), one block of BIAS_COLS
# threads each, then the tile's last block adds the partials in chunk order (kernels/bias_act.py).
# Chunks and orders are the CPU twin's, so the float64 sums agree with it bit for bit.
BIAS_ROWS = bias_act.ROW_BLOCK
BIAS_COLS = bias_act.BIAS_COLS


_bias_act_backward = kernel("void(T[:, ::1], T[::1], T[:, ::1], T[:, ::1], int32, float64[::1], int32[::1])")(
    _body(bias_act.bias_act_backward_cuda, "_bias_act_backward"))


def bias_act_backward(dz, db, dy, y, act):
    """Twin of reference.bias_act_backward: one launch, workspaces reused; the float64 db sums
    are the CPU twin's, bit for bit (for equal dz terms)."""
    check_arrays(dz=dz, db=db, dy=dy, y=y)
    check_same_shape(dz, dy, y)
    check_columns(db, dy, "db")
    if not dy.size:
        return
    B, H = dy.shape
    chunks, tiles = -(-B // BIAS_ROWS), -(-H // BIAS_COLS)
    partial, ticket = _workspace(dy, ("bias", tiles, chunks, BIAS_COLS), lambda xp: (
        xp.zeros(tiles * chunks * BIAS_COLS, np.float64), xp.zeros(tiles, np.int32)))
    _launch(_bias_act_backward, max(1, min(tiles * chunks, LAUNCH["max_blocks"])), BIAS_COLS,
            dz, db, dy, y, np.int32(ACT_CODES[act]), partial, ticket)


# ----------------------------------------------------------------------------------------
# Losses: elementwise gradient + a deterministic float64 sum, in one launch
# ----------------------------------------------------------------------------------------


_loss_rows = kernel("void(T[:, ::1], T[:, ::1], T[:, ::1], T, int32, float64[::1], int32[::1], float64[::1])")(
    _body(loss.loss_rows_cuda, "_loss_rows"))


def _loss(kind, dlogits, logits, targets, scale, total):
    check_arrays(dlogits=dlogits, logits=logits, targets=targets)
    check_same_shape(dlogits, logits, targets)
    if logits.ndim != 2:
        raise ValueError(f"losses take (B, D) arrays, got shape {logits.shape}")
    if total is not None:
        check_arrays(total=total)
        check_total(total)
    B = logits.shape[0]
    if logits.size == 0:
        if total is None:
            return 0.0
        total[...] = 0
        return None
    # Row partials, ticket and a total of our own: allocated once per batch size, then reused.
    partial, ticket, own_total = _workspace(logits, ("loss", B), lambda xp: (
        xp.zeros(B, np.float64), xp.zeros(1, np.int32), xp.zeros(1, np.float64)))
    blocks = max(1, min(B, LAUNCH["max_blocks"]))
    _launch(_loss_rows, blocks, LOSS_THREADS, dlogits, logits, targets, logits.dtype.type(scale), np.int32(kind),
            partial, ticket, own_total if total is None else total)
    if total is None:
        return float(own_total[0])  # a host sync: the training step passes `total` instead
    return None


def sigmoid_bce_forward_backward(dlogits, logits, targets, scale, total=None):
    """Twin of reference.sigmoid_bce_forward_backward (with `total`: no host sync)."""
    return _loss(LOSS_BCE, dlogits, logits, targets, scale, total)


def sigmoid_mse_forward_backward(dlogits, logits, targets, scale, total=None):
    """Twin of reference.sigmoid_mse_forward_backward (with `total`: no host sync)."""
    return _loss(LOSS_MSE, dlogits, logits, targets, scale, total)


# ----------------------------------------------------------------------------------------
# The sampling chain's last layer: bias + sigmoid + per-chain change, in one launch
# ----------------------------------------------------------------------------------------


_bias_sigmoid_change = kernel("void(T[:, ::1], float64[::1], T[::1], T[:, ::1])")(
    _body(bias_act.bias_sigmoid_change_cuda, "_bias_sigmoid_change"))


def bias_sigmoid_change(y, change, b, prev):
    """Twin of reference.bias_sigmoid_change: one launch, no host sync."""
    check_arrays(y=y, change=change, b=b, prev=prev)
    check_same_shape(y, prev)
    check_columns(b, y, "bias")
    check_row_sums(change, y)
    if y.size:
        _launch(_bias_sigmoid_change, max(1, min(y.shape[0], LAUNCH["max_blocks"])), LOSS_THREADS,
                y, change, b, prev)


# ----------------------------------------------------------------------------------------
# Optimizers: one launch over the flat buffers
# ----------------------------------------------------------------------------------------


def _guard_bits(guard, like):
    """guard: None or a (1,) float64 array (the step's loss sum) -> its (1,) int64 bits for the
    kernels (a view, no copy; kernels/optim.py); no guard: the bits of 0.0, always finite."""
    if guard is None:
        return _workspace(like, ("no guard",), lambda xp: xp.zeros(1, np.int64))
    check_arrays(guard=guard)
    check_total(guard, "guard")
    return guard.view(np.int64)


_sgd = kernel("void(T[::1], T[::1], T[::1], T, T, boolean, T, int64[::1])")(
    _body(optim.sgd_cuda, "_sgd"))


def sgd_update(params, grads, velocity, lr, momentum, nesterov, weight_decay, guard=None):
    """Twin of reference.sgd_update (the guard is read on the device: no host sync)."""
    check_arrays(params=params, grads=grads, velocity=velocity)
    check_same_shape(params, grads, velocity)
    bits = _guard_bits(guard, params)
    if params.size:
        _launch(_sgd, *_grid(params.size), params, grads, velocity,
                *sgd_scalars(params.dtype, lr, momentum, nesterov, weight_decay), bits)


_adam = kernel("void(T[::1], T[::1], T[::1], T[::1], T, T, T, T, T, T, T, T, boolean, T, T, int64[::1])")(
    _body(optim.adam_cuda, "_adam"))


def adam_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, t, guard=None):
    """Twin of reference.adam_update (the guard is read on the device: no host sync)."""
    check_arrays(params=params, grads=grads, m=m, v=v)
    check_same_shape(params, grads, m, v)
    bits = _guard_bits(guard, params)
    if params.size:
        _launch(_adam, *_grid(params.size), params, grads, m, v,
                *adam_scalars(params.dtype, lr, beta1, beta2, eps, weight_decay, decoupled, t), bits)


# ----------------------------------------------------------------------------------------
# Convolution as a GEMM: im2col and col2im (NHWC; see kernels/conv.py), one thread per
# element written: a copy, and a gather in the reference's (i, j) order (no atomics)
# ----------------------------------------------------------------------------------------


_im2col = kernel("void(T[:, ::1], T[:, :, :, ::1], int64, int64, int64, int64, int64, int64)")(
    _body(conv.im2col_cuda, "_im2col"))


def im2col(cols, x, kh, kw, stride, pad):
    """Twin of reference.im2col (a copy: bit-identical)."""
    check_arrays(cols=cols, x=x)
    Ho, Wo = check_im2col(cols, x, kh, kw, stride, pad)
    _launch(_im2col, *_grid(cols.size), cols, x, *(np.int64(v) for v in (kh, kw, stride, pad, Ho, Wo)))


_col2im = kernel("void(T[:, :, :, ::1], T[:, ::1], int64, int64, int64, int64, int64, int64)")(
    _body(conv.col2im_cuda, "_col2im"))


def col2im(dx, dcols, kh, kw, stride, pad):
    """Twin of reference.col2im: each input pixel gathers its entries in (i, j) order in the data
    dtype (bit-identical to the reference, independent of the launch configuration)."""
    check_arrays(dx=dx, dcols=dcols)
    Ho, Wo = check_im2col(dcols, dx, kh, kw, stride, pad)
    _launch(_col2im, *_grid(dx.size), dx, dcols, *(np.int64(v) for v in (kh, kw, stride, pad, Ho, Wo)))


# Every kernel is declared (none compiled or loaded yet): drop cached ones compiled from other
# sources, wherever numba keeps them.
drop_stale_numba_cache("cuda", __name__, [k.dispatcher for k in cuda_launch.KERNELS.values()])
