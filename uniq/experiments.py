"""The paper's CIFAR-100 experiments as data: profiles, the runs behind each table and figure,
and writers that put every table next to the paper's numbers.

Notebooks call these functions; they never build configs or loops themselves. Every run goes
through ``uniq.train.train``, so a table asked for twice (or by two notebooks) trains once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from .mse import paper_tables
from .train import Run, TrainConfig, train

REPO = Path(__file__).resolve().parent.parent
PAPER_EPOCHS = 350


@dataclass(frozen=True)
class Profile:
    """How big the reproduction is. ``warmup_scale`` maps the paper's warm-up epochs (5, 10)
    to this profile's (a 2-epoch smoke run cannot warm up for 5 epochs)."""

    name: str
    dataset: str
    depth: int
    batch_size: int
    fp_epochs: int
    epochs: int
    calib_batches: int
    warmup_scale: float
    synthetic_train: int = 50_000
    synthetic_test: int = 10_000
    dynamics_per_epoch: int = 4
    compile: str = "none"
    expected_time: str = ""

    @property
    def comparable(self) -> bool:
        return self.dataset == "cifar100" and self.depth == 32 and self.epochs == PAPER_EPOCHS

    def caveat(self) -> str:
        if self.dataset == "synthetic":
            return ("SMOKE PROFILE: generated data (not CIFAR-100), a ResNet-"
                    f"{self.depth} and {self.epochs}-epoch runs. These numbers only show that the "
                    "pipeline runs; they are NOT comparable to the paper's.")
        if not self.comparable:
            return (f"{self.name} profile: real CIFAR-100, ResNet-{self.depth}, shortened "
                    f"schedules ({self.fp_epochs} FP / {self.epochs} quantized epochs instead "
                    "of 350): expect lower accuracy than the paper.")
        return "paper profile: real CIFAR-100, ResNet-32, the paper's 350-epoch schedules."


PROFILES = {
    "smoke": Profile("smoke", "synthetic", depth=8, batch_size=64, fp_epochs=10, epochs=1,
                     calib_batches=2, warmup_scale=0.05, synthetic_train=1024,
                     synthetic_test=500, dynamics_per_epoch=8,
                     expected_time="under 10 minutes on 2 CPU cores"),
    "quick": Profile("quick", "cifar100", depth=32, batch_size=128, fp_epochs=60, epochs=30,
                     calib_batches=100, warmup_scale=1.0, dynamics_per_epoch=8,
                     compile="default",
                     expected_time="about 2-3 GPU-hours on one H100 (estimate)"),
    "paper": Profile("paper", "cifar100", depth=32, batch_size=128, fp_epochs=PAPER_EPOCHS,
                     epochs=PAPER_EPOCHS, calib_batches=100, warmup_scale=1.0,
                     compile="default",
                     expected_time="about 1-2 GPU-days on one H100 (estimate)"),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}")
    return PROFILES[name]


@dataclass
class Context:
    """Where a notebook reads and writes: profile, results folder, runs folder, device."""

    profile: Profile
    results_dir: Path
    runs_dir: Path
    data_dir: Path
    device: str = "auto"

    def base(self) -> dict:
        p = self.profile
        return dict(dataset=p.dataset, synthetic_train=p.synthetic_train,
                    synthetic_test=p.synthetic_test, depth=p.depth, batch_size=p.batch_size,
                    calib_batches=p.calib_batches, dynamics_per_epoch=p.dynamics_per_epoch,
                    runs_dir=str(self.runs_dir), data_dir=str(self.data_dir),
                    device=self.device, compile=p.compile)


def context(profile: str = "smoke", results_dir: str | None = None, runs_dir: str = "runs",
            data_dir: str = "data", device: str = "auto") -> Context:
    """Resolve a notebook's parameters; relative paths are taken from the repository root, so
    a notebook gives the same answer from JupyterLab (cwd notebooks/) and from papermill."""
    prof = get_profile(profile)
    out = _from_repo(results_dir or f"results/{profile}")
    out.mkdir(parents=True, exist_ok=True)
    return Context(prof, out, _from_repo(runs_dir), _from_repo(data_dir), device)


def _from_repo(path: str | Path) -> Path:
    return Path(path) if Path(path).is_absolute() else REPO / path


# --- the runs -------------------------------------------------------------------------------


def fp_config(ctx: Context) -> TrainConfig:
    return TrainConfig(bits=32, epochs=ctx.profile.fp_epochs, **ctx.base())


def quant_config(ctx: Context, bits: int, method: str = "uniq", init: str | float = "mse",
                 recipe: str = "") -> TrainConfig:
    """A quantized run started from the profile's full-precision run (Section 5.2)."""
    warmup = None
    if recipe:
        from .recipes import get_recipe

        warmup = get_recipe(recipe).warmup_epochs * ctx.profile.warmup_scale
    return TrainConfig(bits=bits, method=method, init=init, recipe=recipe, warmup_epochs=warmup,
                       epochs=ctx.profile.epochs, init_from=fp_config(ctx).to_dict(),
                       **ctx.base())


def run(cfg: TrainConfig) -> Run:
    return train(cfg)


def paper_value(table: int, method: str, bits: int) -> float:
    p = paper_tables()
    hit = p[(p.table == table) & (p.method == method) & (p.weight_bits == bits)]
    return float(hit.value.iloc[0]) if len(hit) else float("nan")


def _row(ctx: Context, r: Run, **fields) -> dict:
    return {**fields, "top1": round(r.top1, 2), "dataset": r.summary["dataset"],
            "profile": ctx.profile.name, "run": r.dir.name}


def _with_paper(df: pd.DataFrame) -> pd.DataFrame:
    df["diff"] = (df.top1 - df.paper_top1).round(2)
    return df


def table4(ctx: Context) -> pd.DataFrame:
    """Table 4: LSQ vs UniQ at 4/3/2/1 bits (and the FP start), CIFAR-100 ResNet-32."""
    fp = run(fp_config(ctx))
    rows = [_row(ctx, fp, method="FP", bits="32/32", paper_top1=paper_value(4, "fp", 32))]
    for method, label in (("lsq", "LSQ"), ("uniq", "UniQ")):
        for bits in (4, 3, 2, 1):
            if method == "lsq" and bits == 1:
                continue  # LSQ has no binary quantizer (the paper's table has a dash)
            r = run(quant_config(ctx, bits, method))
            rows.append(_row(ctx, r, method=label, bits=f"{bits}/{bits}",
                             paper_top1=paper_value(4, label, bits)))
    return _with_paper(pd.DataFrame(rows))


TABLE5_INITS = ((0.1, "0.1"), (0.2, "0.2"), ("lsq", "LSQ"), ("mse", "MSE"))


def table5(ctx: Context) -> pd.DataFrame:
    """Table 5: step-size init 0.1, 0.2, LSQ's heuristic and MSE (ours), at 2 and 3 bits."""
    rows = []
    for bits in (2, 3):
        for init, label in TABLE5_INITS:
            r = run(quant_config(ctx, bits, "uniq", init))
            rows.append(_row(ctx, r, bits=f"{bits}/{bits}", init=label,
                             paper_top1=paper_value(5, f"UniQ init={label}", bits)))
    return _with_paper(pd.DataFrame(rows))


TABLE6 = (
    ("sgd-lr0.01", "SGD", "no warm-up", "SGD lr=0.01 no warm-up"),
    ("sgd-lr0.005", "SGD", "no warm-up", "SGD lr=0.005 no warm-up"),
    ("sgd-lr0.001", "SGD", "no warm-up", "SGD lr=0.001 no warm-up"),
    ("sgd-warmup5", "SGD", "warm-up 5", "SGD warm-up 5 epochs"),
    ("sgd-warmup10", "SGD", "warm-up 10", "SGD warm-up 10 epochs"),
    ("adam-lr0.004", "Adam", "no warm-up", "Adam lr=0.004 no warm-up"),
    ("adam-lr0.001", "Adam", "no warm-up", "Adam lr=0.001 no warm-up"),
    ("adam-lr0.0005", "Adam", "no warm-up", "Adam lr=0.0005 no warm-up"),
    ("adam-warmup5", "Adam", "warm-up 5", "Adam warm-up 5 epochs"),
    ("adam-warmup10", "Adam", "warm-up 10", "Adam warm-up 10 epochs"),
)


def table6(ctx: Context) -> pd.DataFrame:
    """Table 6: 1-bit ResNet-32 under SGD/Adam, with and without constant warm-up."""
    from .recipes import get_recipe

    rows = []
    for recipe, optimizer, schedule, paper_name in TABLE6:
        r = run(quant_config(ctx, 1, "uniq", "mse", recipe))
        rec = get_recipe(recipe)
        rows.append(_row(ctx, r, optimizer=optimizer, schedule=schedule, lr=rec.lr,
                         warmup_epochs=r.config.warmup_epochs,
                         paper_top1=paper_value(6, paper_name, 1)))
    return _with_paper(pd.DataFrame(rows))


FIGURE4_PANELS = (
    ("(a) 2-bit, SGD lr 0.01", 2, ""),
    ("(b) 1-bit, SGD lr 0.01, no warm-up", 1, "sgd-lr0.01"),
    ("(c) 1-bit, SGD, 5-epoch warm-up at 0.001", 1, "sgd-warmup5"),
    ("(d) 1-bit, Adam lr 0.004", 1, "adam-lr0.004"),
)


def figure4_runs(ctx: Context) -> list[tuple[str, Run]]:
    """The four runs of Figure 4 (the 2-bit one is Table 4's UniQ 2-bit run: same recipe)."""
    return [(title, run(quant_config(ctx, bits, "uniq", "mse", recipe)))
            for title, bits, recipe in FIGURE4_PANELS]


def body_layers(model) -> list[str]:
    """Names of the quantized body convolutions (not first, last or shortcut), in order."""
    return [n for n, m in model.named_modules()
            if getattr(m, "role", None) == "body" and getattr(m, "weight_quantizer", None)]


def figure3_layers(model) -> list[str]:
    """Two layers for Figure 3: an early and a late body convolution."""
    names = body_layers(model)
    return [names[1], names[-2]] if len(names) > 3 else names[:2]


def figure4_layer(model) -> str:
    """The activation quantizer Figure 4 follows: a body convolution in the middle stage."""
    names = body_layers(model)
    return names[len(names) // 2]


def figure3_runs(ctx: Context) -> dict[str, Run]:
    """The 2-bit LSQ and UniQ runs of Table 4, whose weights Figure 3 shows."""
    return {"LSQ": run(quant_config(ctx, 2, "lsq")), "UniQ": run(quant_config(ctx, 2, "uniq"))}


# --- writing results ------------------------------------------------------------------------


def save_table(ctx: Context, df: pd.DataFrame, name: str, title: str,
               note: str | None = None) -> Path:
    """Write ``<name>.csv`` and ``<name>.md`` into the results. The Markdown starts with the
    profile's caveat (or ``note``, for tables that do not depend on the profile)."""
    df = df.copy()
    df.insert(0, "profile", df.pop("profile") if "profile" in df else ctx.profile.name)
    if "top1" in df:  # a trained result: say whether it can be held against the paper
        df["comparable_to_paper"] = ctx.profile.comparable
    csv = ctx.results_dir / f"{name}.csv"
    df.to_csv(csv, index=False)
    md = [f"# {title}", "", f"> {note or ctx.profile.caveat()}", "",
          df.to_markdown(index=False), ""]
    (ctx.results_dir / f"{name}.md").write_text("\n".join(md))
    return csv


def save_figure(ctx: Context, fig, name: str) -> Path:
    path = ctx.results_dir / f"{name}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def record(ctx: Context, notebook: str, **facts) -> None:
    """Append what a notebook used (runs, dataset, seeds) to ``notebooks.json`` in the results,
    which the runner folds into provenance.json."""
    path = ctx.results_dir / "notebooks.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[notebook] = {"profile": asdict(ctx.profile), **facts}
    path.write_text(json.dumps(data, indent=2, default=str))


def _settings(df: pd.DataFrame, columns: list[str]) -> pd.Series:
    return df[columns].astype(str).agg(", ".join, axis=1)


def summary_table(ctx: Context) -> pd.DataFrame:
    """Every reproduced number found in the results folder, beside the paper's value."""
    parts = []
    t1_path = ctx.results_dir / "table1.csv"
    if t1_path.exists():
        t1 = pd.read_csv(t1_path)
        t1 = t1[t1.bits <= 4]
        for col, what in (("step_w", "weight step"), ("sqnr_w_db", "weight SQNR dB"),
                          ("step_a", "activation step"), ("sqnr_a_db", "activation SQNR dB")):
            parts.append(pd.DataFrame({"table": 1, "setting": what + ", " + t1.bits.astype(str)
                                       + " bit", "value": t1[col], "paper": t1[col + "_paper"],
                                       "dataset": "analytic"}))
    layouts = {2: ["model", "method", "bits"], 3: ["model", "method"],
               4: ["method", "bits"], 5: ["bits", "init"], 6: ["optimizer", "schedule", "lr"]}
    for table, cols in layouts.items():
        path = ctx.results_dir / f"table{table}.csv"
        if not path.exists():
            continue
        t = pd.read_csv(path)
        t = t[t.top1.notna()] if "top1" in t else t.iloc[0:0]
        if t.empty:
            continue
        parts.append(pd.DataFrame({"table": table, "setting": _settings(t, cols),
                                   "value": t.top1, "paper": t.paper_top1,
                                   "dataset": t.dataset}))
    if not parts:
        raise FileNotFoundError(f"no tables in {ctx.results_dir}; run notebooks 2-7 first")
    out = pd.concat(parts, ignore_index=True)
    out["diff"] = (out.value - out.paper).round(3)
    out["profile"] = ctx.profile.name
    return out


def reproduced_imagenet(ctx: Context, model: str) -> pd.DataFrame:
    """UniQ rows of the reproduced Table 2 for one model (empty when none were run)."""
    path = ctx.results_dir / "table2.csv"
    if not path.exists():
        return pd.DataFrame(columns=["bits", "top1"])
    t = pd.read_csv(path)
    t = t[(t.model == model) & (t.method == "UniQ") & t.top1.notna()]
    return t[["bits", "top1"]]
