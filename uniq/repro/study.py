"""The paper's CIFAR-100 experiments as data: profiles, the distinct runs behind Tables 4-6 and
Figures 3-4 (with seeds), and writers that put every table next to the paper's numbers.

Notebooks call these functions; they never build configs or loops themselves. Every run goes
through ``uniq.repro.train.fit`` with a fully resolved config, so a run asked for by two tables, two
notebooks or two processes is trained once.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .claims import chance_holds, evaluate_claims, per_cell_summary  # noqa: F401 - chance_holds: notebook 8
from .comparable import comparable_to_paper, paper_differences, setting_differences
from .config import FULL_PRECISION, CifarConfig, ImageNetConfig  # noqa: F401 - ImageNetConfig: notebook 7
from .data import make_loader
from .export import load_run_batch  # noqa: F401 - notebook 9
from .figures import DPI, show
from .jobs import parse_jobs, resolve_jobs, run_args, train_all
from .paper import (  # noqa: F401 - table1: notebook 2
    PAPER_EPOCHS,
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
from .runs import (
    CorruptFile,
    Run,
    finished_runs,
    older_scheme_run,
    read_json,
    run_state,
    write_atomic,
    write_json_atomic,
    write_text_atomic,
)
from .tasks import cifar_splits, demo_config, generated_folder  # noqa: F401 - demo_*: notebook 7
from .train import fit

CIFAR_EPOCHS = PAPER_EPOCHS["cifar"]


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
    threads: int = 0
    """CPU threads of each run (0: PyTorch's default, all cores). Fixed for the CPU profiles:
    another count rounds float sums differently, and the tables must not depend on how many
    runs train at once (``uniq.repro.jobs``)."""
    figure4: Figure4Runs | None = None

    @property
    def comparable(self) -> bool:
        """Whether this profile's default runs are in the paper's setting (its caveat). Tables,
        claims and the report decide on the runs they show (``Context.comparable``)."""
        return not self.paper_differences()

    def paper_differences(self, precision: str = "fp32") -> list[str]:
        """What this profile's default runs change from the paper's setting (empty: none)."""
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
    def train_images(self) -> int:
        """Training images per epoch of this profile's runs (CIFAR-100's 50,000, or the
        generated set's own size)."""
        return 50_000 if self.dataset == "cifar100" else self.synthetic_train

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
                    "Bit widths far apart separate here; differences between methods are "
                    f"mostly smaller than {len(self.seeds)} seeds resolve (the summary gives "
                    "the detectable effect). These numbers and their verdicts are NOT "
                    "comparable to the paper's.")
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
                     expected_time="about 4 minutes on 2 idle CPU cores", threads=1),
    # Chosen on full-precision accuracy, seed-to-seed sd, weight movement and time only, never
    # on a claim's verdict (README: the laptop profile): 7,500 training images give 702 steps
    # per quantized run, enough for the 2-bit weights to move past 5%, with a seed sd of 0.27
    # over 5 seeds; 3 FP epochs keep full precision below saturation. Figure 4 has its own
    # runs (2,811 steps at batch 8 instead of 702 at 32), chosen on how far the input std and
    # the 2-bit step move and on time only (docs/profiles.md).
    "laptop": Profile("laptop", "finegrain", depth=8, batch_size=32, fp_epochs=3, epochs=3,
                      calib_batches=10, warmup_scale=0.1, seeds=(0, 1, 2),
                      synthetic_train=7_500, synthetic_test=5_000, dynamics_per_epoch=8,
                      expected_time="about 14 minutes on 2 idle CPU cores (22 with --jobs 1)",
                      threads=1, figure4=Figure4Runs(epochs=3, batch_size=8)),
    "quick": Profile("quick", "cifar100", depth=32, batch_size=128, fp_epochs=60, epochs=30,
                     calib_batches=100, warmup_scale=1.0, seeds=(0, 1, 2),
                     dynamics_per_epoch=8, compile="default",
                     expected_time="about 6-9 GPU-hours on one H100 (estimate, 3 seeds)"),
    "paper": Profile("paper", "cifar100", depth=32, batch_size=128, fp_epochs=CIFAR_EPOCHS,
                     epochs=CIFAR_EPOCHS, calib_batches=100, warmup_scale=1.0, seeds=(0, 1, 2),
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
    jobs: int | str = 1
    """How many runs train at once (``uniq.repro.jobs``): a number, or "auto"."""

    def base(self) -> dict:
        p = self.profile
        return dict(dataset=p.dataset, synthetic_train=p.synthetic_train,
                    synthetic_test=p.synthetic_test, depth=p.depth, batch_size=p.batch_size,
                    calib_batches=p.calib_batches, dynamics_per_epoch=p.dynamics_per_epoch,
                    fp_epochs=p.fp_epochs, precision=self.precision,
                    runs_dir=str(self.runs_dir), data_dir=str(self.data_dir),
                    device=self.device, compile=p.compile, threads=p.threads)

    def comparable(self, table: int | None = None) -> tuple[bool, str]:
        """Whether this context's runs (of every table, or of one) are in the paper's
        setting, and what differs (``uniq.repro.comparable``: the one rule of tables, claims and the
        report), decided on the runs' own configs: precision, LSQ_INIT and seeds included."""
        return comparable_to_paper(config(self, e, s) for e in experiments(self, table)
                                   for s in seeds_of(self, e))

    def describe(self) -> str:
        p = self.profile
        return (f"{p.model_name} on {p.data_name}, {p.fp_epochs} FP epochs, {p.epochs} epochs "
                f"per quantized run, seeds {list(self.seeds)}, {self.precision}")


def context(parameters: dict | None = None, /, *, profile: str = "smoke",
            results_dir: str | None = None, runs_dir: str = "runs", data_dir: str = "data",
            device: str = "auto", seeds: object = None, lsq_init: str = "lsq",
            reported: str = "top1_final", precision: str = "fp32", jobs: object = 1) -> Context:
    """Resolve a notebook's parameters, given as keywords (``profile="laptop"``) or as one dict
    of the parameters cell's names (``{"PROFILE": "laptop", "SEEDS": 3}``, case-insensitive).
    Relative paths are taken from the project root (see ``uniq.repro.paths``), so a notebook gives
    the same answer from JupyterLab and from papermill."""
    if parameters is not None and not isinstance(parameters, dict):
        raise TypeError(f"context takes keyword arguments (profile={parameters!r}, ...) or one "
                        "dict of parameters")
    if parameters is not None:
        known = {"profile", "results_dir", "runs_dir", "data_dir", "device", "seeds",
                 "lsq_init", "reported", "precision", "jobs"}
        given = {str(k).lower(): v for k, v in parameters.items()}
        unknown = sorted(str(k) for k in parameters if str(k).lower() not in known)
        if unknown:
            raise ValueError(f"unknown notebook parameter(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        return context(**given)
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
                   check_reported(reported), precision, jobs=parse_jobs(jobs))


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
                      schedule_epochs=round(CIFAR_EPOCHS * scale, 6))
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


def train_batches(ctx: Context, seed: int = 0):
    """The profile's training batches, normalised and augmented as ``fit`` feeds them to the
    quantized runs (on the CPU): for training a network by hand in a notebook."""
    cfg = fp_config(ctx)
    return make_loader(cifar_splits(cfg)[0], cfg.batch_size, True, "cpu", cfg.loader, seed,
                       cfg.workers)


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
    return shlex.join(["python", "-m", "uniq", *run_args(cfg)])


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
    return {k: b[k] for k in ("runs_dir", "data_dir", "device", "threads")}


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
    size = ctx.profile.train_images
    if missing:
        eta = ""
        if rate is not None:
            secs = sum(c.epochs for _, _, c in missing) * size * rate
            eta = f" (about {secs / 60:.1f} min at the last measured speed)"
        print(f"{notebook} needs {len(todo)} runs: {len(todo) - len(missing)} cached, "
              f"{len(missing)} to train{eta}. {ctx.describe()}.", flush=True)
    runs = {}
    if resolve_jobs(ctx.jobs, [c for _, _, c in missing]) > 1:  # several processes at once
        train_all([c for _, _, c in missing], ctx.jobs,
                  names={c.run_dir(): f"{k} seed {s}" for k, s, c in missing})
        missing = []
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
        if "runs" in df:  # decided on each row's own runs
            verdicts = [comparable_to_paper(r.config for r in runs_named(ctx, str(names).split()))
                        for names in df["runs"]]
            df["comparable_to_paper"] = [v[0] for v in verdicts]
            notes = list(dict.fromkeys(v[1] for v in verdicts if v[1]))
            comparable, differs = not notes, "; ".join(notes)
        else:
            df["comparable_to_paper"] = comparable
        df["precision"] = ctx.precision
    csv = ctx.results_dir / f"{name}.csv"
    write_text_atomic(df.to_csv(index=False), csv)
    caveat = note or ctx.profile.caveat() + (f" ({differs})" if differs else "")
    md = [f"# {title}", "", f"> {caveat}", "",
          df.to_markdown(index=False), ""]
    write_text_atomic("\n".join(md), ctx.results_dir / f"{name}.md")
    return csv


def load_table(ctx: Context, name: str) -> pd.DataFrame | None:
    """A table an earlier notebook wrote with :func:`save_table` (None if it has not run)."""
    path = ctx.results_dir / f"{name}.csv"
    return pd.read_csv(path) if path.exists() else None


def save_figure(ctx: Context, fig, name: str) -> Path:
    """Write ``<name>.png`` into the results and show that same image once in the notebook
    (whatever the matplotlib backend: see ``uniq.repro.figures.show``)."""

    path = ctx.results_dir / f"{name}.png"
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight"))
    show(fig, path)
    return path


def record(ctx: Context, notebook: str, **facts) -> None:
    """Add what a notebook used (runs, dataset, seeds) to ``notebooks.json`` in the results,
    which the runner folds into provenance.json."""
    path = ctx.results_dir / "notebooks.json"
    try:
        data = read_json(path) if path.exists() else {}
    except CorruptFile as err:
        data = None
        print(f"warning: {err}; it is started afresh with this notebook's record (the others "
              "come back when they run again)")
    data = data if isinstance(data, dict) else {}
    data[notebook] = {"profile": asdict(ctx.profile), "seeds": list(ctx.seeds),
                      "precision": ctx.precision, "lsq_init": ctx.lsq_init,
                      "reported": ctx.reported, **facts}
    write_json_atomic(data, path)


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
