"""NumPy reference for every fused op: the specification the fast twins are tested against.

The ops live in kernels/ by op, each module holding its reference beside the bodies of its CPU
and CUDA twins (noise.py, bias_act.py, loss.py, optim.py, conv.py); this module gathers the
references under one name, as kernels/cpu.py and kernels/cuda.py gather the twins.

Legend: B batch, D width of the layer (pixels for the loss), N flat length.
Conventions (shared with kernels/cpu.py and kernels/cuda.py, same signatures):
  * outputs first, then inputs, then scalars; outputs are written in place;
  * reductions (loss sums) accumulate in float64 and are returned as Python floats, or, given
    `total` (a (1,) float64 array), written to total[0] with nothing read back (the CUDA twin
    then needs no host sync);
  * optimizer updates take an optional `guard`, a (1,) float64 array holding the step's loss
    sum: when it is not finite the update is skipped (the CUDA twin decides on the device);
  * arrays are C-contiguous (the model only ever passes contiguous buffers).
"""
from .activations import LEAKY_SLOPE, RECORDS, sigmoid  # the activations, declared once
from .bias_act import ACTIVATIONS, bias_act_backward, bias_act_forward, bias_sigmoid_change
from .conv import col2im, im2col
from .loss import sigmoid_bce_forward_backward, sigmoid_mse_forward_backward
from .noise import (CORRUPTION_GAUSSIAN, CORRUPTION_MASKING, CORRUPTION_NONE,
                    CORRUPTION_SALT_PEPPER, TWO_M24, corrupt, even_span, normals_from_words,
                    philox_normal, philox_uint32, philox_uniform, uniform_from_words,
                    uniform_open_from_words)
from .optim import adam_update, sgd_update

__all__ = ["LEAKY_SLOPE", "RECORDS", "sigmoid", "ACTIVATIONS", "bias_act_backward", "bias_act_forward",
           "bias_sigmoid_change", "col2im", "im2col", "sigmoid_bce_forward_backward",
           "sigmoid_mse_forward_backward", "CORRUPTION_GAUSSIAN", "CORRUPTION_MASKING", "CORRUPTION_NONE",
           "CORRUPTION_SALT_PEPPER", "TWO_M24", "corrupt", "even_span", "normals_from_words", "philox_normal",
           "philox_uint32", "philox_uniform", "uniform_from_words", "uniform_open_from_words", "adam_update",
           "sgd_update"]
