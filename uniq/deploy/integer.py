"""The integer form of a trained quantized model: codes, scales, bit planes, integer convolution.

A fake quantizer's output is always an integer code times a scale, and this module makes that
explicit and exact (``from_codes(to_codes(x)) == quantizer(x)`` bit for bit):

* UniQ weights and signed inputs (Eq. 3): the levels ``(k - (N-1)/2) D``, ``k = 0..N-1``, are
  the odd integers ``q = 2k - (N-1)`` in ``{-(N-1), ..., -1, 1, ..., N-1}`` times ``D/2``; there
  is no zero level. Binary (``N = 2``) is ``q = +-1``.
* UniQ activations (Eq. 5): ``k D`` with ``k = 0..N-1``.
* LSQ: ``q s`` with ``q`` in ``[-Qn, Qp]``, two's complement when signed, ``[0, 2**b - 1]`` if not.

Bit planes: a ``b``-bit odd code is ``q = sum_i 2^i s_i`` with ``s_i`` in ``{-1, +1}`` (write
``k = (q + N - 1)/2`` in binary, ``s_i = 2 k_i - 1``); an unsigned code is ``sum_j 2^j a_j`` with
``a_j`` in ``{0, 1}``; a two's-complement code is the same with weight ``-2^(b-1)`` on the top
bit. A convolution is linear in each operand, so a ``b``-bit layer is the weighted sum of
``b x b`` binary convolutions, and a 1-bit layer is a popcount over packed bits. The functions
here are references: integer arithmetic (int64) that tests compare exactly, not fast kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..convert import quantize_model
from ..functional import MIN_STEP, lsq_range
from ..modules import QConv2d, QLinear, Quantizer, quantizers

# --- one quantizer --------------------------------------------------------------------------


@dataclass(frozen=True)
class IntegerGrid:
    """The integer grid of one quantizer: ``value = code * scale`` for every code it can emit.

    ``kind`` is "symmetric" (UniQ Eq. 3: odd codes, scale ``D/2``), "unsigned" (UniQ Eq. 5 or
    unsigned LSQ: codes ``0..2**b - 1``, scale ``D`` or ``s``) or "twos-complement" (signed
    LSQ: codes ``-2**(b-1) .. 2**(b-1) - 1``, scale ``s``). ``step`` is the step used in the
    forward pass, ``max(step, MIN_STEP)``, shaped like the quantizer's step (a scalar, or one
    per output channel).
    """

    method: str
    bits: int
    kind: str
    step: torch.Tensor

    @property
    def levels(self) -> int:
        """``N - 1``: the largest index ``k`` of a level."""
        return 2**self.bits - 1

    @property
    def scale(self) -> torch.Tensor:
        """The value of code 1: ``D/2`` for the symmetric grid, the step otherwise."""
        return self.step / 2 if self.kind == "symmetric" else self.step

    @property
    def code_range(self) -> tuple[int, int]:
        if self.kind == "symmetric":
            return -self.levels, self.levels
        if self.kind == "unsigned":
            return 0, self.levels
        qn, qp = lsq_range(self.bits, True)
        return -qn, qp

    def codes(self) -> torch.Tensor:
        """Every code of the grid, ascending (int64): ``N = 2**bits`` of them."""
        low, high = self.code_range
        return torch.arange(low, high + 1, 2 if self.kind == "symmetric" else 1)

    @property
    def container(self) -> torch.dtype:
        """The smallest standard integer type holding every code: int8/uint8, or int32 for the
        9-bit odd codes of an 8-bit symmetric grid (``-255..255``)."""
        low, high = self.code_range
        if low >= 0:
            return torch.uint8
        return torch.int8 if low >= -128 and high <= 127 else torch.int32


def integer_grid(quantizer: Quantizer, where: str = "quantizer") -> IntegerGrid:
    """The integer grid of a calibrated quantizer (ValueError if it was never calibrated)."""
    if not quantizer.initialized:
        raise ValueError(
            f"{where}: the step was never initialised, so the model has no integer form yet; "
            "call uniq.calibrate(model, batches) (or load a trained run) before exporting")
    if quantizer.method == "lsq":
        kind = "twos-complement" if quantizer.signed else "unsigned"
    else:
        kind = "symmetric" if quantizer.signed else "unsigned"
    step = quantizer.step.detach().float().clamp_min(MIN_STEP)
    return IntegerGrid(quantizer.method, quantizer.bits, kind, step)


def _as_grid(grid: IntegerGrid | Quantizer) -> IntegerGrid:
    return grid if isinstance(grid, IntegerGrid) else integer_grid(grid)


def to_codes(x: torch.Tensor, grid: IntegerGrid | Quantizer) -> torch.Tensor:
    """The integer codes (int64) a quantizer gives ``x``: the same float32 operations as
    ``uniq.functional`` (divide, clip, round half to even), before the final multiply."""
    g = _as_grid(grid)
    x, d = x.detach().float(), g.step.to(x.device)
    if g.kind == "symmetric":  # Eq. 3: k = round(clip((x + a)/D)), q = 2k - (N-1)
        k = torch.round(torch.clamp(x / d + g.levels / 2, 0, g.levels))
        return 2 * k.long() - g.levels
    low, high = g.code_range  # Eq. 5 (low = 0) and LSQ
    return torch.round(torch.clamp(x / d, low, high)).long()


def from_codes(codes: torch.Tensor, grid: IntegerGrid | Quantizer) -> torch.Tensor:
    """Codes back to float32 values, ``code * scale``. For the symmetric grid this equals Eq. 3's
    ``(k - (N-1)/2) D`` bit for bit: both are the same real number rounded once to float32
    (``D/2`` is exact)."""
    g = _as_grid(grid)
    return codes.float() * g.scale.to(codes.device)


# --- one layer ------------------------------------------------------------------------------


@dataclass
class IntegerLayer:
    """A quantized conv/linear layer as integers: ``y = scale_x * scale_w * (x_codes (*) w_codes)
    + bias``, with ``(*)`` the integer convolution (or matrix product)."""

    name: str
    kind: str                      # "conv" or "linear"
    weight_codes: torch.Tensor     # int64, the weight's shape
    weight_grid: IntegerGrid
    input_grid: IntegerGrid | None
    bias: torch.Tensor | None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def bits(self) -> int:
        return self.weight_grid.bits

    def conv_args(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)

    def integer_forward(self, input_codes: torch.Tensor) -> torch.Tensor:
        """The layer's integer accumulator (int64) for integer input codes."""
        if self.kind == "linear":
            return input_codes.long() @ self.weight_codes.t()
        return integer_conv2d(input_codes, self.weight_codes, **self.conv_args())


def integer_layer(layer: QConv2d | QLinear, name: str = "layer") -> IntegerLayer:
    """The integer form of one converted, calibrated layer."""
    if layer.weight_quantizer is None:
        raise ValueError(f"{name}: a full-precision layer has no integer form")
    wgrid = integer_grid(layer.weight_quantizer, f"{name}.weight_quantizer")
    agrid = (None if layer.act_quantizer is None
             else integer_grid(layer.act_quantizer, f"{name}.act_quantizer"))
    bias = None if layer.bias is None else layer.bias.detach().float()
    codes = to_codes(layer.weight, wgrid)
    if isinstance(layer, QLinear):
        return IntegerLayer(name, "linear", codes, wgrid, agrid, bias)
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        raise ValueError(f"{name}: only zero padding given as numbers is supported, got "
                         f"padding={layer.padding!r}, padding_mode={layer.padding_mode!r}")
    return IntegerLayer(name, "conv", codes, wgrid, agrid, bias, tuple(layer.stride),
                        tuple(layer.padding), tuple(layer.dilation), layer.groups)


def integer_layers(model: nn.Module) -> dict[str, IntegerLayer]:
    """Every quantized layer of a converted, calibrated model in integer form, by name.

    Raises ValueError for a model that was never converted (no quantizers) or never calibrated.
    """
    if not quantizers(model):
        raise ValueError("the model has no quantizers: convert it with uniq.quantize_model "
                         "(and calibrate it) first")
    return {name: integer_layer(m, name) for name, m in model.named_modules()
            if isinstance(m, (QConv2d, QLinear)) and m.weight_quantizer is not None}


# --- integer convolution and bit planes -----------------------------------------------------


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _patches(x: torch.Tensor, kernel: tuple[int, int], stride, padding, dilation,
             groups: int) -> torch.Tensor:
    """im2col for any dtype: ``(B, C, H, W)`` -> ``(B, groups, C/groups * kh * kw, L)``."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, _pair(stride), _pair(padding), _pair(dilation)
    x = F.pad(x, (pw, pw, ph, ph))
    p = x.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)
    p = p[..., ::dh, ::dw]  # (B, C, Ho, Wo, kh, kw)
    b, c, ho, wo = p.shape[:4]
    p = p.permute(0, 1, 4, 5, 2, 3).reshape(b, groups, (c // groups) * kh * kw, ho * wo)
    return p


def integer_conv2d(x: torch.Tensor, w: torch.Tensor, stride=1, padding=0, dilation=1,
                   groups: int = 1) -> torch.Tensor:
    """``conv2d`` of integer tensors in int64 (zero padding), exact: im2col and a matmul."""
    x, w = x.long(), w.long()
    cout, _, kh, kw = w.shape
    p = _patches(x, (kh, kw), stride, padding, dilation, groups)
    wg = w.reshape(groups, cout // groups, -1)
    out = torch.einsum("gon,bgnl->bgol", wg, p)
    ho, wo = _out_size(x.shape[2:], (kh, kw), stride, padding, dilation)
    return out.reshape(x.shape[0], cout, ho, wo)


def _out_size(hw, kernel, stride, padding, dilation) -> tuple[int, int]:
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
                 zip(hw, kernel, _pair(stride), _pair(padding), _pair(dilation), strict=True))


def bit_planes(codes: torch.Tensor, grid: IntegerGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """``codes = sum_i weights[i] * planes[i]`` exactly, with ``bits`` planes.

    * symmetric (odd codes): planes in ``{-1, +1}``, weights ``2^i``;
    * unsigned: planes in ``{0, 1}``, weights ``2^i``;
    * two's complement: planes in ``{0, 1}``, weights ``2^i`` and ``-2^(b-1)`` for the top bit.

    Returns ``planes`` (int64, shape ``(bits, *codes.shape)``) and ``weights`` (int64, ``(bits,)``).
    """
    b, codes = grid.bits, codes.long()
    low, high = grid.code_range
    if bool((codes < low).any() or (codes > high).any()):
        raise ValueError(f"codes outside the {b}-bit {grid.kind} range [{low}, {high}]")
    weights = 2 ** torch.arange(b)
    shifts = torch.arange(b).reshape(-1, *([1] * codes.dim()))
    if grid.kind == "symmetric":
        if bool(((codes + grid.levels) % 2).any()):
            raise ValueError("symmetric (UniQ Eq. 3) codes must be odd")
        k = (codes + grid.levels) // 2          # the level index 0..N-1
        return 2 * ((k >> shifts) & 1) - 1, weights
    unsigned = codes & grid.levels              # two's-complement bits of a signed code
    planes = (unsigned >> shifts) & 1
    if grid.kind == "twos-complement":
        weights[-1] = -weights[-1]
    return planes, weights


def from_bit_planes(planes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_i weights[i] * planes[i]`` (int64)."""
    return torch.tensordot(weights.long(), planes.long(), dims=1)


def bitplane_conv2d(x_codes: torch.Tensor, x_grid: IntegerGrid, w_codes: torch.Tensor,
                    w_grid: IntegerGrid, stride=1, padding=0, dilation=1, groups: int = 1,
                    popcount: bool = False) -> torch.Tensor:
    """The integer convolution as ``sum_ij 2^i 2^j conv(x_plane_j, w_plane_i)``: ``bits_w x
    bits_x`` binary convolutions (int64). Zero padding is applied to every plane, which equals
    padding the codes because the convolution is linear.

    ``popcount=True`` evaluates every binary convolution on packed bits with
    ``xnor_popcount_conv2d``. That needs UniQ's symmetric weights, whose planes are +-1 (a
    true binary layer each); LSQ's two's-complement planes are 0/1 with a negative top plane.
    """
    xp, xw = bit_planes(x_codes, x_grid)
    wp, ww = bit_planes(w_codes, w_grid)
    if popcount and w_grid.kind != "symmetric":
        raise ValueError("popcount=True needs symmetric (UniQ) weight codes, whose bit planes "
                         "are +-1")
    x_plane_kind = "symmetric" if x_grid.kind == "symmetric" else "unsigned"
    conv = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    out = None
    for i in range(len(ww)):
        for j in range(len(xw)):
            if popcount:
                binary = xnor_popcount_conv2d(
                    xp[j], IntegerGrid(x_grid.method, 1, x_plane_kind, x_grid.step), wp[i],
                    IntegerGrid(w_grid.method, 1, "symmetric", w_grid.step), **conv)
            else:
                binary = integer_conv2d(xp[j], wp[i], **conv)
            term = ww[i] * xw[j] * binary
            out = term if out is None else out + term
    return out


def bitplane_linear(x_codes, x_grid: IntegerGrid, w_codes, w_grid: IntegerGrid) -> torch.Tensor:
    """``x_codes @ w_codes.T`` as ``bits_w x bits_x`` binary matrix products (int64)."""
    xp, xw = bit_planes(x_codes, x_grid)
    wp, ww = bit_planes(w_codes, w_grid)
    return sum(ww[i] * xw[j] * (xp[j] @ wp[i].t())
               for i in range(len(ww)) for j in range(len(xw)))


# --- 1 bit: packed bits and popcount ---------------------------------------------------------

_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a ``{0, 1}`` tensor along its last dimension into uint8 (8 per byte, zero-filled)."""
    n = bits.shape[-1]
    bits = F.pad(bits.to(torch.uint8), (0, -n % 8))
    shifts = torch.arange(8, dtype=torch.uint8)
    return (bits.reshape(*bits.shape[:-1], -1, 8) << shifts).sum(-1, dtype=torch.uint8)


def popcount(packed: torch.Tensor) -> torch.Tensor:
    """Number of set bits along the last dimension of a packed uint8 tensor (int64)."""
    return _POPCOUNT[packed.long()].sum(-1)


def xnor_popcount_conv2d(x_codes: torch.Tensor, x_grid: IntegerGrid, w_codes: torch.Tensor,
                         w_grid: IntegerGrid, stride=1, padding=0, dilation=1,
                         groups: int = 1) -> torch.Tensor:
    """A 1-bit layer evaluated on bit-packed tensors with bitwise ops and popcount (int64).

    Weights ``s = +-1`` are stored as bits ``w = (s + 1)/2``. For an input ``x = +-1`` (bit
    ``b``) the product is +1 where the bits agree, so over the ``n`` real (unpadded) positions
    ``sum x s = 2 popcount(XNOR(b, w) AND valid) - popcount(valid)``. For the paper's unsigned
    1-bit activations ``a`` in ``{0, 1}`` (Eq. 5, N = 2) the product is ``a (2w - 1)``, so
    ``sum a s = 2 popcount(a AND w) - popcount(a)``; zero padding is a zero bit there.
    """
    if w_grid.bits != 1 or x_grid.bits != 1 or w_grid.kind != "symmetric":
        raise ValueError("xnor_popcount_conv2d needs 1-bit symmetric weights and 1-bit inputs")
    if x_grid.kind == "twos-complement":
        raise ValueError("a 1-bit input must be symmetric (+-1) or unsigned (0/1)")
    cout, _, kh, kw = w_codes.shape
    w_bits = pack_bits((w_codes > 0).reshape(groups, 1, cout // groups, -1))  # (g, 1, Co/g, n/8)
    x_bits = (x_codes > 0).long()
    patches = _patches(x_bits, (kh, kw), stride, padding, dilation, groups)  # (B, g, n, L)
    x_packed = pack_bits(patches.transpose(2, 3)).unsqueeze(3)               # (B, g, L, 1, n/8)
    if x_grid.kind == "symmetric":
        valid = _patches(torch.ones_like(x_bits), (kh, kw), stride, padding, dilation, groups)
        valid_packed = pack_bits(valid.transpose(2, 3)).unsqueeze(3)
        agree = popcount(~(x_packed ^ w_bits) & valid_packed)                # XNOR, real bits
        out = 2 * agree - popcount(valid_packed)
    else:
        out = 2 * popcount(x_packed & w_bits) - popcount(x_packed)
    ho, wo = _out_size(x_codes.shape[2:], (kh, kw), stride, padding, dilation)
    return out.permute(0, 1, 3, 2).reshape(x_codes.shape[0], cout, ho, wo)


# --- a model's quantizers as tables ----------------------------------------------------------


@torch.no_grad()
def layer_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input of every quantized layer for one batch (eval mode; the model is unchanged)."""
    seen: dict[str, torch.Tensor] = {}
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (QConv2d, QLinear))]
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: seen.__setitem__(n, a[0]))
             for n, m in layers]
    was_training = model.training
    try:
        model.eval()(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen


def _codes_text(grid: IntegerGrid) -> str:
    codes = grid.codes().tolist()
    return ", ".join(map(str, codes)) if len(codes) <= 8 else f"{codes[0]}, ..., {codes[-1]}"


def _scale_text(grid: IntegerGrid) -> str:
    s = grid.scale.flatten()
    return f"{s.item():.4g}" if s.numel() == 1 else f"{s.min():.4g} .. {s.max():.4g} ({s.numel()})"


@torch.no_grad()
def grid_table(model: nn.Module, x: torch.Tensor):
    """One row per quantizer of a converted, calibrated model: its integer grid (codes, scale,
    container) and whether ``from_codes(to_codes(t)) == quantizer(t)`` bit for bit on its
    tensor (the weight, or the layer's input for batch ``x``)."""
    import pandas as pd

    inputs = layer_inputs(model, x)
    rows = []
    for name, layer in integer_layers(model).items():
        m = model.get_submodule(name)
        for what, grid, q, t in (("weight", layer.weight_grid, m.weight_quantizer, m.weight),
                                 ("input", layer.input_grid, m.act_quantizer, inputs.get(name))):
            if grid is None or t is None:
                continue
            codes = to_codes(t, grid)
            rows.append({
                "layer": name, "tensor": what, "method": grid.method, "bits": grid.bits,
                "grid": grid.kind, "codes": _codes_text(grid), "scale": _scale_text(grid),
                "container": str(grid.container).replace("torch.", ""),
                "codes_used": int(codes.unique().numel()),
                "exact": bool(torch.equal(from_codes(codes, grid), q(t))),
            })
    return pd.DataFrame(rows)


def code_counts(model: nn.Module, name: str, x: torch.Tensor):
    """How often each code of layer ``name``'s weight and input grids occurs (batch ``x``)."""
    import pandas as pd

    layer = integer_layers(model)[name]
    tensors = {"weight": (layer.weight_codes, layer.weight_grid),
               "input": (to_codes(layer_inputs(model, x)[name], layer.input_grid),
                         layer.input_grid)}
    frames = []
    for what, (codes, grid) in tensors.items():
        every = grid.codes()
        counts = (codes.reshape(-1, 1) == every.reshape(1, -1)).sum(0)
        frames.append(pd.DataFrame({"tensor": what, "code": every.tolist(),
                                    "value": (every.float() * grid.scale.flatten()[0]).tolist(),
                                    "count": counts.tolist()}))
    return pd.concat(frames, ignore_index=True)


# --- model size -----------------------------------------------------------------------------


def model_size_bytes(model: nn.Module) -> dict[str, int]:
    """Storage of a converted model with its quantized weights packed at their bit width.

    ``float32``: every floating-point parameter and buffer at 4 bytes (the float model, step
    sizes left out). ``quantized``: each quantized weight tensor at ``ceil(numel * bits / 8)``
    bytes (``packed_weights``: packed bits, not an int8 container), plus every other
    floating-point parameter and buffer (full-precision layers, biases, BatchNorm) at 4 bytes
    (``other_float``), plus every step size at 4 bytes (``scales``).
    """
    quantized_weights = {id(m.weight): m.weight_quantizer.bits for m in model.modules()
                         if isinstance(m, (QConv2d, QLinear)) and m.weight_quantizer is not None}
    steps = {id(q.step) for _, q in quantizers(model)}
    size = dict.fromkeys(("float32", "packed_weights", "other_float", "scales"), 0)
    for t in list(model.parameters()) + list(model.buffers()):
        if not t.is_floating_point():
            continue
        if id(t) in steps:
            size["scales"] += 4 * t.numel()
            continue
        size["float32"] += 4 * t.numel()
        bits = quantized_weights.get(id(t))
        if bits is None:
            size["other_float"] += 4 * t.numel()
        else:
            size["packed_weights"] += -(-t.numel() * bits // 8)
    size["quantized"] = size["packed_weights"] + size["other_float"] + size["scales"]
    return size


def size_table(fp_model: nn.Module, bits: list[int], example_input: torch.Tensor, **convert):
    """``model_size_bytes`` of ``fp_model`` converted at each bit width (the paper's layer
    policy; ``convert`` goes to ``uniq.quantize_model``), against float32."""
    import pandas as pd


    init = convert.pop("init", 0.1)  # sizes do not depend on the steps: skip the MSE search
    rows = []
    for b in bits:
        converted = quantize_model(fp_model, b, init=init, example_input=example_input,
                                   **convert)
        size = model_size_bytes(converted)
        rows.append({"bits": b, **size, "ratio": size["float32"] / size["quantized"]})
    return pd.DataFrame(rows)


__all__ = [
    "IntegerGrid", "integer_grid", "to_codes", "from_codes", "IntegerLayer", "integer_layer",
    "integer_layers", "integer_conv2d", "bit_planes", "from_bit_planes", "bitplane_conv2d",
    "bitplane_linear", "pack_bits", "popcount", "xnor_popcount_conv2d", "layer_inputs",
    "grid_table", "code_counts", "model_size_bytes", "size_table",
]
