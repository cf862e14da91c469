"""uniq: UniQ's learnable symmetric quantizer, MSE-optimal step sizes, and the paper's recipes."""

from . import functional, mse
from .convert import calibrate, conversion_report, layer_policy, quantize_model
from .modules import QConv2d, QLinear, Quantizer, quantizers, step_parameters

__version__ = "0.1.0"

__all__ = [
    "functional", "mse", "Quantizer", "QConv2d", "QLinear", "quantize_model", "calibrate",
    "conversion_report", "layer_policy", "quantizers", "step_parameters",
]
