""""Comparable to the paper" is one strict rule (uniq.repro.comparable): every field the paper fixes
is compared, each departure is named, and tables, claims and the reproduction's provenance
decide on the runs they show."""

import pytest

import uniq.repro.study as X
from uniq.repro.comparable import comparable_to_paper, paper_differences
from uniq.repro.config import CifarConfig, ImageNetConfig

PAPER_CIFAR = dict(bits=2)  # every other field at its default: the paper's setting


def _imagenet_folder(root, classes):
    for c in range(classes):
        (root / "train" / f"n{c:08d}").mkdir(parents=True)
    (root / "val").mkdir()
    return root


@pytest.mark.parametrize("profile", ["paper"])
def test_every_cell_of_the_paper_profile_is_the_papers_setting(tmp_path, profile):
    ctx = X.context(profile=profile, results_dir=str(tmp_path / "res"))
    for e in X.experiments(ctx):
        for seed in X.seeds_of(ctx, e):
            assert paper_differences(X.config(ctx, e, seed)) == [], e.key


# (field changed, the word the note must name)
CIFAR_DEPARTURES = [
    (dict(lr=0.05), "lr 0.05"),
    (dict(weight_decay=0.0), "weight decay 0"),
    (dict(weight_granularity="channel"), "weight granularity channel"),
    (dict(first_last_weight_granularity="channel"), "first/last weight granularity"),
    (dict(grad_scale=False), "grad_scale"),
    (dict(recipe="adam-lr0.001"), "recipe adam-lr0.001"),
    (dict(warmup_epochs=2.0), "warm-up 2"),
    (dict(precision="bf16"), "precision bf16"),
    (dict(dataset="synthetic"), "dataset synthetic"),
    (dict(depth=20), "depth 20"),
    (dict(epochs=30), "epochs 30"),
    (dict(batch_size=64), "batch_size 64"),
    (dict(calib_batches=10), "calib_batches 10"),
    (dict(first_last_bits=4), "first_last_bits 4"),
    (dict(data_fraction=0.5), "data_fraction 0.5"),
    (dict(fp_epochs=30), "parent run: epochs 30"),
    (dict(bits=4, init=0.1), "init 0.1"),  # Table 5's inits are at 2 and 3 bits only
    (dict(init=0.1, init_scope="all"), "init scope all"),
    (dict(method="lsq", init="mse"), "init mse for LSQ"),  # LSQ_INIT=mse on Table 4
    (dict(method="lsq", init="lsq", init_scope="low-bit"), "init scope low-bit"),
]


@pytest.mark.parametrize("change,named", CIFAR_DEPARTURES, ids=[n for _, n in CIFAR_DEPARTURES])
def test_each_cifar_departure_is_named(change, named):
    cfg = CifarConfig(**{**PAPER_CIFAR, **change})
    differences = paper_differences(cfg)
    assert any(named in d for d in differences), differences
    ok, note = comparable_to_paper([CifarConfig(**PAPER_CIFAR), cfg])
    assert not ok and named in note


def test_the_papers_own_variants_stay_comparable():
    for change in (dict(init=0.1), dict(bits=3, init="lsq"), dict(method="lsq", init="lsq"),
                   dict(bits=1, recipe="sgd-warmup10"), dict(bits=1),
                   dict(first_last_weight_granularity="tensor"), dict(seed=4, fp_seed=2),
                   dict(device="cpu", workers=0, runs_dir="elsewhere")):
        assert paper_differences(CifarConfig(**{**PAPER_CIFAR, **change})) == [], change


def test_a_1bit_schedule_other_than_table6_is_named():
    cfg = CifarConfig(bits=1, recipe="adam-lr0.001", init=0.1)
    assert any("recipe adam-lr0.001" in d for d in paper_differences(cfg))


def test_init_from_run_is_not_the_papers_start(tmp_path):
    start = tmp_path / "start.pt"
    start.write_bytes(b"weights")
    cfg = CifarConfig(bits=2, init_from_run=str(start))
    assert any("--init-from-run" in d for d in paper_differences(cfg))


@pytest.fixture
def imagenet_1000(tmp_path):
    return _imagenet_folder(tmp_path / "full", 1000)


def test_imagenet_class_count(tmp_path, imagenet_1000):
    assert paper_differences(ImageNetConfig(bits=4, data_dir=str(imagenet_1000))) == []
    subset = _imagenet_folder(tmp_path / "subset", 100)
    assert any("classes 100 (paper 1000)" in d
               for d in paper_differences(ImageNetConfig(bits=4, data_dir=str(subset))))
    missing = ImageNetConfig(bits=4, data_dir=str(tmp_path / "none"))
    assert any("classes unknown" in d for d in paper_differences(missing))


@pytest.mark.parametrize("change,named", [
    (dict(weight_decay=0.0), "weight decay 0"), (dict(weight_granularity="tensor"),
                                                 "weight granularity tensor"),
    (dict(pretrained="none"), "pretrained none"), (dict(image_size=128), "image_size 128"),
    (dict(epochs=30), "epochs 30"), (dict(init=0.2), "init 0.2"),
    (dict(lr=0.1), "lr 0.1"), (dict(grad_scale=False), "grad_scale")])
def test_each_imagenet_departure_is_named(imagenet_1000, change, named):
    cfg = ImageNetConfig(**{"bits": 4, "data_dir": str(imagenet_1000), **change})
    assert any(named in d for d in paper_differences(cfg)), paper_differences(cfg)


def test_precision_reaches_the_reproductions_provenance(tmp_path):
    from uniq.repro.reproduce import paper_comparison

    out = tmp_path / "res"
    assert paper_comparison("paper", out, {})["comparable_to_paper"] is True
    bf16 = paper_comparison("paper", out, {"PRECISION": "bf16"})
    assert bf16["comparable_to_paper"] is False
    assert bf16["differs_from_paper"] == ["precision bf16 (paper fp32)"]
    lsq = paper_comparison("paper", out, {"LSQ_INIT": "mse"})
    assert not lsq["comparable_to_paper"] and "LSQ" in lsq["differs_from_paper"][0]


def test_each_profile_counts_its_own_training_images():
    assert X.PROFILES["laptop"].train_images == 7_500
    assert X.PROFILES["smoke"].train_images == X.PROFILES["smoke"].synthetic_train
    assert X.PROFILES["quick"].train_images == 50_000


def test_the_laptop_caveat_claims_no_separation_of_methods():
    text = X.PROFILES["laptop"].caveat()
    assert "methods separate" not in text and "NOT comparable" in text
    assert "verdicts" in text
