"""Training-dynamics probes (Figure 4): step size, input std and SQNR of activation quantizers."""

from __future__ import annotations

import torch
from torch import nn

from ..modules import quantizers
from ..mse import optimal_sqnr_db, sqnr_db
from ..state import preserved_state


def activation_quantizers(model: nn.Module):
    return [(n.removesuffix(".act_quantizer"), q) for n, q in quantizers(model)
            if n.endswith("act_quantizer")]


@torch.no_grad()
def record_dynamics(model: nn.Module, x: torch.Tensor, precision: str = "fp32") -> dict:
    """One forward pass (training mode, no side effects) that measures, for every activation
    quantizer, its step, the std of its input and the SQNR of its output. Returns device
    tensors, so calling this inside a training loop causes no host sync."""
    rows: dict[str, dict[str, torch.Tensor]] = {}

    def hook(name: str):
        def measure(q: nn.Module, args: tuple, out: torch.Tensor) -> None:
            inp = args[0]
            rows[name] = {"bits": q.bits, "signed": q.signed,
                          "step": q.step.detach().float().mean(),
                          "input_std": inp.detach().float().std(),
                          "sqnr_db": sqnr_db(inp, out)}
        return measure

    named = activation_quantizers(model)
    handles = [q.register_forward_hook(hook(n)) for n, q in named]
    try:
        with preserved_state(model):
            model.train()
            with torch.autocast(x.device.type, dtype=torch.bfloat16,
                                enabled=precision == "bf16"):
                model(x)
    finally:
        for h in handles:
            h.remove()
    return rows


def probe_rows(epoch: int, probes: list[tuple[float, int, dict]]) -> list[dict]:
    """The dynamics log's rows for one epoch's probes (read from the device once, at its end)."""
    return [
        {"epoch": epoch, "epoch_float": round(ef, 4), "step": st, "layer": layer,
         "bits": v["bits"], "signed": v["signed"], "step_size": float(v["step"]),
         "input_std": float(v["input_std"]), "sqnr_db": float(v["sqnr_db"]),
         "optimal_sqnr_db": optimal_sqnr_db(v["bits"], "weight" if v["signed"] else "activation")}
        for ef, st, rows in probes for layer, v in rows.items()
    ]
