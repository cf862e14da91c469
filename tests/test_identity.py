"""A run's key names exactly one computation: inputs that change what a run computes give two
keys (two runs), flags that cannot change it give one (no wasted retraining)."""

import dataclasses

import pytest
import torch

from uniq.repro.config import CifarConfig, ImageNetConfig

CIFAR = dict(bits=2, dataset="synthetic", depth=8, epochs=1, fp_epochs=1)


def _cifar(**kw):
    return CifarConfig(**{**CIFAR, **kw})


# --- different computations: two keys ---------------------------------------------------------


def test_batchnorm_per_process_is_in_the_key(monkeypatch):
    one = _cifar().key()
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert _cifar().key() != one  # four processes, BatchNorm over a quarter batch each
    assert _cifar(sync_bn=True).key() == one  # synchronised: BatchNorm over the whole batch


def test_the_tensor_loader_draws_from_a_cpu_generator_on_every_device():
    """Order, crops and flips come from one CPU stream whatever the device, so a CPU and a GPU
    run of one key see the same batches (the rounding still differs)."""
    from uniq.repro import data as D

    data = D.load_dataset("synthetic", True, "unused", 0, (96, 10), False, False)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    batches = []
    for device in devices:
        loader = D.TensorLoader(data, 32, True, device, seed=3)
        loader.set_epoch(2)
        batches.append([(x.cpu(), y.cpu()) for x, y in loader])
    g = torch.Generator().manual_seed(3 * 100_003 + 2)
    order = torch.randperm(96, generator=g)
    assert torch.equal(batches[0][0][1], data.labels[order[:32]])
    for other in batches[1:]:
        for (xa, ya), (xb, yb) in zip(batches[0], other, strict=True):
            assert torch.equal(ya, yb) and torch.equal(xa, xb)


def _folder(root, classes, per_class=3, size=24, seed=0):
    from uniq.repro.tasks import generated_folder

    return generated_folder(root, classes, per_class, 2, size, seed)


def test_imagenet_data_folder_is_keyed_by_its_class_and_file_lists(tmp_path):
    a = _folder(tmp_path / "a", 4)
    same = _folder(tmp_path / "elsewhere", 4)
    fewer = _folder(tmp_path / "b", 3)
    base = dict(bits=2, pretrained="none", epochs=1)
    key = ImageNetConfig(**base, data_dir=str(a)).key()
    assert ImageNetConfig(**base, data_dir=str(same)).key() == key  # placement
    assert ImageNetConfig(**base, data_dir=str(fewer)).key() != key  # another class list
    (a / "train" / "n00000000" / "extra.png").write_bytes(
        (a / "train" / "n00000000" / "img_0.png").read_bytes())
    assert ImageNetConfig(**base, data_dir=str(a)).key() != key  # another file list


def test_imagenet_augmentation_does_not_depend_on_the_worker_count(tmp_path):
    from uniq.repro.distributed import Dist
    from uniq.repro.tasks import imagenet_data

    root = _folder(tmp_path / "img", 2, per_class=4, size=40)
    batches = []
    for workers in (0, 2):
        cfg = ImageNetConfig(bits=2, pretrained="none", data_dir=str(root), batch_size=8,
                             image_size=32, workers=workers, augment=True)
        data = imagenet_data(cfg, Dist())
        data.train.set_epoch(1)
        batches.append([x for x, _ in data.train])
        assert ImageNetConfig(**{**cfg.to_dict(), "workers": 0}).key() == cfg.key()
    for xa, xb in zip(*batches, strict=True):
        assert torch.equal(xa, xb)


def test_init_from_run_is_keyed_by_the_file_it_loads(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"key": "abc"}')
    torch.save({"w": torch.ones(2)}, run / "checkpoint.pt")
    unfinished = _cifar(init_from_run=str(run)).key()
    torch.save({"w": torch.full((2,), 2.0)}, run / "checkpoint.pt")  # a later epoch
    assert _cifar(init_from_run=str(run)).key() != unfinished
    torch.save({"w": torch.full((2,), 3.0)}, run / "model.pt")
    finished = _cifar(init_from_run=str(run)).key()
    assert _cifar(init_from_run=str(run / "model.pt")).key() == finished  # the same file
    torch.save({"w": torch.full((2,), 4.0)}, run / "other.pt")
    assert _cifar(init_from_run=str(run / "other.pt")).key() != finished


def test_pytorchcv_weights_are_keyed_by_their_checksummed_file_name():
    from uniq.repro.pretrained import pytorchcv_filename

    cfg = ImageNetConfig(bits=4)
    assert cfg.hashed()["pretrained"] == "pytorchcv:" + pytorchcv_filename("preresnet18")


def test_the_generated_data_constants_are_in_the_key(monkeypatch):
    from uniq.repro import generated as D

    key = _cifar(dataset="finegrain").key()
    changed = {**D.GENERATOR_CONSTANTS, "finegrain": {**D.GENERATOR_CONSTANTS["finegrain"],
                                                       "detail": 0.6}}
    monkeypatch.setattr(D, "GENERATOR_CONSTANTS", changed)
    assert _cifar(dataset="finegrain").key() != key
    assert "generator" not in _cifar(dataset="synthetic").hashed()


def test_the_generator_constants_are_what_the_data_use():
    from uniq.repro import data as D

    built = D.load_dataset("finegrain", True, "unused", 0, (8, 8), False, False)
    c = D.G.GENERATOR_CONSTANTS["finegrain"]
    assert built.num_classes == c["classes"] and built.images.shape[-1] == c["size"]
    again = D.finegrain(8, True, 0, c["classes"], c["size"], c["detail"], c["noise"])
    assert torch.equal(again.images, built.images)


# --- one computation: one key ------------------------------------------------------------------

SAME_COMPUTATION = [
    ("sync-bn in one process", dict(), dict(sync_bn=True)),
    ("synthetic sizes with cifar100", dict(dataset="cifar100"),
     dict(dataset="cifar100", synthetic_train=256, synthetic_test=100)),
    ("explicit default first/last granularity", dict(),
     dict(first_last_weight_granularity="tensor")),
    ("first/last granularity equal to the channel granularity",
     dict(weight_granularity="channel"),
     dict(weight_granularity="channel", first_last_weight_granularity="channel")),
    ("tf32 on the CPU", dict(device="cpu"), dict(device="cpu", precision="tf32")),
    ("init scope at 1 bit", dict(bits=1, init=0.1), dict(bits=1, init=0.1, init_scope="all")),
]


@pytest.mark.parametrize("name,a,b", SAME_COMPUTATION, ids=[n for n, _, _ in SAME_COMPUTATION])
def test_flags_that_cannot_change_the_computation_keep_the_key(name, a, b):
    assert _cifar(**a).key() == _cifar(**b).key()


def test_imagenet_explicit_default_first_last_granularity_keeps_the_key():
    base = ImageNetConfig(bits=2, pretrained="none")
    assert dataclasses.replace(base, first_last_weight_granularity="channel").key() == base.key()
    assert dataclasses.replace(base, first_last_weight_granularity="tensor").key() != base.key()


def test_tf32_on_cuda_stays_in_the_key():
    assert _cifar(device="cuda", precision="tf32").key() != _cifar(device="cuda").key()


def test_one_bit_with_an_override_keeps_its_init_scope():
    a = _cifar(bits=1, init=0.1, overrides="FIRST=4")
    b = _cifar(bits=1, init=0.1, overrides="FIRST=4", init_scope="all")
    assert a.key() != b.key()  # the 4-bit layer takes the constant only with "all"


def test_the_authors_exact_cifar_statistics_are_a_keyed_switch(tmp_path, monkeypatch):
    from uniq.repro import data as D
    from uniq.repro import tasks

    base = dict(bits=2, dataset="cifar100")
    assert CifarConfig(**base, cifar_stats="exact").key() != CifarConfig(**base).key()
    # on generated data the switch means nothing: one key
    assert _cifar(cifar_stats="exact").key() == _cifar().key()
    fake = D.ImageData(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4).long(),
                       "cifar100", 100)
    monkeypatch.setattr(D, "load_dataset", lambda *a, **k: fake)
    train, test = tasks.cifar_splits(CifarConfig(**base, cifar_stats="exact"))
    assert train.mean == D.CIFAR100_EXACT_MEAN and test.std == D.CIFAR100_EXACT_STD
    train, _ = tasks.cifar_splits(CifarConfig(**base))
    assert train.mean == D.CIFAR100_MEAN
