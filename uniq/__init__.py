"""uniq: UniQ's learnable symmetric quantizer, MSE-optimal step sizes, and the paper's recipes.

The public API is imported on first use (PEP 562), so ``python -m uniq train --help`` and the
light modules (``uniq.config``, ``uniq.claims``) do not load the quantizer core.
"""

import importlib

__version__ = "0.1.0"

_API = {
    "functional": None, "mse": None, "models": None,
    "Quantizer": "modules", "QConv2d": "modules", "QLinear": "modules", "quantizers": "modules",
    "step_parameters": "modules", "quantize_model": "convert", "calibrate": "convert",
    "conversion_report": "convert", "layer_policy": "convert",
}
__all__ = list(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'uniq' has no attribute {name!r}")
    module = importlib.import_module(f".{_API[name] or name}", __name__)
    value = module if _API[name] is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
