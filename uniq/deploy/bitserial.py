"""A bit-serial kernel for 1- and 2-bit layers: AND and popcount on packed 64-bit words.

The identity ``uniq.deploy.integer.bitplane_conv2d`` checks, run as a kernel. A UniQ weight code
(Eq. 3) is ``q = sum_i 2^i s_i`` with planes ``s_i = 2 w_i - 1`` in ``{-1, +1}`` (bits
``w_i``), an unsigned input code (Eq. 5) is ``k = sum_j 2^j a_j`` with bits ``a_j``, so

    sum_n k[n] q[n] = sum_ij 2^(i+j) (2 popcount(a_j AND w_i) - popcount(a_j))

over the ``n`` positions of a receptive field. The input is unfolded (im2col), each bit plane
packed 64 positions to a word, and ``numpy.bitwise_count`` (a SIMD popcount) counts the ANDs:
``bits_w x bits_x`` passes over ``K / 64`` words per output instead of ``K`` multiply-adds.
Zero padding is a zero bit, which an unsigned input needs (its code 0 is the value 0).

Exact integer arithmetic: the tests compare it with the int64 reference ``integer_conv2d``.
NumPy only (no compiler, no extra package); it runs where numpy runs, at numpy's speed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..modules import QConv2d
from .integer import IntegerLayer, _out_size, integer_layer, to_codes

MAX_BITS = 2  # widths this kernel is for: b_w x b_x passes, beyond 2 bits int8 kernels win
ROWS_PER_CHUNK = 4096  # output positions per AND-popcount pass (bounds the temporary memory)


def pack_rows(bits: np.ndarray) -> np.ndarray:
    """Pack a ``{0, 1}`` array along its last axis into uint64 words (zero-filled)."""
    packed = np.packbits(bits.astype(np.uint8, copy=False), axis=-1, bitorder="little")
    pad = -packed.shape[-1] % 8
    if pad:
        packed = np.pad(packed, [(0, 0)] * (packed.ndim - 1) + [(0, pad)])
    return np.ascontiguousarray(packed).view(np.uint64)


class BitSerialConv2d:
    """One quantized convolution (UniQ symmetric weights of ``bits <= MAX_BITS``, unsigned
    inputs of ``bits <= MAX_BITS``, one group) as a bit-serial kernel. The weight planes are
    packed once; ``__call__`` maps input codes to the exact integer accumulator (int64)."""

    def __init__(self, layer: IntegerLayer) -> None:
        w_grid, x_grid = layer.weight_grid, layer.input_grid
        if layer.kind != "conv" or layer.groups != 1:
            raise ValueError(f"{layer.name}: the bit-serial kernel handles ungrouped convs")
        if w_grid.kind != "symmetric" or x_grid is None or x_grid.kind != "unsigned":
            raise ValueError(f"{layer.name}: the bit-serial kernel needs UniQ symmetric weights "
                             "and unsigned (Eq. 5) inputs")
        if max(w_grid.bits, x_grid.bits) > MAX_BITS:
            raise ValueError(f"{layer.name}: {w_grid.bits}-bit weights, {x_grid.bits}-bit inputs;"
                             f" the bit-serial kernel is for 1 to {MAX_BITS} bits")
        self.layer = layer
        self.x_bits = x_grid.bits
        cout, _, kh, kw = layer.weight_codes.shape
        self.kernel, self.out_channels = (kh, kw), cout
        level = ((layer.weight_codes + w_grid.levels) // 2).reshape(cout, -1).numpy()
        # (bits_w, Cout, words): bit i of the level index k, q = 2k - (N-1) = sum 2^i (2 w_i - 1)
        self.weight_planes = np.stack([pack_rows((level >> i) & 1) for i in range(w_grid.bits)])

    def __call__(self, x_codes: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        args = (self.kernel, layer.stride, layer.padding, layer.dilation)
        # im2col by PyTorch's float unfold (codes < 2^24 are exact in float32), whose
        # (C, kh, kw) order is the weight's; much faster than unfolding uint8
        patches = F.unfold(x_codes.float(), self.kernel, layer.dilation, layer.padding,
                           layer.stride)                                   # (B, K, L)
        b, _, positions = patches.shape
        rows = patches.transpose(1, 2).to(torch.uint8).reshape(b * positions, -1).numpy()
        acc = np.zeros((rows.shape[0], self.out_channels), np.int64)
        for j in range(self.x_bits):
            a = pack_rows((rows >> j) & 1)                                   # (B L, words)
            ones = np.bitwise_count(a).sum(-1, dtype=np.int64)[:, None]    # popcount(a_j)
            for i, w in enumerate(self.weight_planes):
                both = np.empty_like(acc)
                for start in range(0, a.shape[0], ROWS_PER_CHUNK):
                    chunk = a[start:start + ROWS_PER_CHUNK, None, :] & w[None]
                    both[start:start + ROWS_PER_CHUNK] = np.bitwise_count(chunk).sum(
                        -1, dtype=np.int64)
                acc += (2 * both - ones) << (i + j)
        ho, wo = _out_size(x_codes.shape[2:], *args)
        out = torch.from_numpy(acc).reshape(b, ho, wo, self.out_channels)
        return out.permute(0, 3, 1, 2).contiguous()


def bitserial_layers(model: nn.Module) -> dict[str, BitSerialConv2d]:
    """Every quantized convolution of a converted, calibrated model that the kernel handles."""
    kernels = {}
    for name, m in model.named_modules():
        if not (isinstance(m, QConv2d) and m.weight_quantizer is not None
                and m.act_quantizer is not None):
            continue
        try:
            kernels[name] = BitSerialConv2d(integer_layer(m, name))
        except ValueError:
            continue  # 8-bit first layer, grouped or signed-input layers stay as they are
    return kernels


@contextlib.contextmanager
def bitserial(model: nn.Module) -> Iterator[dict[str, BitSerialConv2d]]:
    """Within the block, every layer ``bitserial_layers`` finds computes its convolution with
    the bit-serial kernel: input codes (the layer's own quantizer), the integer accumulator,
    times ``scale_x * scale_w`` per channel, plus the bias; the rest of the model runs in
    PyTorch as before. Yields the kernels by layer name."""
    kernels = bitserial_layers(model)
    modules = dict(model.named_modules())
    replaced = []

    def forward_of(name: str, kernel: BitSerialConv2d):
        m, layer = modules[name], kernel.layer

        def forward(x: torch.Tensor) -> torch.Tensor:
            acc = kernel(to_codes(x, layer.input_grid))
            scale = layer.input_grid.scale.reshape(()) * layer.weight_grid.scale.reshape(-1)
            y = acc.float() * scale.reshape(1, -1, 1, 1)
            return y if m.bias is None else y + m.bias.reshape(1, -1, 1, 1)
        return forward

    try:
        for name, kernel in kernels.items():
            modules[name].forward = forward_of(name, kernel)  # shadows the class's forward
            replaced.append(name)
        yield kernels
    finally:
        for name in replaced:
            del modules[name].forward


__all__ = ["MAX_BITS", "pack_rows", "BitSerialConv2d", "bitserial_layers", "bitserial"]
