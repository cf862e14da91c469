"""Deployment on top of the package: a trained model as integers, and as an ONNX file.

``integer``: the integer grid of every quantizer (codes and scales), the integer layer
arithmetic checked against PyTorch, bit planes, sizes. ``graph``: the ONNX writer (QDQ, or
integer kernels with ``integer=True``), run and checked by onnxruntime, and the ``export``
command. ``latency``: onnxruntime timings of the float and the quantized graph.

``import uniq.deploy as X`` gives the writer's functions (``X.export_onnx``) and the two other
modules (``X.integer``, ``X.latency``).
"""

from . import integer, latency
from .graph import *  # noqa: F403 - the writer's public names (graph.__all__)
from .graph import __all__ as _graph_all

__all__ = ["integer", "latency", *_graph_all]
