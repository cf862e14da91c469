"""uniq: UniQ's learnable symmetric quantizer (Eq. 3), the unsigned activation quantizer (Eq. 5),
the LSQ baseline, MSE-optimal step sizes (Table 1) and model conversion under the paper's policy.

This top level is the quantizer itself. ``uniq.deploy`` runs a trained model in integers;
``uniq.repro`` is the reproduction of the paper (training engine, notebooks' API, claims, report).
"""

from . import functional, models, mse
from .convert import calibrate, conversion_report, layer_policy, quantize_model
from .modules import QConv2d, QLinear, Quantizer, quantizers, step_parameters

__version__ = "0.2.0"

__all__ = ["functional", "mse", "models", "Quantizer", "QConv2d", "QLinear", "quantizers",
           "step_parameters", "quantize_model", "calibrate", "conversion_report", "layer_policy"]
