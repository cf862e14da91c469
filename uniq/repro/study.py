"""The paper's CIFAR-100 experiments as data: profiles, the distinct runs behind Tables 4-6 and
Figures 3-4 (with seeds), and writers that put every table next to the paper's numbers.

Notebooks call these functions; they never build configs or loops themselves. Every run goes
through ``uniq.repro.train.fit`` with a fully resolved config, so a run asked for by two tables, two
notebooks or two processes is trained once.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..convert import conversion_report, quantize_model
from ..models import IMAGENET_MODELS, adaptive_pooling, imagenet_model
from ..modules import quantizers
from .claims import chance_holds, evaluate_claims, per_cell_summary  # noqa: F401 - chance_holds: notebook 8
from .comparable import comparable_to_paper, paper_differences, setting_differences
from .config import FULL_PRECISION, CifarConfig, ImageNetConfig, as_flags
from .figures import DPI, show
from .paper import (  # noqa: F401 - table1: notebook 2
    PAPER_NAMES,
    REPORTED,
    check_reported,
    paper_tables,
    paper_value,
    table1,
    with_diff,
)
from .paths import resolve_path
from .recipes import get_recipe, lr_at  # noqa: F401 - lr_at: notebook 4
from .repro_summary import seed_noise  # noqa: F401 - notebook 4
from .runs import Run, finished_runs, older_scheme_run, run_state
from .tasks import cifar_splits, demo_config, generated_folder
from .train import fit

PAPER_EPOCHS = 350


FIGURE4_EPOCHS = 30
"""Figure 4 follows the first 30 of the paper's 350 epochs (Section 5.2)."""
FIGURE4_WARMUP = 5
"""... of which the first 5 are the warm-up of panel (c), at lr 0.001."""


@dataclass(frozen=True)
class Figure4Runs:
    """Figure 4's own runs, for a profile whose table runs are too short for the step to move:
    the paper's 30 epochs become ``epochs`` epochs at batch ``batch_size`` (more optimizer
    steps for the same images), each started from the profile's full-precision run."""

    epochs: int
    batch_size: int
    seeds: int = 1
    """How many of the context's seeds they run (their claims need two or more)."""


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
    seeds: tuple[int, ...] = (0,)
    synthetic_train: int = 50_000
    synthetic_test: int = 10_000
    dynamics_per_epoch: int = 4
    compile: str = "none"
    expected_time: str = ""
    figure4: Figure4Runs | None = None

    @property
    def comparable(self) -> bool:
        """Decided by ``uniq.repro.comparable`` on this profile's runs (the rule of every table,
        claim and report)."""
        return not self.paper_differences()

    def paper_differences(self, precision: str = "fp32") -> list[str]:
        """What this profile's runs change from the paper's setting (empty: none)."""
        out: list[str] = []
        for bits in (2, 1):  # a multi-bit run, and a warm-up run (where the scale shows)
            cfg = CifarConfig(bits=bits, dataset=self.dataset, depth=self.depth,
                              batch_size=self.batch_size, calib_batches=self.calib_batches,
                              epochs=self.epochs, fp_epochs=self.fp_epochs,
                              warmup_scale=self.warmup_scale, precision=precision,
                              synthetic_train=self.synthetic_train,
                              synthetic_test=self.synthetic_test)
            out += [d for d in paper_differences(cfg) if d not in out]
        return out

    @property
    def model_name(self) -> str:
        return f"ResNet-{self.depth}"

    @property
    def data_name(self) -> str:
        if self.dataset == "finegrain":
            return "generated fine-detail data (not CIFAR-100)"
        return "CIFAR-100" if self.dataset == "cifar100" else "generated data (not CIFAR-100)"

    def warmup(self, epochs: float) -> float:
        """This profile's length of one of the paper's warm-ups."""
        return epochs * self.warmup_scale

    def caveat(self) -> str:
        if self.dataset == "finegrain":
            return (f"LAPTOP PROFILE: generated fine-detail data (20 classes, 16x16 pixels; not "
                    f"CIFAR-100), a ResNet-{self.depth}, {self.epochs}-epoch quantized runs. "
                    "Bit widths and methods separate here, but these numbers are NOT "
                    "comparable to the paper's: compare directions, not values.")
        if self.dataset == "synthetic":
            return ("SMOKE PROFILE: generated data (not CIFAR-100), a ResNet-"
                    f"{self.depth} and {self.epochs}-epoch quantized runs. These numbers only "
                    "show that the pipeline runs; they are NOT comparable to the paper's.")
        if not self.comparable:
            return (f"{self.name} profile: real CIFAR-100, ResNet-{self.depth}, shortened "
                    f"schedules ({self.fp_epochs} FP / {self.epochs} quantized epochs instead "
                    "of 350): expect lower accuracy than the paper.")
        return "paper profile: real CIFAR-100, ResNet-32, the paper's 350-epoch schedules."


PROFILES = {
    "smoke": Profile("smoke", "synthetic", depth=8, batch_size=32, fp_epochs=6, epochs=2,
                     calib_batches=2, warmup_scale=0.1, seeds=(0, 1), synthetic_train=512,
                     synthetic_test=250, dynamics_per_epoch=8,
                     expected_time="about 5 minutes on 2 CPU cores"),
    # Chosen on full-precision accuracy, seed-to-seed sd, weight movement and time only, never
    # on a claim's verdict (README: the laptop profile): 7,500 training images give 702 steps
    # per quantized run, enough for the 2-bit weights to move past 5%, with a seed sd of 0.27
    # over 5 seeds; 3 FP epochs keep full precision below saturation. Figure 4 has its own
    # runs (2,811 steps at batch 8 instead of 702 at 32), chosen on how far the input std and
    # the 2-bit step move and on time only (docs/profiles.md).
    "laptop": Profile("laptop", "finegrain", depth=8, batch_size=32, fp_epochs=3, epochs=3,
                      calib_batches=10, warmup_scale=0.1, seeds=(0, 1, 2),
                      synthetic_train=7_500, synthetic_test=5_000, dynamics_per_epoch=8,
                      expected_time="about 18 minutes on 2 idle CPU cores (estimate)",
                      figure4=Figure4Runs(epochs=3, batch_size=8)),
    "quick": Profile("quick", "cifar100", depth=32, batch_size=128, fp_epochs=60, epochs=30,
                     calib_batches=100, warmup_scale=1.0, seeds=(0, 1, 2),
                     dynamics_per_epoch=8, compile="default",
                     expected_time="about 6-9 GPU-hours on one H100 (estimate, 3 seeds)"),
    "paper": Profile("paper", "cifar100", depth=32, batch_size=128, fp_epochs=PAPER_EPOCHS,
                     epochs=PAPER_EPOCHS, calib_batches=100, warmup_scale=1.0, seeds=(0, 1, 2),
                     compile="default",
                     expected_time="about 3-6 GPU-days on one H100 (estimate, 3 seeds)"),
}


# Without a GPU the notebooks open in the profile whose numbers mean something on 2 cores;
# ``reproduce`` and CI name ``smoke`` themselves.
CPU_DEFAULT = "laptop"


def default_profile() -> str:
    """The notebooks' ``PROFILE = "auto"``: ``CPU_DEFAULT`` without a GPU, ``quick`` with one.
    ``reproduce`` always names its profile (``make reproduce`` and CI: ``smoke``)."""
    import torch

    return "quick" if torch.cuda.is_available() else CPU_DEFAULT


def get_profile(name: str) -> Profile:
    if name == "auto":
        name = default_profile()
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}")
    return PROFILES[name]


def parse_seeds(value: object) -> tuple[int, ...]:
    """``SEEDS``/``--seeds``: a count (``3`` = seeds 0, 1, 2) or a list (``"0,4,7"``,
    ``[0, 4]``)."""
    if isinstance(value, bool):
        raise ValueError(f"seeds must be a count or a list of integers, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"the number of seeds must be at least 1, got {value}")
        return tuple(range(value))
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        try:
            items = [int(x) for x in text.replace(" ", "").split(",") if x != ""]
        except ValueError:
            raise ValueError(f"seeds must be a count (3) or comma-separated integers (0,1,2), "
                             f"got {value!r}") from None
        if len(items) == 1 and "," not in text:
            return parse_seeds(items[0])
        value = items
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                for s in value):
            raise ValueError(f"seeds must be non-negative integers, got {value!r}")
        if len(set(value)) != len(value):
            raise ValueError(f"seeds must not repeat, got {value!r}")
        return tuple(value)
    raise ValueError(f"seeds must be a count or a list of integers, got {value!r}")


@dataclass
class Context:
    """Where a notebook reads and writes, and the choices that shape every run it asks for."""

    profile: Profile
    results_dir: Path
    runs_dir: Path
    data_dir: Path
    device: str = "auto"
    seeds: tuple[int, ...] = (0,)
    lsq_init: str = "lsq"
    reported: str = "top1_final"
    precision: str = "fp32"
    notes: dict = field(default_factory=dict)

    def base(self) -> dict:
        p = self.profile
        return dict(dataset=p.dataset, synthetic_train=p.synthetic_train,
                    synthetic_test=p.synthetic_test, depth=p.depth, batch_size=p.batch_size,
                    calib_batches=p.calib_batches, dynamics_per_epoch=p.dynamics_per_epoch,
                    fp_epochs=p.fp_epochs, precision=self.precision,
                    runs_dir=str(self.runs_dir), data_dir=str(self.data_dir),
                    device=self.device, compile=p.compile)

    def comparable(self) -> tuple[bool, str]:
        """Whether this context's runs are in the paper's setting, and what differs
        (``uniq.repro.comparable``: the one rule of tables, claims and the report)."""
        differences = self.profile.paper_differences(self.precision)
        return (not differences, "differs from the paper's setting: " + "; ".join(differences)
                if differences else "")

    def describe(self) -> str:
        p = self.profile
        return (f"{p.model_name} on {p.data_name}, {p.fp_epochs} FP epochs, {p.epochs} epochs "
                f"per quantized run, seeds {list(self.seeds)}, {self.precision}")


def context(profile: str = "smoke", results_dir: str | None = None, runs_dir: str = "runs",
            data_dir: str = "data", device: str = "auto", seeds: object = None,
            lsq_init: str = "lsq", reported: str = "top1_final",
            precision: str = "fp32") -> Context:
    """Resolve a notebook's parameters. Relative paths are taken from the project root (see
    ``uniq.repro.paths``), so a notebook gives the same answer from JupyterLab and from
    papermill."""
    prof = get_profile(profile)
    profile = prof.name  # "auto" resolved
    if lsq_init not in ("lsq", "mse"):
        raise ValueError(f"LSQ_INIT must be 'lsq' (LSQ's own init, the default) or 'mse', "
                         f"got {lsq_init!r}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"PRECISION must be 'fp32' (the paper) or 'bf16', got {precision!r}")
    out = resolve_path(results_dir or f"results/{profile}")
    out.mkdir(parents=True, exist_ok=True)
    return Context(prof, out, resolve_path(runs_dir), resolve_path(data_dir), device,
                   prof.seeds if seeds is None else parse_seeds(seeds), lsq_init,
                   check_reported(reported), precision)


# --- the experiments ------------------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    """One cell of Tables 4-6: a run setting (trained once per seed)."""

    key: str
    table: int
    columns: tuple[tuple[str, object], ...]
    bits: int
    method: str = "uniq"
    init: str | float = "mse"
    recipe: str = ""
    paper_top1: float = float("nan")


TABLE5_INITS = ((0.1, "0.1"), (0.2, "0.2"), ("lsq", "LSQ"), ("mse", "MSE"))
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


def experiments(ctx: Context, table: int | None = None) -> list[Experiment]:
    """The cells of Tables 4, 5 and 6 (or of one of them), in the paper's order, then Figure
    4's runs (``table`` 0)."""
    out = _table_cells(ctx) + figure4_experiments(ctx)
    return [e for e in out if table is None or e.table == table]


def _table_cells(ctx: Context) -> list[Experiment]:
    out = [Experiment("t4/fp", 4, (("method", "FP"), ("bits", "32/32")), 32,
                      paper_top1=paper_value(4, "fp", FULL_PRECISION))]
    for method, label in (("lsq", "LSQ"), ("uniq", "UniQ")):
        for bits in (4, 3, 2, 1):
            if method == "lsq" and bits == 1:
                continue  # LSQ has no binary quantizer (the paper's table has a dash)
            init = ctx.lsq_init if method == "lsq" else "mse"
            out.append(Experiment(f"t4/{method}/{bits}b", 4, (("method", label),
                                                              ("bits", f"{bits}/{bits}")),
                                  bits, method, init, paper_top1=paper_value(4, label, bits)))
    for bits in (2, 3):
        for init, label in TABLE5_INITS:
            out.append(Experiment(f"t5/{bits}b/init={str(init).lower()}", 5,
                                  (("bits", f"{bits}/{bits}"), ("init", label)), bits, "uniq",
                                  init, paper_top1=paper_value(5, f"UniQ init={label}", bits)))
    for recipe, optimizer, schedule, paper_name in TABLE6:
        r = get_recipe(recipe)
        warm = ctx.profile.warmup(r.warmup_epochs)
        out.append(Experiment(f"t6/{recipe}", 6, (
            ("optimizer", optimizer), ("schedule", schedule), ("lr", r.lr),
            ("warmup_epochs", warm)), 1, "uniq", "mse", recipe,
            paper_top1=paper_value(6, paper_name, 1)))
    return out


def experiment(ctx: Context, key: str) -> Experiment:
    for e in experiments(ctx):
        if e.key == key:
            return e
    raise ValueError(f"unknown experiment {key!r}")


def config(ctx: Context, e: Experiment, seed: int = 0) -> CifarConfig:
    """The run of one experiment and seed. Quantized runs start from the profile's
    full-precision run (seed 0; Section 5.2); the warm-up is scaled by the profile."""
    if e.bits == FULL_PRECISION:
        return CifarConfig(bits=FULL_PRECISION, epochs=ctx.profile.fp_epochs, seed=0, **ctx.base())
    cfg = CifarConfig(bits=e.bits, method=e.method, init=e.init, recipe=e.recipe,
                      warmup_scale=ctx.profile.warmup_scale, epochs=ctx.profile.epochs,
                      seed=seed, **ctx.base())
    f = ctx.profile.figure4
    if e.key.startswith("f4/") and f is not None:  # Figure 4's own, longer runs
        scale = figure4_window(ctx).scale  # the first 30 of 350 paper epochs, scaled
        cfg = replace(cfg, epochs=f.epochs, batch_size=f.batch_size,
                      fp_batch_size=ctx.profile.batch_size, warmup_scale=scale,
                      schedule_epochs=round(PAPER_EPOCHS * scale, 6))
    return cfg


def seeds_of(ctx: Context, e: Experiment) -> tuple[int, ...]:
    """The seeds an experiment runs: the full-precision start once (seed 0), Figure 4's own
    runs with the first ``Figure4Runs.seeds``, every other cell with every seed of the
    context."""
    if e.bits == FULL_PRECISION:
        return (0,)
    f = ctx.profile.figure4
    return ctx.seeds[:f.seeds] if e.key.startswith("f4/") and f is not None else ctx.seeds


def fp_config(ctx: Context) -> CifarConfig:
    return config(ctx, experiments(ctx, 4)[0])


def runs_named(ctx: Context, names: Iterable[str]) -> list[Run]:
    """The finished CIFAR runs with these directory names (as the tables' ``runs`` column)."""
    return [Run.load(ctx.runs_dir / "cifar" / name) for name in names]


def test_images(ctx: Context):
    """The full-precision run's test split, as stored (uint8, before normalisation)."""
    return cifar_splits(fp_config(ctx))[1]


def quant_config(ctx: Context, bits: int, method: str = "uniq", init: str | float | None = None,
                 recipe: str = "", seed: int = 0) -> CifarConfig:
    """A quantized run started from the profile's full-precision run (Section 5.2)."""
    if init is None:
        init = ctx.lsq_init if method == "lsq" else "mse"
    return config(ctx, Experiment("adhoc", 0, (), bits, method, init, recipe), seed)


def run(cfg: CifarConfig) -> Run:
    """A finished run (trained now if needed)."""
    return fit(cfg)


# --- planning, progress and commands ------------------------------------------------------


def _state(cfg: CifarConfig) -> str:
    state = run_state(cfg.run_dir())
    return "old-key" if state == "missing" and older_scheme_run(cfg) else state


def train_command(cfg: CifarConfig) -> str:
    """The ``python -m uniq train`` command that trains exactly this run."""
    default = CifarConfig()
    changed = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.metadata.get("cli", True)
               and getattr(cfg, f.name) != getattr(default, f.name)}
    return shlex.join(["python", "-m", "uniq", "train", *as_flags(changed)])


def distinct_runs(ctx: Context, keys: Iterable[str] | None = None
                  ) -> list[tuple[str, int, CifarConfig]]:
    """(experiment key, seed, config) for every distinct run, parents first, each once."""
    wanted = None if keys is None else set(keys)
    seen, out = set(), []
    for e in experiments(ctx):
        if wanted is not None and e.key not in wanted:
            continue
        for seed in seeds_of(ctx, e):
            cfg = config(ctx, e, seed)
            chain = [cfg]
            if cfg.bits != FULL_PRECISION:
                parent = cfg.resolved().init_from
                chain.insert(0, CifarConfig.from_dict({**parent, **_placement(ctx)}))
            for c in chain:
                d = c.run_dir()
                if d not in seen:
                    seen.add(d)
                    key = e.key if c is cfg else "t4/fp"
                    out.append((key, 0 if c is not cfg else seed, c))
    return out


def _placement(ctx: Context) -> dict:
    b = ctx.base()
    return {k: b[k] for k in ("runs_dir", "data_dir", "device")}


def plan(ctx: Context, keys: Iterable[str] | None = None) -> list[dict]:
    """One row per distinct run: experiment, seed, run directory name, state, command."""
    return [{"experiment": key, "seed": seed, "run": cfg.run_dir().name, "state": _state(cfg),
             "command": train_command(cfg)}
            for key, seed, cfg in distinct_runs(ctx, keys)]


def _seconds_per_image_epoch(ctx: Context) -> float | None:
    """The last measured training speed of this profile's model on this machine's runs."""
    rates = []
    for run in finished_runs(ctx.runs_dir, "cifar", latest=5):
        r = run.result
        if r.get("train_time_s") and r.get("train_size") and run.config.depth == ctx.profile.depth:
            rates.append(r["train_time_s"] / (r["epochs"] * r["train_size"]))
    return float(np.median(rates)) if rates else None


def ensure(ctx: Context, keys: Iterable[str], notebook: str = "this notebook") -> dict:
    """Make sure the runs of these experiments exist (every seed), saying first how many are
    needed, cached and to train, and about how long that takes; then "run i of M" for each.
    Silent when every run is cached (a notebook's later tables reuse its first one's runs).
    Returns ``{(key, seed): Run}``."""
    todo = distinct_runs(ctx, keys)
    missing = [(k, s, c) for k, s, c in todo if _state(c) != "done"]
    rate = _seconds_per_image_epoch(ctx)
    size = ctx.profile.synthetic_train if ctx.profile.dataset == "synthetic" else 50_000
    if missing:
        eta = ""
        if rate is not None:
            secs = sum(c.epochs for _, _, c in missing) * size * rate
            eta = f" (about {secs / 60:.1f} min at the last measured speed)"
        print(f"{notebook} needs {len(todo)} runs: {len(todo) - len(missing)} cached, "
              f"{len(missing)} to train{eta}. {ctx.describe()}.", flush=True)
    runs = {}
    for i, (key, seed, cfg) in enumerate(missing):
        print(f"run {i + 1} of {len(missing)}: {key} seed {seed} ({cfg.run_dir().name})",
              flush=True)
        t0 = time.time()
        fit(cfg, quiet=False)
        print(f"run {i + 1} of {len(missing)} done in {time.time() - t0:.0f}s", flush=True)
    for key, seed, cfg in todo:
        runs[(key, seed)] = Run.load(cfg.run_dir())
    return runs


# --- tables -----------------------------------------------------------------------------------


def per_seed(ctx: Context, table: int) -> pd.DataFrame:
    """Every seed's result for every cell of a table (trains what is missing)."""
    exps = experiments(ctx, table)
    runs = ensure(ctx, [e.key for e in exps], f"Table {table}")
    rows = []
    for e in exps:
        for seed in seeds_of(ctx, e):
            r = runs[(e.key, seed)]
            rows.append({"experiment": e.key, **dict(e.columns), "seed": seed,
                         "top1_final": r.result["top1_final"],
                         "top1_best": r.result["top1_best"], "paper_top1": e.paper_top1,
                         "dataset": r.result["dataset"], "precision": r.result["precision"],
                         "run": r.dir.name})
    return pd.DataFrame(rows)


SEED_COLUMNS = ("experiment", "seed", "top1_final", "top1_best", "paper_top1", "dataset",
                "precision", "run")


def summarize(seeds: pd.DataFrame, reported: str, profile: str) -> pd.DataFrame:
    """Per cell: mean, sd and n over seeds of both accuracies, the paper's value, and the
    difference (of ``reported``) with its 95% confidence interval over seeds."""

    by = ["experiment"] + [c for c in seeds.columns if c not in SEED_COLUMNS]
    other = "top1_best" if reported == "top1_final" else "top1_final"
    main = per_cell_summary(seeds, by=by, value=reported)
    alt = per_cell_summary(seeds, by=by, value=other)
    out = main.drop(columns=["mean", "sd", "paper", "diff", "diff_low", "diff_high"])
    out["top1"] = main["mean"].round(2)
    out[reported], out[f"{reported}_sd"] = main["mean"].round(2), main["sd"].round(2)
    out[other], out[f"{other}_sd"] = alt["mean"].round(2), alt["sd"].round(2)
    out["paper_top1"] = main["paper"]
    out["diff"] = main["diff"].round(2)
    out["diff_ci_low"], out["diff_ci_high"] = main["diff_low"].round(2), main["diff_high"].round(2)
    out["diff_uses"] = reported
    first = seeds.groupby(by, sort=False, dropna=False)
    out["dataset"] = first.dataset.first().to_numpy()
    out["runs"] = first.run.agg(" ".join).to_numpy()
    out["profile"] = profile
    return out


def cifar_table(ctx: Context, table: int) -> pd.DataFrame:
    seeds = per_seed(ctx, table)
    seeds.to_csv(ctx.results_dir / f"table{table}_seeds.csv", index=False)
    return summarize(seeds, ctx.reported, ctx.profile.name)


def table4(ctx: Context) -> pd.DataFrame:
    """Table 4: LSQ vs UniQ at 4/3/2/1 bits (and the FP start)."""
    return cifar_table(ctx, 4)


def table5(ctx: Context) -> pd.DataFrame:
    """Table 5: step-size init 0.1, 0.2, LSQ's heuristic and MSE (ours), at 2 and 3 bits."""
    return cifar_table(ctx, 5)


def table6(ctx: Context) -> pd.DataFrame:
    """Table 6: 1-bit ResNet under SGD/Adam, with and without constant warm-up."""
    return cifar_table(ctx, 6)


def table_title(ctx: Context, table: int) -> str:
    what = {4: "LSQ vs UniQ", 5: "step-size initialisation (UniQ)",
            6: "1-bit training schedules (UniQ)"}[table]
    p = ctx.profile
    return (f"Table {table}: {what}, {p.model_name} on {p.data_name}, top-1 % "
            f"(mean over {len(ctx.seeds)} seed(s); diff uses {ctx.reported})")


# --- figures ----------------------------------------------------------------------------------


FIGURE4 = (("f4/2b", "t4/uniq/2b", "(a) 2-bit, SGD lr 0.01"),
           ("f4/sgd-lr0.01", "t6/sgd-lr0.01", "(b) 1-bit, SGD lr 0.01, no warm-up"),
           ("f4/sgd-warmup5", "t6/sgd-warmup5", "(c) 1-bit, SGD, warm-up at 0.001"),
           ("f4/adam-lr0.004", "t6/adam-lr0.004", "(d) 1-bit, Adam lr 0.004"))
"""Figure 4's panels: (experiment key, the table cell it repeats, title)."""


@dataclass(frozen=True)
class Figure4Window:
    """The one mapping of the paper's Figure 4 onto this profile's runs, used by the figure
    and by its claims: ``scale`` run epochs per paper epoch, so the warm-up ends at
    ``warmup_end`` and the figure spans ``end`` run epochs. The claims compare the probes
    after the warm-up, in ``(warmup_end, end]``, as the paper compares its panels after it."""

    scale: float
    warmup_end: float
    end: float
    run_epochs: int

    @property
    def fits(self) -> bool:
        """Whether the runs are long enough to hold the whole window (else its claims are
        not run)."""
        return self.end <= self.run_epochs + 1e-9


def figure4_window(ctx: Context) -> Figure4Window:
    """Where the paper's 5 warm-up epochs and 30 epochs fall in this profile's Figure 4 runs:
    their own runs' length when the profile has them, else the warm-up scale of the tables."""
    f = ctx.profile.figure4
    scale = f.epochs / FIGURE4_EPOCHS if f else ctx.profile.warmup_scale
    epochs = f.epochs if f else ctx.profile.epochs
    return Figure4Window(scale, FIGURE4_WARMUP * scale, FIGURE4_EPOCHS * scale, epochs)


def figure4_experiments(ctx: Context) -> list[Experiment]:
    """Figure 4's four runs as experiments (every seed, for the claims). Without dedicated
    runs they are the table cells themselves (the same keys: trained once)."""
    cells = {e.key: e for e in _table_cells(ctx)}
    return [replace(cells[cell], key=key, table=0, columns=(("panel", title),))
            for key, cell, title in FIGURE4]


def figure4_runs(ctx: Context, seed: int | None = None) -> list[tuple[str, Run]]:
    """(title, run) of Figure 4's four panels (first seed)."""
    seed = ctx.seeds[0] if seed is None else seed
    runs = ensure(ctx, [k for k, _, _ in FIGURE4], "Figure 4")
    return [(title, runs[(key, seed)]) for key, _, title in FIGURE4]


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


def figure3_runs(ctx: Context, seed: int | None = None) -> dict[str, Run]:
    """The 2-bit LSQ and UniQ runs of Table 4 (first seed), whose weights Figure 3 shows."""
    seed = ctx.seeds[0] if seed is None else seed
    runs = ensure(ctx, ["t4/lsq/2b", "t4/uniq/2b"], "Figure 3")
    return {"LSQ": runs[("t4/lsq/2b", seed)], "UniQ": runs[("t4/uniq/2b", seed)]}


# --- measurements for the claims ------------------------------------------------------------


MIN_MOVED = 0.05
"""Relative distance ``||W - W0|| / ||W0||`` below which trained weights count as not moved
from their full-precision start: a skewness claim on them is inconclusive (a project choice;
the paper trains 350 epochs, where the weights move far more)."""


def sqnr_gap_after_warmup(dynamics: pd.DataFrame, layer: str,
                          window: Figure4Window) -> float | None:
    """Mean of (optimal SQNR - measured SQNR) in dB for one activation quantizer over the
    probes after the paper's warm-up and within its 30 epochs (``window``: Figure 4's
    mapping). None when the run cannot hold the window or has no probe in it."""
    if not window.fits:
        return None
    d = dynamics[(dynamics.layer == layer) & (dynamics.epoch_float > window.warmup_end)
                 & (dynamics.epoch_float <= window.end)]
    return float((d.optimal_sqnr_db - d.sqnr_db).mean()) if len(d) else None


def measurements(ctx: Context, train: bool = False) -> tuple[pd.DataFrame, dict]:
    """The long table the claims are computed from (experiment, seed, metric, value, run), and
    the commands that train what is missing (``{experiment: [commands]}``)."""
    from scipy.stats import skew

    rows, missing = [], {}
    if train:
        ensure(ctx, [e.key for e in experiments(ctx)], "The claims")
    layer_cache: dict[str, list[str]] = {}
    for e in experiments(ctx):
        for seed in seeds_of(ctx, e):
            cfg = config(ctx, e, seed)
            if _state(cfg) != "done":
                missing.setdefault(e.key, []).append(train_command(cfg))
                continue
            r = Run.load(cfg.run_dir())
            base = {"experiment": e.key, "seed": seed, "run": r.dir.name}
            for metric in ("top1_final", "top1_best"):
                rows.append({**base, "metric": metric, "value": r.result[metric]})
            if e.key in ("t4/lsq/2b", "t4/uniq/2b"):
                model = r.model()
                layers = layer_cache.setdefault("f3", figure3_layers(model))
                state = model.state_dict()
                start = Run.load(fp_config(ctx).run_dir()).state_dict()  # their own FP start
                for tag, name in zip("AB", layers, strict=False):
                    w = state[f"{name}.weight"].double().flatten().numpy()
                    w0 = start[f"{name}.weight"].double().flatten().numpy()
                    change = float(skew(w) - skew(w0))
                    for metric, value in (
                            ("weight_skew", float(skew(w))), ("weight_skew_change", change),
                            ("weight_abs_skew_change", abs(change)),
                            ("weight_moved", float(np.linalg.norm(w - w0) / np.linalg.norm(w0)))):
                        rows.append({**base, "metric": f"{metric}:{tag}", "value": value})
            if e.key.startswith("f4/"):
                dyn = r.dynamics()
                if not dyn.empty:
                    layer = layer_cache.setdefault("f4", [figure4_layer(r.model())])[0]
                    gap = sqnr_gap_after_warmup(dyn, layer, figure4_window(ctx))
                    if gap is not None:  # a run too short for the window: "not run"
                        rows.append({**base, "metric": "sqnr_gap_after_warmup", "value": gap})
    cols = ["experiment", "seed", "metric", "value", "run"]
    return pd.DataFrame(rows, columns=cols), missing


def imagenet_demo(ctx: Context) -> pd.DataFrame:
    """The ImageNet path offline: each architecture converted, calibrated and trained for one
    epoch on a generated ImageFolder through the real loaders and engine, and the 1-bit
    ResNet-18 started from the 2-bit one (weights only, steps re-initialised). One row per run
    with the number of weight levels its 1-bit layers really have."""

    # Its own folders: demonstration runs on generated images never enter Tables 2-3.
    demo = ctx.runs_dir / "imagenet-demo"
    data = generated_folder(demo / "data")
    rows = []
    for arch, bits in (("preresnet18", 2), ("preresnet18", 1), ("preresnet34", 2),
                       ("mobilenetv2_w1", 2)):
        cfg = demo_config(arch, bits, data, demo, device=ctx.device)
        t0 = time.time()
        r = fit(cfg, quiet=True)
        model = r.model()
        levels = [int(q(model.get_submodule(n.rsplit(".", 1)[0]).weight).detach()
                      .reshape(q.step.shape[0] if q.step.dim() else 1, -1)[0].unique().numel())
                  for n, q in quantizers(model) if n.endswith("weight_quantizer") and q.bits == 1]
        resolved = cfg.resolved()
        rows.append({"arch": arch, "bits": bits, "recipe": resolved.recipe,
                     "starts_from": "the 2-bit run" if resolved.init_from else "random weights",
                     "steps": r.result["steps"], "train_loss": round(r.result[
                         "train_loss_final"], 3), "weight_levels_1bit_layers":
                     sorted(set(levels)) if levels else "-",
                     "seconds": round(time.time() - t0, 1), "data": "generated", "run": r.dir.name})
    return pd.DataFrame(rows)


def unmoved(values: pd.DataFrame) -> dict[tuple[str, str], tuple[str, str]]:
    """Figure 3's experiments whose weights barely left their FP start (mean ``weight_moved``
    below :data:`MIN_MOVED`): a skewness claim on them cannot be decided."""
    out = {}
    moved = values[values.metric.str.startswith("weight_moved:")]
    for (key, metric), part in moved.groupby(["experiment", "metric"]):
        layer = metric.split(":", 1)[1]
        if part.value.mean() < MIN_MOVED:
            out[(key, f"weight_*:{layer}")] = ("weights did not move", (
                f"{key} layer {layer} moved {100 * part.value.mean():.1f}% from its "
                f"full-precision start (under {100 * MIN_MOVED:g}%): its skewness says nothing "
                "about training"))
    return out


def claims_table(ctx: Context, train: bool = False) -> pd.DataFrame:
    """Every claim of ``data/claims.csv`` with its effect, 95% interval and verdict. Runs are
    pooled only when their configs differ in the seed alone, and "comparable to the paper" is
    decided by ``uniq.repro.comparable`` for each experiment's runs."""
    values, missing = measurements(ctx, train)
    comparability = {e.key: comparable_to_paper(
        [config(ctx, e, s) for s in seeds_of(ctx, e)])
        for e in experiments(ctx)}
    for key in ("t2/resnet18/uniq/4b", "t2/resnet18/uniq/3b", "t2/resnet18/uniq/2b",
                "t2/resnet18/lsq/4b", "t2/resnet18/lsq/3b", "t2/resnet18/lsq/2b"):
        missing.setdefault(key, ["python -m uniq imagenet --arch preresnet18 --bits "
                                 f"{key[-2]} --method {key.split('/')[2]} --data-dir <imagenet>"])
    imagenet, imagenet_comparability, incompatible = imagenet_measurements(ctx)
    for key in set(imagenet.experiment):
        missing.pop(key, None)
    comparability.update(imagenet_comparability)
    values = pd.concat([values, imagenet], ignore_index=True)
    return evaluate_claims(values, missing=missing, profile=ctx.profile.name,
                           comparability=comparability, incompatible=incompatible,
                           inconclusive=unmoved(values))


def imagenet_measurements(ctx: Context) -> tuple[pd.DataFrame, dict, dict]:
    """Finished ImageNet ResNet-18 runs as claim measurements (``t2/resnet18/<method>/<b>b``),
    each experiment's comparability to the paper, and the experiments whose runs differ in more
    than the seed (``{experiment: what differs}``: not pooled, "not comparable")."""
    groups: dict[str, list[Run]] = {}
    for run in finished_runs(ctx.runs_dir, "imagenet"):
        c = run.config
        if c.arch == "preresnet18" and c.bits != FULL_PRECISION:
            groups.setdefault(f"t2/resnet18/{c.method}/{c.bits}b", []).append(run)
    rows, comparability, incompatible = [], {}, {}
    for key, runs in groups.items():
        configs = [r.config for r in runs]
        comparability[key] = comparable_to_paper(configs)
        differs = setting_differences(configs)
        if differs:
            incompatible[key] = ("runs of different settings, not pooled as seeds ("
                                 + "; ".join(differs) + ")")
        for i, r in enumerate(runs):
            for metric in ("top1_final", "top1_best"):
                rows.append({"experiment": key, "seed": i if differs else r.config.seed,
                             "metric": metric, "value": r.result[metric], "run": r.dir.name})
    return (pd.DataFrame(rows, columns=["experiment", "seed", "metric", "value", "run"]),
            comparability, incompatible)


# --- writing results ------------------------------------------------------------------------


def save_table(ctx: Context, df: pd.DataFrame, name: str, title: str,
               note: str | None = None) -> Path:
    """Write ``<name>.csv`` and ``<name>.md`` into the results. The Markdown starts with the
    profile's caveat (or ``note``, for tables that do not depend on the profile)."""
    df = df.copy()
    df.insert(0, "profile", df.pop("profile") if "profile" in df else ctx.profile.name)
    comparable, differs = ctx.comparable()
    if ("top1" in df or "top1_final" in df) and "comparable_to_paper" not in df:
        df["comparable_to_paper"] = comparable
        df["precision"] = ctx.precision
    csv = ctx.results_dir / f"{name}.csv"
    df.to_csv(csv, index=False)
    caveat = note or ctx.profile.caveat() + (f" ({differs})" if differs else "")
    md = [f"# {title}", "", f"> {caveat}", "",
          df.to_markdown(index=False), ""]
    (ctx.results_dir / f"{name}.md").write_text("\n".join(md))
    return csv


def save_figure(ctx: Context, fig, name: str) -> Path:
    """Write ``<name>.png`` into the results and show that same image once in the notebook
    (whatever the matplotlib backend: see ``uniq.repro.figures.show``)."""

    path = ctx.results_dir / f"{name}.png"
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    show(fig, path)
    return path


def record(ctx: Context, notebook: str, **facts) -> None:
    """Add what a notebook used (runs, dataset, seeds) to ``notebooks.json`` in the results,
    which the runner folds into provenance.json."""
    path = ctx.results_dir / "notebooks.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[notebook] = {"profile": asdict(ctx.profile), "seeds": list(ctx.seeds),
                      "precision": ctx.precision, "lsq_init": ctx.lsq_init,
                      "reported": ctx.reported, **facts}
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
        value = ctx.reported if ctx.reported in t else "top1"
        t = t[t[value].notna()] if value in t else t.iloc[0:0]
        if t.empty:
            continue
        parts.append(pd.DataFrame({"table": table, "setting": _settings(t, cols),
                                   "value": t[value], "paper": t.paper_top1,
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
    col = ctx.reported if ctx.reported in t else "top1"
    t = t[(t.model == model) & (t.method == "UniQ") & t[col].notna()]
    return t[["bits", col]].rename(columns={col: "top1"})


# --- notebook 7: the conversion policy of the ImageNet models, offline -----------------------


def policy_summary(bits_list=(4, 3, 2, 1)) -> pd.DataFrame:
    """For each architecture and bit width: how many layers get which weight bits."""
    rows = []
    for arch in IMAGENET_MODELS:
        base = adaptive_pooling(imagenet_model(arch))
        granularity = ImageNetConfig(arch=arch).default_granularity()
        for bits in bits_list:
            r = conversion_report(quantize_model(base, bits, "uniq", granularity,
                                                 example_input=torch.randn(1, 3, 64, 64)))
            rows.append({"arch": arch, "bits": bits, "layers": len(r),
                         "at_bits": int((r.weight_bits == bits).sum()),
                         "at_8": int(((r.weight_bits == 8) & (bits != 8)).sum()),
                         "full_precision": int((r.weight_bits == FULL_PRECISION).sum()),
                         "signed_inputs": int(r.signed_input.fillna(False).sum()),
                         "granularity": granularity})
    return pd.DataFrame(rows)


# --- Tables 2 and 3 from finished ImageNet runs ------------------------------------------


def imagenet_results(runs_dir: str | Path = "runs") -> pd.DataFrame:
    """Every finished ImageNet run under ``<runs_dir>/imagenet``, one row each."""

    rows = []
    for run in finished_runs(resolve_path(runs_dir), "imagenet"):
        r, arch = run.result, run.config.arch
        rows.append({"model": PAPER_NAMES.get(arch, arch),
                     "method": "fp" if r["bits"] == FULL_PRECISION else
                     {"uniq": "UniQ", "lsq": "LSQ"}[r["method"]],
                     "bits": r["bits"], "top1_final": r["top1_final"],
                     "top1_best": r["top1_best"], "epochs": r["epochs"],
                     "precision": r.get("precision", "fp32"), "run": r["run"]})
    cols = ["model", "method", "bits", "top1_final", "top1_best", "epochs", "precision", "run"]
    return pd.DataFrame(rows, columns=cols)


def _imagenet_comparable(runs_dir: str | Path, run: str) -> bool:
    """``uniq.repro.comparable``'s verdict on one ImageNet run (the rule of every table and
    claim)."""
    return comparable_to_paper([Run.load(resolve_path(runs_dir) / "imagenet" / run).config])[0]


def imagenet_tables(runs_dir: str | Path = "runs", reported: str = "top1_final"
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tables 2 and 3: the paper's numbers with reproduced top-1 where a run exists."""
    done = imagenet_results(runs_dir)
    out = []
    for table in (2, 3):
        p = paper_tables()
        t = p[p.table == table].rename(columns={"value": "paper_top1", "weight_bits": "bits"})
        t = t[["model", "method", "bits", "act_bits", "paper_top1", "note"]].copy()
        for col in REPORTED:
            t[col] = float("nan")
        t["run"] = ""
        t["comparable_to_paper"] = None
        for i, r in t.iterrows():
            hit = done[(done.model == r.model) & (done.method == r.method) & (done.bits == r.bits)]
            if len(hit):
                for col in REPORTED:
                    t.loc[i, col] = float(hit[col].iloc[-1])
                t.loc[i, "run"] = hit.run.iloc[-1]
                t.loc[i, "comparable_to_paper"] = _imagenet_comparable(runs_dir, hit.run.iloc[-1])
        t = with_diff(t, reported)
        t["top1"] = t[reported]
        t["dataset"] = "imagenet"
        out.append(t.reset_index(drop=True))
    return out[0], out[1]


# --- reading guides: what the notebooks print under their tables and figures -----------------


def describe_setting(profile: Profile) -> str:
    """What a profile trains, in words: model, data set and schedule."""
    data = {"synthetic": f"generated data ({profile.synthetic_train:,} training images)",
            "finegrain": f"generated fine-detail data ({profile.synthetic_train:,} training "
                         "images of 16x16 pixels, 20 classes)"}.get(profile.dataset, "CIFAR-100")
    return (f"a ResNet-{profile.depth} on {data}, {profile.fp_epochs} full-precision epochs and "
            f"{profile.epochs} epoch{'s' if profile.epochs != 1 else ''} per quantized run")


def model_and_data(profile: Profile) -> str:
    """Short form for titles: ``ResNet-32 on CIFAR-100`` or ``ResNet-8 on generated data``."""
    data = {"synthetic": "generated data", "finegrain": "generated fine-detail data"}.get(
        profile.dataset, "CIFAR-100")
    return f"ResNet-{profile.depth} on {data}"


def how_to_compare(profile: Profile) -> str:
    """What a reader may compare with the paper in this profile."""
    if profile.dataset == "synthetic":
        return (f"This run is {describe_setting(profile)}: it shows that every step works, "
                "not what the paper measured. Compare directions and shapes, not the numbers, "
                "and expect even the directions to be noisy: a run this short changes the "
                "network little.")
    if profile.dataset == "finegrain":
        return (f"This run is {describe_setting(profile)}: a task small enough for a laptop "
                "and hard enough that bit width matters, not CIFAR-100. Compare directions "
                "(which rows are ahead, and whether the interval excludes zero) with the "
                "paper's, not the values.")
    if not profile.comparable:
        return (f"This run is {describe_setting(profile)} instead of 350: expect every number "
                "below the paper's, and compare the ordering of the rows with the paper's.")
    return (f"This run is {describe_setting(profile)}: the paper's setting. Differences of a "
            "few tenths of a point are run-to-run noise (the paper reports one run each).")


def about_the_data(profile: Profile) -> str:
    """Markdown for notebook 3: what this profile's data are and why."""
    if profile.dataset == "finegrain":
        return (
            "**The data (laptop profile).** No real image set small enough for a laptop ships "
            "offline with this project's dependencies, so the images are generated "
            "(`uniq.repro.data.finegrain`, the same for every seed): 20 classes in 10 pairs, "
            f"{profile.synthetic_train:,} training and {profile.synthetic_test:,} test images "
            "of 16x16 pixels. The two classes of a pair share a smooth colour template and "
            "differ only in a fine pattern of 2x2-pixel cells, under strong pixel noise, "
            "random shifts and contrast. Colour tells the pair; only the fine pattern tells "
            "the class, and fine detail is what coarse quantization loses, so the bit width "
            "shows in the accuracy.\n\n"
            "**How the profile was chosen.** Its size (images, batch, epochs, seeds) was tuned "
            "on these things only: full-precision top-1 between 60% and 90% (neither saturated "
            "nor chance), the seed-to-seed standard deviation of top-1 (pooled over Table 4's "
            "cells; notebook 4 prints it), how far training moves the 2-bit weights from their "
            "full-precision start (notebook 4), how far Figure 4's steps move, and time (all "
            "nine notebooks in at most 20 minutes on 2 CPU cores). It was fixed before any "
            "claim's verdict was looked at, so that it can show an effect, never to make a "
            "claim hold.")
    if profile.dataset == "synthetic":
        return ("**The data (smoke profile).** Generated stand-ins for CIFAR-100 "
                f"(`uniq.repro.data.synthetic_cifar`): {profile.synthetic_train:,} training images "
                "of "
                "100 smooth colour templates under noise. The profile exists to run every step "
                "in minutes; its numbers show that the pipeline works, not the paper's effects.")
    return ("**The data.** CIFAR-100: 50,000 training and 10,000 test images of 32x32 pixels "
            "in 100 classes, read from `data/` (checked against the official checksums).")


COLUMN_MEANINGS = {
    "experiment": "the cell's key (the claims file names cells by it)",
    "n": "how many seeds the cell has (one run per seed)",
    "top1": "the reproduced top-1 accuracy (%), the mean over seeds of the accuracy `diff` "
            "compares",
    "top1_final": "top-1 (%) after the last epoch, mean over seeds",
    "top1_final_sd": "its standard deviation over seeds (empty with one seed)",
    "top1_best": "the best top-1 (%) over all epochs, mean over seeds: what the authors' code "
                 "reports (an optimistic choice: it picks the epoch by the test set)",
    "top1_best_sd": "its standard deviation over seeds",
    "paper_top1": "the number printed in the paper for the same setting (empty where the paper "
                  "has none)",
    "diff": "reproduced minus paper, in points; negative means below the paper",
    "diff_ci_low": "lower end of the 95% confidence interval of `diff` over seeds (empty with "
                   "one seed)",
    "diff_ci_high": "upper end of that interval: if it lies below 0, the cell is below the "
                    "paper beyond seed noise",
    "diff_uses": "which accuracy `diff` compares (`top1_final` unless REPORTED=top1_best)",
    "comparable_to_paper": "True only when the profile is the paper's setting (real CIFAR-100, "
                           "ResNet-32, 350 epochs); otherwise `diff` is not a verdict",
    "run": "the folder under `runs/` with the run's config, metrics and checkpoint",
    "runs": "the run folders (one per seed) under `runs/cifar/`",
    "precision": "the arithmetic the runs used (fp32 is the paper's)",
    "dataset": "the data the run actually used",
    "profile": "the reproduction profile that produced the row",
}


def column_guide(df: pd.DataFrame) -> str:
    """Markdown: what each result column of ``df`` means (only the columns it has)."""
    lines = [f"- `{c}`: {COLUMN_MEANINGS[c]}" for c in COLUMN_MEANINGS if c in df.columns]
    return "**The columns.**\n" + "\n".join(lines)
