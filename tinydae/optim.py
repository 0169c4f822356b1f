"""Optimizers over the model's flat parameter and gradient buffers: one kernel call per step.

State (moments, step count) lives in flat buffers too, so ``state_dict`` is a handful of
arrays and numbers, saved whole in checkpoints.

Guarded steps: ``step(guard=total)`` hands the update kernel the step's loss sum (a (1,)
float64 array on the model's device, from DAE.loss_sum_and_grad), and the kernel skips the
update when it is not finite, on the device, so fit() need not read the loss before queueing
the update.  The caller reads the loss afterwards and, if it was not finite, calls
``step_skipped()`` so the step count t does not count the update that never happened.
"""
import math

from tinydae.errors import ConfigError


def _check(name, value, low=0.0, high=math.inf, low_open=False):
    ok = isinstance(value, (int, float)) and math.isfinite(value) and value <= high and (
        value > low if low_open else value >= low)
    if not ok:
        raise ConfigError(f"{name} must be a finite number in {'(' if low_open else '['}{low}, {high}"
                          f"{')' if high == math.inf else ']'}, got {value!r}")


class Optimizer:
    name = "optimizer"
    buffer_names = ()

    def __init__(self, model, **hyper):
        self.model = model
        self.hyper = hyper
        self.t = 0  # completed updates
        xp = model.backend.xp
        self.buffers = {b: xp.zeros_like(model.params) for b in self.buffer_names}

    def step(self, guard=None):
        """Apply one update from ``model.grads`` to ``model.params``.

        guard: None (always update), or the step's loss sum as a (1,) float64 array on the
        model's device: the update is skipped where guard[0] is not finite (see the module doc).
        """
        self.t += 1
        self._update(guard)

    def step_skipped(self):
        """The last guarded step() found its guard not finite and changed nothing: uncount it."""
        self.t -= 1

    def state_dict(self):
        """{'name', 'hyper', 't', 'buffers': {name: host array}}"""
        to_host = self.model.backend.to_host
        return dict(name=self.name, hyper=dict(self.hyper), t=self.t,
                    buffers={k: to_host(v) for k, v in self.buffers.items()})

    def load_state_dict(self, state):
        if state["name"] != self.name:
            raise ConfigError(f"optimizer state is for {state['name']!r}, not {self.name!r}")
        self.t = int(state["t"])
        for k, v in self.buffers.items():
            v[...] = self.model.backend.to_device(state["buffers"][k], dtype=v.dtype)

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.hyper.items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """SGD with optional (Nesterov) momentum and L2 weight decay."""

    name = "sgd"
    buffer_names = ("velocity",)

    def __init__(self, model, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        _check("lr", lr, low_open=True)
        _check("momentum", momentum, high=1.0)
        _check("weight_decay", weight_decay)
        if nesterov and momentum == 0:
            raise ConfigError("Nesterov momentum needs momentum > 0")
        super().__init__(model, lr=lr, momentum=momentum, nesterov=bool(nesterov),
                         weight_decay=weight_decay)

    def _update(self, guard):
        h = self.hyper
        self.model.backend.kernels.sgd_update(self.model.params, self.model.grads,
                                              self.buffers["velocity"], h["lr"], h["momentum"],
                                              h["nesterov"], h["weight_decay"], guard=guard)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with L2 weight decay added to the gradient."""

    name = "adam"
    buffer_names = ("m", "v")
    decoupled = False

    def __init__(self, model, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        _check("lr", lr, low_open=True)
        _check("beta1", beta1, high=1.0)
        _check("beta2", beta2, high=1.0)
        if beta1 >= 1 or beta2 >= 1:
            raise ConfigError(f"betas must be < 1, got ({beta1}, {beta2})")
        _check("eps", eps, low_open=True)
        _check("weight_decay", weight_decay)
        super().__init__(model, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)

    def _update(self, guard):
        h = self.hyper
        self.model.backend.kernels.adam_update(self.model.params, self.model.grads,
                                               self.buffers["m"], self.buffers["v"], h["lr"],
                                               h["beta1"], h["beta2"], h["eps"],
                                               h["weight_decay"], self.decoupled, self.t, guard=guard)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p -= lr * wd * p."""

    name = "adamw"
    decoupled = True

    def __init__(self, model, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01):
        super().__init__(model, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)


OPTIMIZERS = {cls.name: cls for cls in (SGD, Adam, AdamW)}


def make_optimizer(name, model, **hyper):
    """'sgd' | 'adam' | 'adamw' -> optimizer bound to the model's flat buffers."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    try:
        return OPTIMIZERS[name](model, **hyper)
    except TypeError as e:
        raise ConfigError(f"bad option for optimizer {name!r}: {e}") from None
