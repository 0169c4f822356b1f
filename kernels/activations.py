"""The activations, each declared once: everything tinydae needs of one is in its record.

    forward(z) -> y            the NumPy reference (the fused twins are tested against it)
    backward(dy, a) -> dz      the reference gradient, from a = the output y (reads "y") or
                               the pre-activation z (reads "z": SiLU, whose z is not a function
                               of y); a layer keeps whichever its activation reads
    he                         True: He-normal init before it (the relu family), else Glorot
    onnx(emit, h) -> h         the ONNX nodes computing it (emit.node, emit.const, emit.dtype)
    c                          its C expression in the double z, as examples/embed/dae.c writes it

The per-element math of the compiled twins is kernels/scalar.py's act / act_grad, one branch
per activation code (CODES: the records' order); the CPU twin adds a branch per activation to
its row loops so each loop vectorises (kernels/bias_act.py).  Adding an activation: a record
here, a branch in scalar.act and scalar.act_grad, and one in kernels/bias_act.py's
forward_row_cpu and backward_row_cpu; the layers, init, ONNX export, the CLI's choices and the tests take it from here.

Legend: z pre-activation, y output, dy the gradient of the loss with respect to y.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np

LEAKY_SLOPE = 0.01


def sigmoid(z):
    """1 / (1 + exp(-z)) without overflow: exp only ever sees -|z|."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype, copy=False)


@dataclass(frozen=True)
class Activation:
    name: str
    forward: Callable
    backward: Callable
    reads: str  # "y" or "z": what backward is written from
    he: bool
    onnx: Callable
    c: str


def _onnx_leaky_relu(e, h):
    if e.dtype == np.float32:
        return e.node("PRelu", [h, e.const("leaky_slope", [LEAKY_SLOPE])])
    # float64: LeakyRelu's alpha is a 32-bit attribute (0.0099999998) and ONNX Runtime runs
    # double PRelu only at opsets 16-18: max(z, 0) + slope * min(z, 0), exact at every opset
    neg = e.node("Mul", [e.node("Min", [h, e.const("zero", 0)]), e.const("leaky_slope", LEAKY_SLOPE)])
    return e.node("Add", [e.node("Max", [h, e.const("zero", 0)]), neg])


def _onnx_softplus(e, h):
    if e.dtype == np.float32:
        return e.node("Softplus", [h])
    # ONNX Runtime has no double Softplus: max(z, 0) + log(1 + exp(-|z|)), as tinydae computes it
    tail = e.node("Log", [e.node("Add", [e.const("one", 1), e.node("Exp", [e.node("Neg", [e.node("Abs", [h])])])])])
    return e.node("Add", [e.node("Max", [h, e.const("zero", 0)]), tail])


RECORDS = [
    Activation("identity", lambda z: z, lambda dy, y: dy, "y", False, lambda e, h: h, "z"),
    Activation("relu", lambda z: np.maximum(z, 0),
               lambda dy, y: dy * (y > 0),  # y > 0 exactly where z > 0
               "y", True, lambda e, h: e.node("Relu", [h]), "z < 0 ? 0 : z"),
    Activation("leaky_relu", lambda z: np.where(z > 0, z, z * z.dtype.type(LEAKY_SLOPE)),
               lambda dy, y: dy * np.where(y > 0, y.dtype.type(1), y.dtype.type(LEAKY_SLOPE)),
               "y", True, _onnx_leaky_relu, "z < 0 ? slope * z : z"),
    Activation("tanh", np.tanh, lambda dy, y: dy * (1 - y * y), "y", False, lambda e, h: e.node("Tanh", [h]),
               "tanh(z)"),
    Activation("sigmoid", sigmoid, lambda dy, y: dy * y * (1 - y), "y", False, lambda e, h: e.node("Sigmoid", [h]),
               "1 / (1 + exp(-z))"),
    # softplus: log(1 + e^z) = max(z, 0) + log1p(e^-|z|), finite for any z; its derivative
    # sigmoid(z) = 1 - e^-y, and -expm1(-y) keeps it exact for tiny y
    Activation("softplus", lambda z: np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z))),
               lambda dy, y: dy * -np.expm1(-y), "y", False, _onnx_softplus, "(z < 0 ? 0 : z) + log1p(exp(-fabs(z)))"),
    # SiLU (swish): z sigmoid(z).  Its derivative s (1 + z (1 - s)) is no function of y (y has a
    # minimum near z = -1.28, so two z share each y there): backward reads z
    Activation("silu", lambda z: z * sigmoid(z),
               lambda dy, z: dy * sigmoid(z) * (1 + z * (1 - sigmoid(z))),
               "z", False, lambda e, h: e.node("Mul", [h, e.node("Sigmoid", [h])]), "z / (1 + exp(-z))"),
]
BY_NAME = {a.name: a for a in RECORDS}
CODES = {a.name: i for i, a in enumerate(RECORDS)}  # the compiled twins' activation codes
HIDDEN = tuple(a.name for a in RECORDS if a.name != "identity")  # what --activation offers
