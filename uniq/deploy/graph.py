"""ONNX export of a converted model in the standard QDQ form, run and checked by onnxruntime.

The graph is built directly with ``onnx.helper`` from a ``torch.fx`` trace of the model, so every
quantizer becomes exactly the integer grid of ``uniq.deploy.integer`` (opset 13):

* a quantized weight is an integer initializer (its codes) followed by ``DequantizeLinear``
  with zero point 0: UniQ's odd codes ``q`` (Eq. 3) with scale ``D/2``, LSQ's two's-complement
  codes with scale ``s``; one scale per output channel for kernel-wise steps (``axis=0``).
  Codes live in int8, except the 9-bit odd codes ``-255..255`` of an 8-bit UniQ weight (the
  first and last layers of a multi-bit model), which need an int32 container;
* an unsigned input (Eq. 5, or unsigned LSQ) is ``[Clip] -> QuantizeLinear -> DequantizeLinear``
  with uint8 codes ``0..N-1`` and scale ``D``; the Clip to ``(N-1) D`` is there when ``N < 256``
  (QuantizeLinear alone saturates only at 255). A signed LSQ input is the same with int8 codes;
* a signed UniQ input (Eq. 3 on activations: the normalised image into the first layer,
  MobileNetV2's linear bottlenecks) has no zero level: its codes are odd, which QuantizeLinear
  cannot produce (it rounds to the nearest integer). The clip-then-round of Eq. 3 is written out
  as ``Div -> Add -> Clip -> Round -> Mul -> Sub -> Cast``, giving the odd code
  ``q = 2 round(clip(x/D + (N-1)/2, 0, N-1)) - (N-1)``, followed by ``DequantizeLinear`` with
  scale ``D/2``; the same float32 operations as PyTorch, so the codes agree exactly.

Full-precision layers stay float. ``QuantizeLinear`` divides and rounds half to even as
``torch.round`` does, so for the same float input every code matches PyTorch's; the float
convolutions between quantizers sum in a different order, which moves logits by float rounding.

``integer=True`` writes the integer graph instead: each quantized layer's input codes (int8)
and weight codes (uint8 ``code + 128``, zero point 128) go into ``ConvInteger`` /
``MatMulInteger``, which accumulate exactly in int32, and one ``DequantizeLinear`` multiplies
the accumulator by ``scale_x * scale_w`` per output channel. Layers with 9-bit odd codes
(8-bit UniQ) stay QDQ, or with ``nine_bit="split"`` are split exactly into int8 kernels.

Needs the ``export`` extra (``onnx``, ``onnxruntime``); they are imported only when used.
"""

from __future__ import annotations

import argparse
import importlib
import json
import operator
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import __version__
from ..modules import QConv2d, QLinear, Quantizer, quantizers
from ..repro.data import FINEGRAIN_SIZE, load_dataset, normalize
from ..repro.paths import resolve_path
from ..repro.runs import Run
from ..repro.tasks import DATA_SEED
from .integer import IntegerGrid, from_codes, integer_grid, to_codes

OPSET = 13
INSTALL_HINT = 'pip install "uniq[export]"'
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def require(module: str):
    """Import ``onnx`` or ``onnxruntime``, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"ONNX export needs the packages onnx and onnxruntime ({module} is missing); "
            f"install them with: {INSTALL_HINT}") from err


# --- graph building -------------------------------------------------------------------------

_NP_TYPES = {torch.int8: np.int8, torch.uint8: np.uint8, torch.int32: np.int32}


class _Graph:
    """Nodes and initializers of the ONNX graph under construction, with unique names."""

    def __init__(self) -> None:
        self.onnx = require("onnx")
        self.nodes: list = []
        self.initializers: list = []
        self._used: set[str] = set()

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self._used:
            name, i = f"{base}_{i}", i + 1
        self._used.add(name)
        return name

    def const(self, value: Any, base: str, dtype=np.float32) -> str:
        array = (value.detach().cpu().numpy() if isinstance(value, torch.Tensor)
                 else np.asarray(value)).astype(dtype)
        name = self.fresh(base)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], base: str, doc: str = "", **attrs) -> str:
        out = self.fresh(base)
        n = self.onnx.helper.make_node(op, inputs, [out], name=out, **attrs)
        if doc:
            n.doc_string = doc
        self.nodes.append(n)
        return out


def _describe(grid: IntegerGrid) -> str:
    low, high = grid.code_range
    what = {"symmetric": "odd codes (UniQ Eq. 3), value = code * D/2",
            "unsigned": "codes k, value = k * step",
            "twos-complement": "two's-complement codes (LSQ), value = code * s"}[grid.kind]
    return f"{grid.method} {grid.bits}-bit {grid.kind}: {what}, codes {low}..{high}"


def _dequantize(g: _Graph, codes: str, grid: IntegerGrid, base: str, axis: int | None) -> str:
    scale = grid.scale.flatten() if axis is not None else grid.scale.reshape(())
    zero = np.zeros(scale.shape, dtype=_NP_TYPES[grid.container])
    attrs = {} if axis is None else {"axis": axis}
    return g.node("DequantizeLinear", [codes, g.const(scale, f"{base}_scale"),
                                       g.const(zero, f"{base}_zero_point", zero.dtype)],
                  f"{base}_dq", doc=_describe(grid), **attrs)


def _quantized_weight(g: _Graph, layer: QConv2d | QLinear, base: str) -> str:
    grid = integer_grid(layer.weight_quantizer, f"{base}.weight_quantizer")
    codes = to_codes(layer.weight, grid)
    stored = g.const(codes, f"{base}_weight_codes", _NP_TYPES[grid.container])
    return _dequantize(g, stored, grid, f"{base}_weight", None if grid.step.dim() == 0 else 0)


def _input_codes(g: _Graph, x: str, quantizer: Quantizer, base: str, signed: bool = False
                 ) -> tuple[str, IntegerGrid, str | None]:
    """The codes of a layer's input: ``(codes, grid, levels)``.

    Unsigned (Eq. 5) and LSQ inputs: ``codes`` is ``QuantizeLinear``'s output in the grid's
    container, or in int8 where ``signed`` and the codes fit (after a Clip to the b-bit range
    when it is narrower than the container). Signed UniQ inputs (Eq. 3): ``codes`` is the
    float odd code ``q = 2k - (N-1)`` and ``levels`` the float level index ``k`` it came from
    (``None`` otherwise)."""
    grid = integer_grid(quantizer, f"{base}.act_quantizer")
    if grid.step.numel() != 1:
        raise ValueError(f"{base}: only layer-wise (one step) input quantizers can be exported")
    step = grid.step.reshape(())
    b = f"{base}_input"
    if grid.kind == "symmetric":
        # Eq. 3 on an input, written out: odd codes cannot come from QuantizeLinear.
        u = g.node("Div", [x, g.const(step, f"{b}_step")], f"{b}_scaled")
        u = g.node("Add", [u, g.const(grid.levels / 2, f"{b}_half_range")], f"{b}_shifted")
        u = g.node("Clip", [u, g.const(0.0, f"{b}_zero"), g.const(grid.levels, f"{b}_levels")],
                   f"{b}_clipped")
        k = g.node("Round", [u], f"{b}_level")
        q = g.node("Sub", [g.node("Mul", [k, g.const(2.0, f"{b}_two")], f"{b}_twice"),
                           g.const(grid.levels, f"{b}_offset")], f"{b}_odd")
        return q, grid, k
    low, high = grid.code_range
    container = _NP_TYPES[grid.container]
    if signed and high <= np.iinfo(np.int8).max:
        container = np.int8
    info = np.iinfo(container)
    if (low, high) != (info.min, info.max):
        # QuantizeLinear saturates only at the container's limits; clip to the b-bit range.
        # Rounding commutes with a clip at integer multiples of the step, so this is exact.
        bounds = torch.tensor([low, high], dtype=torch.float32) * step
        x = g.node("Clip", [x, g.const(bounds[0], f"{b}_min"), g.const(bounds[1], f"{b}_max")],
                   f"{b}_clipped")
    zero = g.const(np.zeros((), container), f"{b}_zero_point", container)
    scale = g.const(step, f"{b}_scale")
    return g.node("QuantizeLinear", [x, scale, zero], f"{b}_codes", doc=_describe(grid)), grid, None


def _onnx_type(g: _Graph, dtype) -> int:
    return g.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _quantized_input(g: _Graph, x: str, quantizer: Quantizer, base: str) -> str:
    codes, grid, _ = _input_codes(g, x, quantizer, base)
    if grid.kind == "symmetric":
        codes = g.node("Cast", [codes], f"{base}_input_codes",
                       to=_onnx_type(g, _NP_TYPES[grid.container]))
    return _dequantize(g, codes, grid, f"{base}_input", None)


# --- integer layers (export with integer=True) -----------------------------------------------

# Integer kernels are fed int8 inputs and uint8 weights (code + 128, zero point 128): with
# int8 weights onnxruntime 1.32's ConvInteger took a slow path, 4-12x slower per convolution
# on this project's 2-core Xeon (see the README), and with uint8 weights no x86 kernel
# multiplies uint8 by int8 with VPMADDUBSW, whose saturating int16 pair sums are inexact on
# CPUs without VNNI.
WEIGHT_ZERO_POINT = 128
INTEGER_KERNELS = ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul",
                   "com.microsoft.MatMulIntegerToFloat", "com.microsoft.QLinearConv")

NINE_BIT = ("float", "split")


def _nine_bit(m: QConv2d | QLinear) -> bool:
    """Whether the layer's weight or input codes need more than 8 bits (9-bit odd codes)."""
    grids = [integer_grid(q) for q in (m.weight_quantizer, m.act_quantizer)]
    return any(g.container == torch.int32 for g in grids)


def _nine_bit_input(quantizer: Quantizer) -> bool:
    return integer_grid(quantizer).container == torch.int32


Operand = list[tuple[int, str, str]]  # sum of coefficient * (tensor - zero point); "" = no zero


def _input_operand(g: _Graph, x: str, quantizer: Quantizer, base: str
                   ) -> tuple[Operand, IntegerGrid, str]:
    """The input codes as int8/uint8 tensors, and the tensor to tap (codes, any type).

    Odd codes that fit int8 (up to 7 bits) are one int8 tensor. The 9-bit odd codes of an
    8-bit symmetric input are split exactly: ``q = 2m + v`` with ``m = k - 128`` in int8 and
    ``v = 1`` on every real position; ``v`` is a uint8 tensor of ones shaped like one sample,
    whose zero padding matches the zero padding of ``q``."""
    codes, grid, levels = _input_codes(g, x, quantizer, base, signed=True)
    b = f"{base}_input"
    if grid.kind != "symmetric":
        return [(1, codes, "")], grid, codes
    if grid.container == torch.int8:
        return [(1, g.node("Cast", [codes], f"{b}_codes", to=_onnx_type(g, np.int8)), "")], \
            grid, codes
    half = 2 ** (grid.bits - 1)
    m = g.node("Cast", [g.node("Sub", [levels, g.const(float(half), f"{b}_half")],
                               f"{b}_centred")], f"{b}_codes_half", to=_onnx_type(g, np.int8))
    shape = g.node("Shape", [x], f"{b}_shape")
    rest = g.node("Slice", [shape, g.const([1], f"{b}_from", np.int64),
                            g.const([np.iinfo(np.int64).max], f"{b}_to", np.int64)], f"{b}_dims")
    one = g.node("Concat", [g.const([1], f"{b}_one_sample", np.int64), rest],
                 f"{b}_sample_shape", axis=0)
    ones = g.onnx.helper.make_tensor("value", g.onnx.TensorProto.UINT8, [1], [1])
    valid = g.node("ConstantOfShape", [one], f"{b}_valid", value=ones)
    return [(2, m, ""), (1, valid, "")], grid, codes


def _weight_operand(g: _Graph, codes: torch.Tensor, grid: IntegerGrid, base: str,
                    linear: bool, groups: int) -> Operand:
    """The weight codes as uint8 initializers ``code + 128`` with zero point 128 (see
    ``WEIGHT_ZERO_POINT``). The 9-bit odd codes of an 8-bit symmetric weight are split exactly
    as ``q = 2m + 1``, ``m`` in ``-128..127``, the ``1`` a tensor of ones (one output channel
    when the layer has one group, broadcast over the others)."""
    b = f"{base}_weight"
    orient = (lambda t: t.t()) if linear else (lambda t: t)  # MatMulInteger wants (in, out)
    zero = g.const(np.array(WEIGHT_ZERO_POINT, np.uint8), f"{b}_zero_point", np.uint8)

    def stored(values: torch.Tensor, name: str) -> str:
        return g.const(orient(values + WEIGHT_ZERO_POINT), name, np.uint8)

    if grid.container != torch.int32:
        return [(1, stored(codes, f"{b}_codes"), zero)]
    shape = list(codes.shape)
    shape[0] = 1 if groups == 1 else shape[0]
    return [(2, stored((codes - 1) // 2, f"{b}_codes_half"), zero),
            (1, stored(torch.ones(shape, dtype=torch.int64), f"{b}_ones"), zero)]


def _integer_product(g: _Graph, xs: Operand, ws: Operand, base: str, conv: dict | None
                     ) -> tuple[str, list[str]]:
    """``sum_ij cx_i cw_j (x_i (*) w_j)`` in int32: ConvInteger (``conv``: its attributes) or
    MatMulInteger per pair, then integer Mul/Add. Returns the sum and the kernel nodes."""
    acc, kernels = None, []
    for cx, x, zx in xs:
        for cw, w, zw in ws:
            inputs = [x, w, zx, zw] if zw else [x, w]
            op = "MatMulInteger" if conv is None else "ConvInteger"
            term = g.node(op, inputs, f"{base}_integer", **(conv or {}))
            kernels.append(term)
            if cx * cw != 1:
                term = g.node("Mul", [term, g.const(np.array(cx * cw), f"{base}_coefficient",
                                                    np.int32)], f"{base}_term")
            acc = term if acc is None else g.node("Add", [acc, term], f"{base}_accumulator")
    return acc, kernels


def _integer_layer(g: _Graph, m: QConv2d | QLinear, x: str, base: str, conv: dict | None
                   ) -> tuple[str, tuple[str, float], list[str], str]:
    """A quantized layer computed in integers: ``y = (sx sw) * (x_codes (*) w_codes) + bias``,
    the int32 accumulator cast to float and multiplied by one scale per output channel
    (``sx sw``, rounded once to float32). Returns the output, the tapped input codes with
    their scale, the integer kernel nodes and the int32 accumulator."""
    xs, x_grid, tap = _input_operand(g, x, m.act_quantizer, base)
    w_grid = integer_grid(m.weight_quantizer, f"{base}.weight_quantizer")
    ws = _weight_operand(g, to_codes(m.weight, w_grid), w_grid, base, conv is None,
                         (conv or {}).get("group", 1))
    acc, kernels = _integer_product(g, xs, ws, base, conv)
    # int32 -> float times the scale in one pass: DequantizeLinear computes float(acc) * scale,
    # the same two roundings as a Cast and a Mul. Always per channel (a layer-wise scale
    # repeated): onnxruntime propagates a per-tensor DequantizeLinear through later nodes by
    # inserting QuantizeLinear copies, which cannot take an int32 zero point.
    channels = m.out_channels if conv is not None else m.out_features
    scale = (x_grid.scale.double().reshape(()) * w_grid.scale.double().flatten()).float()
    scale = scale.expand(channels).contiguous()
    zero = g.const(np.zeros(channels, np.int32), f"{base}_accumulator_zero_point", np.int32)
    y = g.node("DequantizeLinear", [acc, g.const(scale, f"{base}_scale"), zero],
               f"{base}_scaled" if m.bias is not None else base,
               doc="int32 accumulator times scale_x * scale_w", axis=1 if conv is not None else -1)
    if m.bias is not None:
        bias = m.bias.detach().reshape(1, -1, 1, 1) if conv is not None else m.bias
        y = g.node("Add", [y, g.const(bias, f"{base}_bias")], base)
    return y, (tap, float(x_grid.scale.reshape(()))), kernels, acc


class _Tracer(fx.Tracer):
    """Keeps quantized layers and quantizers whole (their forward checks values)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (QConv2d, QLinear, Quantizer)) or super().is_leaf_module(m, qualname)


SUPPORTED = ("Conv2d and Linear (quantized or not), BatchNorm, ReLU/ReLU6/Hardtanh, "
             "Max/Avg pooling, global average pooling, Flatten/view/reshape, add, mul, cat, "
             "Dropout/Identity")


class _Converter:
    def __init__(self, model: nn.Module, example: torch.Tensor, integer: bool = False,
                 nine_bit: str = "float") -> None:
        self.model = model
        self.integer, self.nine_bit = integer, nine_bit
        self.modules = dict(model.named_modules())
        self.g = _Graph()
        try:
            graph = _Tracer().trace(model)
        except Exception as err:  # noqa: BLE001 - re-raised with what is supported
            raise ValueError(
                f"could not trace {type(model).__name__} with torch.fx ({err}); the exporter "
                f"needs a forward without data-dependent Python control flow, made of: "
                f"{SUPPORTED}") from err
        self.gm = fx.GraphModule(model, graph)
        from torch.fx.passes.shape_prop import ShapeProp

        with torch.no_grad():
            ShapeProp(self.gm).propagate(example)
        self.names: dict[fx.Node, Any] = {}
        # layer name -> its input's dequantized values (QDQ: DequantizeLinear's output) or, in
        # an integer graph, its input codes, whose values are codes * tap_scales[layer]
        self.taps: dict[str, str] = {}
        self.tap_scales: dict[str, float] = {}
        self.integer_kernels: dict[str, list[str]] = {}  # layer name -> its integer nodes
        self.accumulators: dict[str, str] = {}  # layer name -> its int32 accumulator
        self.qdq_layers: list[str] = []  # quantized layers an integer graph keeps in QDQ form

    def rank(self, node: fx.Node) -> int:
        return len(node.meta["tensor_meta"].shape)

    def value(self, arg: Any, base: str) -> Any:
        if isinstance(arg, fx.Node):
            return self.names[arg]
        if isinstance(arg, (int, float)) and not isinstance(arg, bool):
            return self.g.const(float(arg), f"{base}_const")
        raise ValueError(f"{base}: cannot export the argument {arg!r}")

    def convert(self) -> tuple[list, list, list, list]:
        helper = self.g.onnx.helper
        inputs, outputs = [], []
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if inputs:
                    raise ValueError("the exporter handles models with one input tensor")
                shape = list(node.meta["tensor_meta"].shape)
                dims = ["batch", shape[1], *[f"dim{i}" for i in range(2, len(shape))]]
                inputs.append(helper.make_tensor_value_info(
                    INPUT_NAME, self.g.onnx.TensorProto.FLOAT, dims))
                self.names[node] = INPUT_NAME
            elif node.op == "output":
                result = node.args[0]
                if not isinstance(result, fx.Node):
                    raise ValueError("the exporter handles models with one output tensor")
                shape = list(result.meta["tensor_meta"].shape)
                out = self.g.node("Identity", [self.names[result]], OUTPUT_NAME)
                outputs.append(helper.make_tensor_value_info(
                    out, self.g.onnx.TensorProto.FLOAT, ["batch", *shape[1:]]))
            elif node.op == "call_module":
                self.names[node] = self.call_module(node, self.modules[node.target])
            elif node.op in ("call_function", "call_method"):
                self.names[node] = self.call(node)
            elif node.op == "get_attr":
                value: Any = self.gm
                for part in node.target.split("."):
                    value = getattr(value, part)
                self.names[node] = self.g.const(value, node.target.replace(".", "_"))
        return self.g.nodes, self.g.initializers, inputs, outputs

    # -- modules --

    def call_module(self, node: fx.Node, m: nn.Module) -> str:
        name, base = node.target, node.target.replace(".", "_")
        x = self.names[node.args[0]]
        g = self.g
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return self.layer(node, m, x, name, base)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.running_mean is None:
                raise ValueError(f"cannot export layer {name!r}: BatchNorm without running "
                                 "statistics (track_running_stats=False) is batch-dependent")
            ones = torch.ones_like(m.running_mean)
            return g.node("BatchNormalization", [
                x, g.const(m.weight if m.affine else ones, f"{base}_weight"),
                g.const(m.bias if m.affine else 0 * ones, f"{base}_bias"),
                g.const(m.running_mean, f"{base}_mean"), g.const(m.running_var, f"{base}_var"),
            ], base, epsilon=float(m.eps))
        if isinstance(m, nn.ReLU):
            return g.node("Relu", [x], base)
        if isinstance(m, nn.Hardtanh):  # ReLU6 is Hardtanh(0, 6)
            return g.node("Clip", [x, g.const(m.min_val, f"{base}_min"),
                                   g.const(m.max_val, f"{base}_max")], base)
        if isinstance(m, (nn.Identity, nn.modules.dropout._DropoutNd)):
            return x
        if isinstance(m, nn.Flatten):
            return self.flatten(node, x, m.start_dim, m.end_dim, base)
        if isinstance(m, nn.MaxPool2d) and not m.return_indices:
            return g.node("MaxPool", [x], base, **self.pool_attrs(m, name),
                          dilations=list(_pair(m.dilation)))
        if isinstance(m, nn.AvgPool2d) and m.divisor_override is None:
            return g.node("AveragePool", [x], base, **self.pool_attrs(m, name),
                          count_include_pad=int(m.count_include_pad))
        if isinstance(m, nn.AdaptiveAvgPool2d) and _pair(m.output_size) == (1, 1):
            return g.node("GlobalAveragePool", [x], base)
        raise ValueError(f"cannot export layer {name!r} ({type(m).__name__}): unsupported; "
                         f"the exporter handles {SUPPORTED}")

    def pool_attrs(self, m: nn.Module, name: str) -> dict:
        k = _pair(m.kernel_size)
        s = _pair(m.stride if m.stride else m.kernel_size)
        p = _pair(m.padding)
        return dict(kernel_shape=list(k), strides=list(s), pads=[p[0], p[1], p[0], p[1]],
                    ceil_mode=int(m.ceil_mode))

    def layer(self, node: fx.Node, m: nn.Conv2d | nn.Linear, x: str, name: str,
              base: str) -> str:
        g = self.g
        wq = getattr(m, "weight_quantizer", None)
        aq = getattr(m, "act_quantizer", None)
        conv = None
        if isinstance(m, nn.Conv2d):
            if isinstance(m.padding, str) or m.padding_mode != "zeros":
                raise ValueError(f"cannot export layer {name!r}: padding={m.padding!r}, "
                                 f"padding_mode={m.padding_mode!r}; only numeric zero padding")
            ph, pw = m.padding
            conv = dict(kernel_shape=list(m.kernel_size), strides=list(m.stride),
                        pads=[ph, pw, ph, pw], dilations=list(m.dilation), group=m.groups)
        if self.integer and wq is not None and aq is not None and (
                self.nine_bit == "split" or not _nine_bit(m)):
            y, (tap, scale), kernels, acc = _integer_layer(g, m, x, base, conv)
            self.taps[name], self.tap_scales[name] = tap, scale
            self.integer_kernels[name], self.accumulators[name] = kernels, acc
            return y
        if aq is not None:
            x = _quantized_input(g, x, aq, base)
            self.taps[name] = x
        if self.integer and wq is not None:
            self.qdq_layers.append(name)  # 9-bit codes with nine_bit="float": a float kernel
        if self.integer and wq is not None and (aq is None or _nine_bit_input(aq)):
            # The weight stored dequantized (codes * scale: the fake-quantized weight bit for
            # bit) is a constant that onnxruntime pre-packs and fuses with BatchNorm, which a
            # DequantizeLinear output is not (preresnet18's 7x7 stem, batch 4: 46 ms behind a
            # DequantizeLinear, 29 ms as a fused float conv). Only behind an int32 input: after
            # an 8-bit DequantizeLinear onnxruntime would fuse DQ -> Conv -> Q into its own
            # QLinearConv, whose requantisation rounds differently from PyTorch (3% of 8-bit
            # codes differed).
            grid = integer_grid(wq, f"{base}.weight_quantizer")
            w = g.const(from_codes(to_codes(m.weight, grid), grid), f"{base}_weight_dequantized")
        else:
            w = (_quantized_weight(g, m, base) if wq is not None
                 else g.const(m.weight, f"{base}_weight"))
        inputs = [x, w] + ([] if m.bias is None else [g.const(m.bias, f"{base}_bias")])
        if conv is not None:
            return g.node("Conv", inputs, base, **conv)
        if self.rank(node.args[0]) == 2:
            return g.node("Gemm", inputs, base, transB=1)
        wt = g.node("Transpose", [w], f"{base}_weight_t", perm=[1, 0])
        y = g.node("MatMul", [x, wt], f"{base}_matmul")
        return y if m.bias is None else g.node("Add", [y, inputs[2]], base)

    def flatten(self, node: fx.Node, x: str, start: int, end: int, base: str) -> str:
        rank = self.rank(node.args[0])
        start, end = start % rank, end % rank
        if start == 0 or end != rank - 1:
            raise ValueError(f"{base}: only flattening from dimension >= 1 to the last exports")
        if start == 1:
            return self.g.node("Flatten", [x], base, axis=1)
        shape = self.g.const([0] * start + [-1], f"{base}_shape", np.int64)
        return self.g.node("Reshape", [x, shape], base)

    # -- functions and methods --

    def call(self, node: fx.Node) -> Any:
        g, t = self.g, node.target
        base = node.name
        args, kw = list(node.args), dict(node.kwargs)

        def arg(i: int, key: str, default: Any = None) -> Any:
            return args[i] if len(args) > i else kw.get(key, default)

        if t in (operator.add, torch.add, "add", operator.iadd, operator.mul, torch.mul, "mul"):
            op = "Mul" if t in (operator.mul, torch.mul, "mul") else "Add"
            if kw.get("alpha", 1) != 1:
                raise ValueError(f"{base}: add with alpha is not supported")
            return g.node(op, [self.value(args[0], base), self.value(args[1], base)], base)
        if t in (torch.relu, F.relu, "relu"):
            return g.node("Relu", [self.names[args[0]]], base)
        if t is F.relu6:
            return g.node("Clip", [self.names[args[0]], g.const(0.0, f"{base}_min"),
                                   g.const(6.0, f"{base}_max")], base)
        if t is F.hardtanh:
            lo, hi = arg(1, "min_val", -1.0), arg(2, "max_val", 1.0)
            return g.node("Clip", [self.names[args[0]], g.const(lo, f"{base}_min"),
                                   g.const(hi, f"{base}_max")], base)
        if t in (F.dropout, "contiguous"):
            return self.names[args[0]]
        if t in (torch.flatten, "flatten"):
            return self.flatten(node, self.names[args[0]], arg(1, "start_dim", 0),
                                arg(2, "end_dim", -1), base)
        if t is F.adaptive_avg_pool2d and _pair(arg(1, "output_size")) == (1, 1):
            return g.node("GlobalAveragePool", [self.names[args[0]]], base)
        if t == "mean" and sorted(d % 4 for d in _tuple(arg(1, "dim"))) == [2, 3]:
            keep = int(bool(arg(2, "keepdim", False)))
            return g.node("ReduceMean", [self.names[args[0]]], base, axes=[2, 3], keepdims=keep)
        if t is torch.cat:
            tensors = [self.names[a] for a in arg(0, "tensors")]
            return g.node("Concat", tensors, base, axis=int(arg(1, "dim", 0)))
        if t == "size" or (t is getattr and args[1] == "shape"):
            shape = g.node("Shape", [self.names[args[0]]], f"{base}_shape")
            dim = arg(1, "dim") if t == "size" else None
            if dim is None:
                return shape
            return g.node("Gather", [shape, g.const([dim], f"{base}_index", np.int64)], base)
        if t is operator.getitem and isinstance(args[1], int):
            return g.node("Gather", [self.names[args[0]],
                                     g.const([args[1]], f"{base}_index", np.int64)], base)
        if t in ("view", "reshape", torch.reshape):
            dims = args[1:]
            if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
                dims = list(dims[0])
            parts = [self.names[d] if isinstance(d, fx.Node)
                     else g.const([int(d)], f"{base}_dim", np.int64) for d in dims]
            shape = g.node("Concat", parts, f"{base}_shape", axis=0)
            return g.node("Reshape", [self.names[args[0]], shape], base)
        what = t if isinstance(t, str) else getattr(t, "__name__", repr(t))
        raise ValueError(f"cannot export the operation {what!r} (node {base}): unsupported; "
                         f"the exporter handles {SUPPORTED}")


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _tuple(v: Any) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def check_exportable(model: nn.Module) -> None:
    """Raise ValueError for a model that was never converted or never calibrated."""
    named = quantizers(model)
    if not named:
        raise ValueError(
            f"{type(model).__name__} has no quantizers: it is a full-precision model. Convert "
            "it with uniq.quantize_model and calibrate it (or load a trained quantized run) "
            "before exporting")
    for name, q in named:
        integer_grid(q, name)
    layers = {id(m.weight_quantizer) for m in model.modules()
              if isinstance(m, (QConv2d, QLinear))} | {
        id(m.act_quantizer) for m in model.modules() if isinstance(m, (QConv2d, QLinear))}
    stray = [n for n, q in named if id(q) not in layers]
    if stray:
        raise ValueError(f"quantizer {stray[0]!r} is not attached to a QConv2d/QLinear "
                         "layer; the exporter handles quantized conv and linear layers only")


def build_onnx(model: nn.Module, example_input: torch.Tensor, opset: int = OPSET,
               integer: bool = False, nine_bit: str = "float"):
    """The ONNX model (an ``onnx.ModelProto``) of a converted, calibrated model; checked by
    ``onnx.checker``. ``example_input`` fixes the channels and is used to trace shapes; the
    batch and spatial sizes stay dynamic. ``integer=False``: the QDQ form (float arithmetic on
    dequantized codes); ``True``: every quantized layer computes in integers (ConvInteger /
    MatMulInteger on int8/uint8 codes, int32 accumulation, one float scale per channel).
    ``nine_bit`` (integer graphs): what a layer with 9-bit odd codes (8-bit UniQ, the first
    and last layers) becomes: "float" keeps it in the QDQ form (a float kernel on exactly
    dequantized codes), "split" computes it in int8 kernels too (``_input_operand``,
    ``_weight_operand``: exact, but four integer kernels and extra int32 passes for the
    first layer)."""
    if nine_bit not in NINE_BIT:
        raise ValueError(f"nine_bit must be one of {NINE_BIT}, got {nine_bit!r}")
    onnx = require("onnx")
    if opset < OPSET:
        raise ValueError(f"opset {opset} is too old: per-channel DequantizeLinear needs >= 13")
    check_exportable(model)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device  # the trace runs where the model lives
        converter = _Converter(model, example_input.detach()[:1].to(device), integer,
                               nine_bit)
        nodes, inits, inputs, outputs = converter.convert()
    finally:
        model.train(was_training)
    form = "integer" if integer else "qdq"
    graph = onnx.helper.make_graph(nodes, f"uniq_{form}", inputs, outputs, initializer=inits)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   producer_name="uniq", producer_version=_version())
    if opset <= 15:  # IR 8 covers these opsets and is read by older runtimes too
        proto.ir_version = min(proto.ir_version, 8)
    grids = {n: _describe(integer_grid(q, n)) for n, q in quantizers(model)}
    onnx.helper.set_model_props(proto, {
        "uniq.form": form, "uniq.quantizers": json.dumps(grids),
        "uniq.input_taps": json.dumps(converter.taps),
        "uniq.input_tap_scales": json.dumps(converter.tap_scales),
        "uniq.integer_kernels": json.dumps(converter.integer_kernels),
        "uniq.accumulators": json.dumps(converter.accumulators),
        "uniq.qdq_layers": json.dumps(converter.qdq_layers)})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model: nn.Module, path: str | Path, example_input: torch.Tensor,
                opset: int = OPSET, integer: bool = False, nine_bit: str = "float") -> Path:
    """Write the ONNX file of a converted, calibrated model (QDQ, or ``integer=True``: integer
    kernels, see ``build_onnx``). The file appears only when the whole export succeeded
    (written to a temporary file in the same folder, then renamed)."""
    onnx = require("onnx")
    proto = build_onnx(model, example_input, opset, integer, nine_bit)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _version() -> str:

    return __version__


# --- onnxruntime ----------------------------------------------------------------------------


def onnx_session(path: str | Path | bytes, threads: int | None = None, spin: bool = True):
    """An onnxruntime CPU session for an exported file or serialized model. ``threads``:
    intra-op threads (default: onnxruntime's choice); ``spin=False`` stops idle threads from
    busy-waiting (a correctness check needs no speed; a latency measurement keeps the default)."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: shape-merge notes are not problems
    if threads:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def check_parity(model: nn.Module, path: str | Path, x: torch.Tensor, rtol: float = 1e-4,
                 atol: float = 1e-5) -> dict[str, Any]:
    """Run an exported file with onnxruntime and the PyTorch model on the same batch.

    Two comparisons. *Free-running*: each side on its own; ``top1_agree`` is the fraction of
    identical argmax, ``max_abs_diff`` the largest logit difference. The two sides sum their
    float convolutions in different orders, so a value that lands within float rounding of a
    rounding boundary can get the neighbouring code in a later quantizer (a tie, about one
    code in a million here), and such a flip moves the logits by more than float rounding.
    In a deep low-bit network one tie can cascade (every later quantizer sees a changed
    input), so free-running agreement measures how sensitive the model is as much as the file.
    *Forced*: PyTorch runs again with every input quantizer's output replaced by
    onnxruntime's (tapped from the graph), so both sides see the same codes at every layer;
    its logits must then match to float tolerance (``allclose``: ``rtol`` and ``atol`` times
    the largest |logit|) with the same argmax (``top1_agree_forced``). ``codes_differing``
    counts the codes where PyTorch's own quantizer, in the forced run, disagreed with
    onnxruntime's: the ties, each one layer's float rounding on its own.
    """
    onnx = require("onnx")
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    if "uniq.input_taps" not in props:
        raise ValueError(f"{path} was not written by uniq.deploy (no uniq.input_taps metadata)")
    taps: dict[str, str] = json.loads(props["uniq.input_taps"])
    feed = {INPUT_NAME: x.detach().cpu().float().numpy()}
    free = onnx_session(path, threads=1, spin=False).run(None, feed)[0]
    scales: dict[str, float] = json.loads(props.get("uniq.input_tap_scales", "{}"))
    for layer, name in list(taps.items()):
        if layer in scales:  # integer graph: tap the codes, dequantize them here
            value = f"uniq_tap_{len(proto.graph.node)}"
            proto.graph.initializer.append(onnx.numpy_helper.from_array(
                np.array(scales[layer], np.float32), f"{value}_scale"))
            proto.graph.node.extend([
                onnx.helper.make_node("Cast", [name], [f"{value}_codes"],
                                      to=onnx.TensorProto.FLOAT),
                onnx.helper.make_node("Mul", [f"{value}_codes", f"{value}_scale"], [value])])
            taps[layer] = name = value
        proto.graph.output.append(onnx.helper.make_tensor_value_info(
            name, onnx.TensorProto.FLOAT, None))
    tapped = onnx_session(proto.SerializeToString(), threads=1, spin=False)
    outs = tapped.run(None, feed)
    tapped_codes = dict(zip(taps, outs[1:], strict=True))

    differing: dict[str, int] = {}

    def force(layer: str):
        def hook(_module, _inputs, output):
            theirs = torch.from_numpy(tapped_codes[layer]).to(output.device, output.dtype)
            differing[layer] = int((output != theirs).sum())
            return theirs
        return hook

    was_training = model.training
    model.eval()
    x = x.to(next(model.parameters()).device)
    try:
        reference = model(x).float().cpu().numpy()
        modules = dict(model.named_modules())
        handles = [modules[n].act_quantizer.register_forward_hook(force(n)) for n in taps]
        try:
            forced = model(x).float().cpu().numpy()
        finally:
            for h in handles:
                h.remove()
    finally:
        model.train(was_training)
    scale = max(float(np.abs(reference).max()), 1e-12)
    return {
        "batch": int(x.shape[0]),
        "max_abs_logit": scale,
        "max_abs_diff": float(np.abs(free - reference).max()),
        "top1_agree": float((free.argmax(1) == reference.argmax(1)).mean()),
        "max_abs_diff_forced": float(np.abs(outs[0] - forced).max()),
        "allclose": bool(np.allclose(outs[0], forced, rtol=rtol, atol=atol * scale)),
        "top1_agree_forced": float((outs[0].argmax(1) == forced.argmax(1)).mean()),
        "codes_differing": int(sum(differing.values())),
        "codes_total": int(sum(v.size for v in tapped_codes.values())),
        "onnxruntime_logits": free,
        "torch_logits": reference,
    }


def measure_latency(model: nn.Module, path: str | Path, x: torch.Tensor, repeats: int = 20,
                    threads: int | None = None) -> dict[str, float]:
    """Median wall time (ms) of one forward pass, PyTorch (fake quantization, eval mode, no
    grad) against onnxruntime (the QDQ file), both on the CPU with the same thread count, after
    two warm-up runs each. A measurement, nothing more: QDQ nodes before float convolutions run
    as float kernels plus extra quantize/dequantize work unless a runtime fuses them. The
    machine's load average is returned too: on a busy machine multi-threaded timings suffer."""
    threads = threads or torch.get_num_threads()
    session = onnx_session(path, threads)
    feed = {INPUT_NAME: x.numpy()}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    was_training = model.training
    model.eval()

    def timed(fn) -> float:
        for _ in range(2):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)

    try:
        with torch.no_grad():
            torch_ms = timed(lambda: model(x))
        ort_ms = timed(lambda: session.run(None, feed))
    finally:
        torch.set_num_threads(previous)
        model.train(was_training)
    return {"batch": int(x.shape[0]), "threads": threads, "torch_ms": torch_ms,
            "onnxruntime_ms": ort_ms, "cpus": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


# --- run directories and the command line ---------------------------------------------------


def load_run_model(run_dir: str | Path) -> nn.Module:
    """The trained model of a finished run directory (CIFAR or ImageNet), on the CPU in eval
    mode, with a message for a folder that is not a finished run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run directory {run_dir} not found; pass a folder written by `python -m uniq "
            "train` or `python -m uniq imagenet` (it holds config.json and model.pt)")
    config_path, weights_path = run_dir / "config.json", run_dir / "model.pt"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: {run_dir} is not a run directory")
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"{weights_path} not found: the run has not finished; finish it (run the same "
            "training command again, it resumes) or export a finished run")

    run = Run.load(run_dir)
    if not run.finished:
        raise FileNotFoundError(f"{run_dir} has not finished (no result.json); finish it first")
    return run.model().eval()


def run_input_size(run_dir: str | Path) -> int:
    """The image size a run was trained at (ImageNet: its ``image_size``; CIFAR-100 and the
    ``synthetic`` stand-in: 32; the laptop profile's ``finegrain``: 16)."""
    cfg = Run.load(run_dir).config
    if cfg.task == "imagenet":
        return int(cfg.image_size)
    return FINEGRAIN_SIZE if cfg.dataset == "finegrain" else 32


def load_run_batch(run_dir: str | Path, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images of a CIFAR run's dataset, normalised as in training, and
    their labels (the synthetic set is generated from the run's seed)."""
    cfg = Run.load(run_dir).config
    if cfg.task == "imagenet":
        raise ValueError(f"{run_dir} is an ImageNet run; load its validation images yourself")
    data = load_dataset(cfg.dataset, False, resolve_path(cfg.data_dir), DATA_SEED,
                        (cfg.synthetic_train, cfg.synthetic_test), download=False)
    return normalize(data.images[:n], data.mean, data.std), data.labels[:n]


def _op_counts(proto) -> dict[str, int]:
    ops: dict[str, int] = {}
    for node in proto.graph.node:
        name = f"{node.domain}.{node.op_type}" if node.domain else node.op_type
        ops[name] = ops.get(name, 0) + 1
    return ops


def onnx_summary(path: str | Path) -> dict[str, Any]:
    """What an exported file holds: size, opset, versions, how many nodes of each kind, and
    how many of each kind onnxruntime actually runs after its own graph optimisation (which
    shows whether it fused anything into integer kernels)."""
    onnx, ort = require("onnx"), require("onnxruntime")
    proto = onnx.load(str(path))
    optimized = _optimized(path)
    return {"file_bytes": Path(path).stat().st_size, "opset": proto.opset_import[0].version,
            "onnx": onnx.__version__, "onnxruntime": ort.__version__, "ops": _op_counts(proto),
            "onnxruntime_ops": _op_counts(optimized)}


def integer_layers(path: str | Path) -> dict[str, Any]:
    """Which quantized layers of an integer graph onnxruntime runs with an integer kernel after
    its own graph optimisation (``integer_layers``), which it does not (``missing``: must be
    empty), and which the file keeps in the QDQ form (``qdq_layers``). A layer counts when one
    of its integer nodes (named in the file's ``uniq.integer_kernels``) is in the optimised
    graph as an integer operator (``INTEGER_KERNELS``)."""
    onnx = require("onnx")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    if props.get("uniq.form") != "integer":
        raise ValueError(f"{path} is not an integer graph (export it with integer=True)")
    kernels: dict[str, list[str]] = json.loads(props["uniq.integer_kernels"])
    optimized = _optimized(path)
    integer_nodes = {n.name for n in optimized.graph.node
                     if (f"{n.domain}.{n.op_type}" if n.domain else n.op_type) in INTEGER_KERNELS}
    ran = [layer for layer, names in kernels.items() if integer_nodes & set(names)]
    return {"integer_layers": ran, "missing": sorted(set(kernels) - set(ran)),
            "qdq_layers": json.loads(props["uniq.qdq_layers"])}


def _optimized(path: str | Path):
    """The graph onnxruntime's CPU provider runs after its own optimisations."""
    onnx, ort = require("onnx"), require("onnxruntime")
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def cmd_export(a: argparse.Namespace) -> int:
    for name in ("batch", "image_size"):
        value = getattr(a, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    out = Path(a.output)
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"-o {out}: {blocking} is a file, not a folder; choose an output path "
                         "inside a folder")
    if out.is_dir():
        raise ValueError(f"-o {out} is a folder; give a file name, e.g. {out / 'model.onnx'}")
    try:
        require("onnx"), require("onnxruntime")
        model = load_run_model(a.run_dir)
        size = a.image_size or run_input_size(a.run_dir)
        g = torch.Generator().manual_seed(a.seed)
        x = torch.randn(a.batch, 3, size, size, generator=g)
        path = export_onnx(model, a.output, x, integer=a.integer, nine_bit=a.nine_bit)
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"onnx": str(path), "opset": OPSET, "input": [a.batch, 3, size, size],
                              "form": "integer" if a.integer else "qdq"}
    if a.integer:
        report.update(integer_layers(path))
    if not a.no_check:
        parity = check_parity(model, path, x)
        report.update({k: v for k, v in parity.items() if not k.endswith("_logits")},
                      check_input="Gaussian noise (the data are not needed to check the graph)")
    print(json.dumps(report, indent=2))
    agree = report.get("allclose") and report.get("top1_agree_forced") == 1.0
    integer_ok = not report.get("missing")
    return 0 if (a.no_check or agree) and integer_ok else 1


def add_export_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``python -m uniq export RUN_DIR -o model.onnx``."""
    p.description = ("Write a finished CIFAR or ImageNet run as an ONNX file in the QDQ form "
                     f"(opset {OPSET}) and compare onnxruntime's logits with PyTorch's on a "
                     f"random batch. Needs: {INSTALL_HINT}")
    p.add_argument("run_dir", help="a finished run directory (config.json and model.pt)")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size of the check batch (default: the run's; CIFAR 32)")
    p.add_argument("--batch", type=int, default=8, help="check batch size")
    p.add_argument("--seed", type=int, default=0, help="seed of the check batch")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--integer", action="store_true",
                   help="compute every quantized layer with integer kernels (ConvInteger / "
                        "MatMulInteger) instead of the QDQ form's float kernels")
    p.add_argument("--nine-bit", choices=NINE_BIT, default="float",
                   help="with --integer: layers whose odd codes need 9 bits (8-bit UniQ first "
                        "and last layers) stay QDQ (float, the default: faster) or are split "
                        "into int8 kernels (split: every quantized layer in integers)")
    p.set_defaults(func=cmd_export)
    return p


__all__ = ["OPSET", "INTEGER_KERNELS", "NINE_BIT", "build_onnx", "export_onnx",
           "check_exportable", "onnx_session", "integer_layers",
           "check_parity", "measure_latency", "load_run_model", "load_run_batch",
           "onnx_summary", "add_export_arguments"]
