"""Every figure of the reproduction, as functions that return a matplotlib Figure.

Figures are sized for a notebook column (at most 10 inches wide, fonts of 9-11 pt), and every
function takes a ``title`` so that a notebook can say what was actually run (model, data set,
recipe, warm-up length) instead of the paper's setting.

The figures are built as plain ``matplotlib.figure.Figure`` objects, outside pyplot: drawing one
never picks or switches a backend, opens a window or registers a figure that a backend would show
again later, so matplotlib's state is left as it was found. ``show`` displays a figure once, as a
PNG, in whatever kernel runs the notebook (JupyterLab, VS Code, papermill with any MPLBACKEND).
"""

from __future__ import annotations

import functools
import io
import itertools
import textwrap
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from .. import functional as QF
from ..mse import distortion, optimal_step

# The resolution of every saved and displayed figure.
DPI = 120

# Legible at notebook width: a figure is shown about 10 inches wide at 100 dpi.
LEGIBLE = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 9,
           "xtick.labelsize": 9, "ytick.labelsize": 9, "figure.titlesize": 11,
           "axes.formatter.useoffset": False}


def _legible(make):
    """Draw with the LEGIBLE fonts; no offset on the axes (an offset such as "+1.2e-1" hides
    how much a curve moves)."""

    @functools.wraps(make)
    def wrapper(*args, **kwargs):
        with mpl.rc_context(LEGIBLE):
            return make(*args, **kwargs)

    return wrapper


def subplots(nrows: int = 1, ncols: int = 1, figsize=None, layout=None, **kwargs):
    """``plt.subplots`` without pyplot: a new Figure that no backend knows about (so nothing
    shows it a second time, and no backend is chosen as a side effect)."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, VS Code, papermill), where a display shows."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipykernel, a dependency
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def show(fig, path: str | Path | None = None) -> None:
    """Display ``fig`` once in the running notebook, as the PNG saved at ``path`` (or rendered
    now), whatever the matplotlib backend, then forget it: a figure that pyplot made is closed,
    so that the inline backend does not show it a second time at the end of the cell. Outside a
    notebook nothing is displayed."""
    if in_notebook():
        from IPython.display import Image, display

        data = Path(path).read_bytes() if path is not None else png_bytes(fig)
        meta = {"uniq_figure": Path(path).name} if path is not None else {}
        display(Image(data=data, format="png", metadata=meta))
    if getattr(fig.canvas, "manager", None) is not None:  # made by pyplot (e.g. pandas .plot)
        import matplotlib.pyplot as plt

        plt.close(fig)


def describe_run(config) -> str:
    """A run's setting in words, from its config: ``1-bit UniQ, SGD, 0.25-epoch warm-up at
    0.001, then lr 0.01 (cosine)``. Titles built from this say what was run, in any profile."""
    recipe = config.resolved().recipe_obj()
    what = "full precision" if config.bits >= QF.FULL_PRECISION else (
        f"{config.bits}-bit {'LSQ' if config.method == 'lsq' else 'UniQ'}")
    optimizer = "SGD" if recipe.optimizer == "sgd" else "Adam"
    if recipe.warmup_epochs:
        schedule = (f"{recipe.warmup_epochs:g}-epoch warm-up at {recipe.warmup_lr:g}, "
                    f"then lr {recipe.lr:g}")
    else:
        schedule = f"lr {recipe.lr:g}, no warm-up"
    return f"{what}, {optimizer}, {schedule} ({recipe.schedule})"


def dorefa_weight(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Eq. 2 (DoReFa-style): map tanh(w) into [0, 1], quantize to 2**bits levels, map to [-1, 1]."""
    t = torch.tanh(x)
    u = t / (2 * t.abs().max()) + 0.5
    n = 2**bits - 1
    return 2 * torch.round(u * n) / n - 1


@_legible
def transfer_curves(bits: int = 2, step: float = 1.0, span: float = 3.0, title: str | None = None):
    """Input-output curves of the three weight quantizers of Section 3 and 4.1."""
    x = torch.linspace(-span, span, 2001)
    s = torch.tensor(step)
    curves = {
        "semi-symmetric (two's complement, LSQ)": QF.lsq_quantize(x, s, bits, signed=True),
        "DoReFa-style (Eq. 2)": dorefa_weight(x, bits),
        "UniQ symmetric (Eq. 3)": QF.symmetric_quantize(x, s, bits),
    }
    fig, axes = subplots(1, 3, figsize=(10, 3.6), sharey=True)
    for ax, (name, y) in zip(axes, curves.items(), strict=True):
        ax.plot(x, x, color="0.8", lw=1, label="identity")
        ax.plot(x, y, lw=2)
        levels = y.unique()
        for level in levels:
            ax.axhline(float(level), color="C1", ls=":", lw=0.8)
        ax.set_title(f"{name}\n{len(levels)} levels: "
                     f"{', '.join(f'{v:g}' for v in np.round(levels.numpy(), 2))}", fontsize=9)
        ax.set_xlabel("input")
    axes[0].set_ylabel("quantized output")
    fig.suptitle(title or f"{bits}-bit weight quantizers (step {step:g}; dotted: the levels)")
    fig.tight_layout()
    return fig


def _finish(fig, axes, xlabel: str, ylabel: str, title: str | None,
            legend_title: str | None = None):
    """Side-by-side panels: a legend and an x label on each, the y label on the first."""
    for ax in axes:
        ax.legend(title=legend_title)
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel(ylabel)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


@_legible
def binary_and_activation_curves(step: float = 1.0, title: str | None = None):
    """The binary case of Eq. 3 (+-D/2) and the activation quantizer Eq. 5 at 1 and 2 bits."""
    x = torch.linspace(-3, 4, 2001)
    s = torch.tensor(step)
    fig, axes = subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(x, QF.symmetric_quantize(x, s, 1), label="Eq. 3, N=2 (binary)")
    axes[0].plot(x, torch.sign(x) * step / 2, "--", label="sign(x) * D/2")
    axes[0].set_title("binary = symmetric quantizer with N = 2")
    for bits in (1, 2):
        axes[1].plot(x, QF.unsigned_quantize(x, s, bits), label=f"Eq. 5, {bits} bit")
    axes[1].set_title("activation quantizer (levels 0 .. (N-1) D)")
    return _finish(fig, axes, "input", "quantized output", title)


@_legible
def step_gradient_curve(bits: int = 2, step: float = 1.0, title: str | None = None):
    """d Q / d step (Eq. 6 with the corrected outer value) as autograd computes it."""
    x = torch.linspace(-3, 3, 1201)
    s = torch.tensor(step, requires_grad=True)
    grads = []
    for xi in x:
        (g,) = torch.autograd.grad(QF.symmetric_quantize(xi.view(1), s, bits).sum(), s)
        grads.append(float(g))
    fig, ax = subplots(figsize=(7, 3.4))
    ax.plot(x, grads)
    ax.axhline((2**bits - 1) / 2, ls=":", color="C1", label="+-(N-1)/2 outside the range")
    ax.axhline(-(2**bits - 1) / 2, ls=":", color="C1")
    ax.set_xlabel("input x")
    ax.set_ylabel("dQ/dD")
    ax.set_title(title or f"step gradient of the {bits}-bit symmetric quantizer (D = {step:g})")
    ax.legend()
    fig.tight_layout()
    return fig


@_legible
def distortion_curves(bits_list=(1, 2, 3, 4), title: str | None = None):
    """D(step) for a unit Gaussian (weights) and half-normal (activations), optima marked."""
    fig, axes = subplots(1, 2, figsize=(10, 3.8))
    steps = np.linspace(0.05, 2.5, 300)
    for ax, kind in zip(axes, ("weight", "activation"), strict=True):
        for b in bits_list:
            d = [distortion(s, b, kind) for s in steps]
            best = optimal_step(b, kind)
            (line,) = ax.semilogy(steps, d, label=f"{b} bit")
            ax.plot(best, distortion(best, b, kind), "o", color=line.get_color())
        ax.set_title(f"{kind}s ({'Gaussian' if kind == 'weight' else 'rectified Gaussian'} "
                     "input): MSE vs step")
    return _finish(fig, axes, "step size (input of unit variance)", "mean squared error", title,
                   legend_title="dots: optimum")


@_legible
def weight_histograms(models: dict, layers: list[str], bins: int = 120, title: str | None = None):
    """Figure 3: trained weights of a few layers, one colour per method, levels dashed."""
    fig, axes = subplots(1, len(layers), figsize=(5 * len(layers), 3.8), squeeze=False)
    colours = {"LSQ": "tab:green", "UniQ": "tab:red"}
    for ax, layer in zip(axes[0], layers, strict=True):
        for label, model in models.items():
            m = model.get_submodule(layer)
            q = m.weight_quantizer
            with torch.no_grad():  # the step is a parameter: its output would require grad
                w = m.weight.detach().flatten()
                levels = q(m.weight.detach()).unique().tolist() if q is not None else []
            ax.hist(w.numpy(), bins=bins, density=True, alpha=0.45,
                    color=colours.get(label), label=label)
            for level in levels:
                ax.axvline(level, color=colours.get(label), ls="--", lw=1)
        ax.set_title(layer)
        ax.set_xlabel("weight value")
        ax.legend()
    axes[0][0].set_ylabel("estimated density")
    fig.suptitle(title or "trained weights; dashed: each method's reconstruction levels")
    fig.tight_layout()
    return fig


@_legible
def dynamics_figure(panels: list[tuple[str, pd.DataFrame, float]], layer: str,
                    max_epoch: float = 30, title: str | None = None,
                    scale: float | None = None):
    """Figure 4: step size, input std and SQNR of one activation quantizer per run.

    ``panels``: (title, dynamics DataFrame, warm-up epochs) per run. The grey band is the
    warm-up; each column's heading says by how much the step moved over the plotted span, so a
    change too small to see is still stated. ``scale``: run epochs per paper epoch; the top
    row then also reads in the paper's epochs."""
    columns = len(panels)
    fig, axes = subplots(3, columns, figsize=(min(2.6 * columns + 0.6, 10.5), 8.4),
                             squeeze=False, sharex=True)
    handles = {}
    for col, (panel_title, df, warmup) in enumerate(panels):
        d = df[(df.layer == layer) & (df.epoch_float <= max_epoch)] if len(df) else df
        heading = textwrap.fill(panel_title, 26)
        for row, (key, label) in enumerate((("step_size", "step size"),
                                            ("input_std", "input std"),
                                            ("sqnr_db", "SQNR (dB)"))):
            ax = axes[row][col]
            if warmup:
                handles["warm-up"] = ax.axvspan(0, warmup, color="0.88", lw=0)
            if col == 0:
                ax.set_ylabel(label)
            if not len(d):
                ax.text(0.5, 0.5, "no dynamics\nrecorded", ha="center", va="center",
                        transform=ax.transAxes)
                continue
            ax.plot(d.epoch_float, d[key], lw=1.5, marker="." if len(d) < 40 else None)
            ax.set_xlim(0, max_epoch)
            if row == 0 and scale:
                top = ax.secondary_xaxis("top", functions=(lambda e: e / scale,
                                                           lambda p: p * scale))
                top.set_xlabel("the paper's epoch", fontsize=8)
                top.tick_params(labelsize=7)
            if key == "step_size":
                first, last = float(d[key].iloc[0]), float(d[key].iloc[-1])
                change = 100 * (last - first) / first if first else float("nan")
                heading += f"\nstep {change:+.2g}% over the span"
            if key == "sqnr_db":
                handles["optimal SQNR for a Gaussian input (Table 1)"] = ax.axhline(
                    d.optimal_sqnr_db.iloc[0], ls="--", color="tab:orange")
        axes[0][col].set_title(heading, fontsize=9)
        axes[-1][col].set_xlabel("epoch")
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center",
                   ncol=len(handles), frameon=False)
    fig.suptitle(title or f"training dynamics of the input quantizer of {layer}")
    fig.tight_layout(rect=(0, 0.04 if handles else 0, 1, 1))
    return fig


@_legible
def summary_chart(paper: pd.DataFrame, reproduced: pd.DataFrame | None = None,
                  title: str | None = None):
    """Figure-1-style: ImageNet ResNet-18 top-1 vs bit width per method (paper), plus any
    reproduced UniQ points."""
    d = paper[(paper.table.isin([2, 3])) & (paper.model == "resnet18")
              & (paper.method != "fp")]
    fig, ax = subplots(figsize=(8, 4.8))
    others = itertools.cycle(mpl.colormaps["tab20"].colors)  # a distinct colour per method
    for method, g in d.groupby("method"):
        g = g.drop_duplicates("weight_bits").sort_values("weight_bits")
        style = dict(lw=2.5, marker="o", color="tab:red") if method == "UniQ" else dict(
            lw=1, marker=".", alpha=0.8, color=next(others))
        ax.plot(g.weight_bits, g.value, label=method, **style)
    if reproduced is not None and len(reproduced):
        ax.plot(reproduced.bits, reproduced.top1, "*", ms=14, color="black",
                label="reproduced (this repo)")
    fp = paper[(paper.table == 2) & (paper.model == "resnet18") & (paper.method == "fp")]
    if len(fp):
        ax.axhline(float(fp.value.iloc[0]), ls=":", color="0.4", label="FP")
    ax.set_xticks([1, 2, 3, 4])
    ax.set_xlabel("bits (weights / activations)")
    ax.set_ylabel("ImageNet top-1 (%)")
    ax.set_title(title or "ResNet-18 on ImageNet: UniQ vs prior methods (paper's numbers)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


@_legible
def training_curves(metrics: pd.DataFrame, title: str = ""):
    """Loss and top-1 per epoch of one run (its metrics.csv)."""
    fig, axes = subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(metrics.epoch + 1, metrics.train_loss, label="train")
    axes[0].plot(metrics.epoch + 1, metrics.eval_loss, label="test")
    axes[0].set_ylabel("cross-entropy")
    axes[1].plot(metrics.epoch + 1, metrics.train_top1, label="train")
    axes[1].plot(metrics.epoch + 1, metrics.eval_top1, label="test")
    axes[1].set_ylabel("top-1 (%)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@_legible
def data_samples(data, classes: int = 6, per_class: int = 5, title: str | None = None):
    """A few images of the first ``classes`` classes, one row per class (as the data set stores
    them: uint8, before augmentation). For the laptop profile's data, rows 2k and 2k+1 are the
    two classes of a pair: same colours, different fine pattern."""
    fig, axes = subplots(classes, per_class, figsize=(1.3 * per_class + 1.2, 1.3 * classes),
                         squeeze=False)
    for row in range(classes):
        picks = (data.labels == row).nonzero().flatten()[:per_class]
        for col in range(per_class):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(picks):
                ax.imshow(data.images[picks[col]].permute(1, 2, 0).numpy(),
                          interpolation="nearest")
        axes[row][0].set_ylabel(f"class {row}", fontsize=9)
    fig.suptitle(title or f"{data.name}: {per_class} images of each of the first {classes} "
                 "classes")
    fig.tight_layout()
    return fig


# --- the claims' chart (notebook 8) ---------------------------------------------------------


VERDICT_COLOURS = {"holds": "tab:green", "contradicted": "tab:red",
                   "inconclusive": "tab:orange", "not run": "0.6", "not comparable": "0.4"}
METRIC_UNITS = {"top1": "top-1 difference (points)", "weight_skew": "weight skewness",
                "sqnr_gap": "SQNR gap difference (dB)"}


def _family(metric: str) -> str:
    if "skew" in metric:  # skewness, its change from the start, and its size: one unit
        return "weight_skew"
    for prefix in METRIC_UNITS:
        if metric.startswith(prefix):
            return prefix
    return metric


def _colour(result: str) -> str:
    return next((c for v, c in VERDICT_COLOURS.items() if result.startswith(v)), "0.3")


def shown_verdict(row: pd.Series) -> tuple[str, str]:
    """(verdict shown, label): the Holm-adjusted verdict when the table has one, with the
    unadjusted verdict beside it where the two differ."""
    verdict = str(row["verdict"])
    adjusted = str(row.get("verdict_holm", verdict))
    if adjusted in ("nan", "None"):
        adjusted = verdict
    return adjusted, adjusted + (f" (alone: {verdict})" if adjusted != verdict else "")


def plot_claims(table: pd.DataFrame, width: float = 9.0):
    """Effect and its interval per claim (horizontal bars), the paper's effect (black diamond),
    zero, the ``match`` margin (shaded), the verdict after Holm as colour and label (the
    unadjusted one beside it where they differ). One panel per kind of metric (top-1 points,
    skewness, dB), since their units differ."""
    from matplotlib.figure import Figure  # not pyplot: no backend chosen, nothing shown twice
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    table = table.reset_index(drop=True)
    families = list(dict.fromkeys(_family(m) for m in table["metric"]))
    if not families:
        raise ValueError("plot_claims: the claims table is empty")
    sizes = [int((table["metric"].map(_family) == f).sum()) for f in families]
    fig = Figure(figsize=(width, 0.32 * sum(sizes) + 1.2 * len(families) + 0.6),
                 layout="constrained")
    axes = fig.subplots(len(families), 1, squeeze=False,
                        gridspec_kw={"height_ratios": [s + 1.5 for s in sizes]})
    for ax, family in zip(axes[:, 0], families, strict=True):
        part = table[table["metric"].map(_family) == family].reset_index(drop=True)
        y = np.arange(len(part))[::-1].astype(float)
        ax.axvline(0, color="0.3", lw=0.8)
        spans = [0.0]
        for yi, (_, row) in zip(y, part.iterrows(), strict=True):
            colour = _colour(shown_verdict(row)[0])
            if row["direction"] == "match" and np.isfinite(row["margin"]):
                ax.fill_betweenx([yi - 0.35, yi + 0.35], -row["margin"], row["margin"],
                                 color="tab:blue", alpha=0.12, lw=0)
                spans += [-row["margin"], row["margin"]]
            if np.isfinite(row["effect"]):
                ax.plot(row["effect"], yi, "o", color=colour, ms=6)
                spans.append(row["effect"])
            if np.isfinite(row["ci_low"]) and np.isfinite(row["ci_high"]):
                ax.hlines(yi, row["ci_low"], row["ci_high"], color=colour, lw=2.2)
                spans += [row["ci_low"], row["ci_high"]]
            if np.isfinite(row["paper_effect"]):
                ax.plot(row["paper_effect"], yi, "D", color="black", ms=5, mfc="none")
                spans.append(row["paper_effect"])
        lo, hi = float(np.nanmin(spans)), float(np.nanmax(spans))
        pad = 0.08 * (hi - lo) if hi > lo else 1.0
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(-0.8, len(part) - 0.2)
        ax.set_yticks(y)
        ax.set_yticklabels([str(i) for i in part["id"]], fontsize=8)
        for yi, (_, row) in zip(y, part.iterrows(), strict=True):
            verdict, label = shown_verdict(row)
            ax.annotate(label, xy=(1.01, yi), xycoords=("axes fraction", "data"),
                        va="center", fontsize=8, color=_colour(verdict))
        one_sample = (part["b"].fillna("").astype(str).str.strip() == "").any()
        ax.set_xlabel(METRIC_UNITS.get(family, family)
                      + (" (a - b, or a for one-sample claims)" if one_sample else " (a - b)"),
                      fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    handles = [Line2D([], [], color=c, marker="o", lw=2, label=v)
               for v, c in VERDICT_COLOURS.items()]
    handles.append(Line2D([], [], color="black", marker="D", mfc="none", lw=0,
                          label="paper's effect"))
    handles.append(Patch(color="tab:blue", alpha=0.12, label="match margin"))
    axes[0, 0].legend(handles=handles, fontsize=7, ncol=len(handles), loc="lower left",
                      bbox_to_anchor=(0, 1.01), frameon=False)
    return fig
