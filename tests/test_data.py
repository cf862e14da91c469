"""Data: the real CIFAR-100 reader on files in the real format, the synthetic set, augmentation."""

import hashlib
import io
import pickle
import pickletools
import tarfile

import numpy as np
import pytest
import torch

from uniq.repro import data as D


def write_fake_cifar100(root, n_train=20, n_test=10, seed=0, protocol=pickle.DEFAULT_PROTOCOL):
    """A tiny CIFAR-100 in the release's on-disk format (python pickles in cifar-100-python/).

    Its checksums are not the release's, so readers get ``verify_checksums=False``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "fine_labels": rng.integers(0, 100, n).tolist(),
                 "coarse_labels": rng.integers(0, 20, n).tolist(),
                 "filenames": [f"{i}.png" for i in range(n)]}
        with (folder / split).open("wb") as f:
            pickle.dump(entry, f, protocol=protocol)
    return folder


def test_cifar100_reads_the_release_format(tmp_path):
    folder = write_fake_cifar100(tmp_path)
    train = D.cifar100(tmp_path, train=True, download=False, verify_checksums=False)
    with (folder / "train").open("rb") as f:
        raw = pickle.load(f, encoding="latin1")
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    # channel-major rows of 1024 values: R plane, G plane, B plane
    assert torch.equal(train.images[3, 1].flatten(), torch.from_numpy(raw["data"][3, 1024:2048]))
    assert train.labels.tolist() == raw["fine_labels"]
    assert len(D.cifar100(tmp_path, train=False, download=False, verify_checksums=False)) == 10


def test_cifar100_extracts_the_archive(tmp_path):
    src = tmp_path / "src"
    write_fake_cifar100(src)
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-100-python", arcname="cifar-100-python")
    assert len(D.cifar100(root, train=True, download=False, verify_checksums=False)) == 20


@pytest.mark.parametrize("member", ["../escaped", "/tmp/absolute", "cifar-100-python/link"])
def test_an_archive_member_outside_its_folder_or_a_link_is_refused(tmp_path, member):
    root = tmp_path / "data"
    root.mkdir()
    info = tarfile.TarInfo(member)
    if member.endswith("link"):
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(D.UnsafeDataFileError, match="nothing was extracted"):
        D.cifar100(root, train=True, download=False, verify_checksums=False)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cifar-100-python.tar.gz", "data"]


def test_missing_cifar100_offline_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-100-python.tar.gz"):
        D.cifar100(tmp_path, train=True, download=False)


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_reads_every_protocol_the_files_come_in(tmp_path, protocol):
    # Oracle: the plain pickle module on the same file.
    folder = write_fake_cifar100(tmp_path, protocol=protocol)
    ours = D.load_cifar_pickle(folder / "train")
    with (folder / "train").open("rb") as f:
        reference = pickle.load(f, encoding="latin1")
    assert ours.keys() == reference.keys()
    assert np.array_equal(ours["data"], reference["data"]) and ours["data"].dtype == np.uint8
    assert ours["fine_labels"] == reference["fine_labels"]


def test_restricted_unpickler_reads_the_releases_numpy_names(tmp_path):
    # The release was pickled by Python 2 with numpy 1: its globals name numpy.core.multiarray.
    # GLOBAL opcodes are newline-terminated text, so renaming the module keeps the stream valid.
    data = np.arange(12, dtype=np.uint8).reshape(2, 6)
    stream = pickle.dumps({"data": data, "fine_labels": [3, 4]}, protocol=2)
    globals_named = {arg for op, arg, _ in pickletools.genops(stream) if op.name == "GLOBAL"}
    assert "numpy._core.multiarray _reconstruct" in globals_named
    path = tmp_path / "train"
    path.write_bytes(stream.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    entry = D.load_cifar_pickle(path)
    assert np.array_equal(entry["data"], data) and entry["fine_labels"] == [3, 4]


@pytest.mark.parametrize("where", ["top level", "inside the dict"])
def test_a_tampered_pickle_is_refused_without_running_code(tmp_path, where):
    marker = tmp_path / "was-run"
    call = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR"
    # protocol 0 by hand: os.system("touch marker"), alone or as a value of a CIFAR-like dict
    stream = call + b"." if where == "top level" else (
        b"(dp0\nS'data'\np1\n" + call + b"p2\nsS'fine_labels'\np3\n(lp4\nI1\nas.")
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(stream)
    with pytest.raises(D.UnsafeDataFileError, match=r"(?s)cifar-100-python/train.*os\.system"):
        D.cifar100(tmp_path, train=True, download=False, verify_checksums=False)
    assert not marker.exists()
    # the same stream really does run code through the plain pickle module (the oracle)
    pickle.loads(stream)
    assert marker.exists()


def test_a_truncated_pickle_names_the_file(tmp_path):
    folder = write_fake_cifar100(tmp_path)
    (folder / "test").write_bytes((folder / "test").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cifar-100-python/test.*delete it"):
        D.cifar100(tmp_path, train=False, download=False, verify_checksums=False)


def test_checksums_are_torchvisions():
    cls = pytest.importorskip("torchvision.datasets").CIFAR100
    assert D.CIFAR100_MD5[cls.filename] == cls.tgz_md5
    assert D.CIFAR100_MD5["train"] == dict(cls.train_list)["train"]
    assert D.CIFAR100_MD5["test"] == dict(cls.test_list)["test"]
    assert D.CIFAR100_MD5["meta"] == cls.meta["md5"]


def test_a_checksum_mismatch_names_the_file_both_md5s_and_the_fix(tmp_path):
    folder = write_fake_cifar100(tmp_path)
    actual = _md5(folder / "train")
    with pytest.raises(D.DataChecksumError) as err:
        D.cifar100(tmp_path, train=True, download=False)  # verified by default
    message = str(err.value)
    assert str(folder / "train") in message and actual in message
    assert D.CIFAR100_MD5["train"] in message
    assert "Delete" in message and "verify_checksums=False" in message
    with pytest.raises(D.DataChecksumError, match="cifar-100-python/test"):
        D.load_dataset("cifar100", False, tmp_path, download=False)


def test_matching_checksums_load(tmp_path, monkeypatch):
    folder = write_fake_cifar100(tmp_path)
    monkeypatch.setitem(D.CIFAR100_MD5, "train", _md5(folder / "train"))
    assert len(D.cifar100(tmp_path, train=True, download=False)) == 20


def test_a_wrong_archive_is_refused_before_extraction(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_fake_cifar100(src)
    root = tmp_path / "data"
    root.mkdir()
    archive = root / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-100-python", arcname="cifar-100-python")
    with pytest.raises(D.DataChecksumError, match=r"cifar-100-python\.tar\.gz: MD5 [0-9a-f]{32}"):
        D.cifar100(root, train=True, download=False)
    assert not (root / "cifar-100-python").exists()
    # a matching archive is extracted; the extracted fake file then fails its own check
    monkeypatch.setitem(D.CIFAR100_MD5, archive.name, _md5(archive))
    with pytest.raises(D.DataChecksumError, match="cifar-100-python/train"):
        D.cifar100(root, train=True, download=False)
    assert (root / "cifar-100-python" / "train").exists()


def test_synthetic_is_deterministic_and_shaped_like_cifar():
    a = D.synthetic_cifar(300, train=True, seed=3)
    b = D.synthetic_cifar(300, train=True, seed=3)
    c = D.synthetic_cifar(300, train=False, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (300, 3, 32, 32) and a.images.dtype == torch.uint8
    assert not torch.equal(a.images, c.images)
    assert a.num_classes == 100 and a.name == "synthetic"


def test_finegrain_pairs_share_colour_and_differ_in_fine_detail():
    """Laptop data: deterministic 16x16 uint8 images of 20 classes in pairs. Oracles: without
    the fine pattern (detail=0) the two classes of a pair come from one colour template (their
    mean images agree to sampling noise, unlike two pairs); the pattern itself (the same draws
    with and without it) is fine detail: a 4x4 average keeps far less of its energy than of
    the colour's."""
    a = D.finegrain(400, train=True, seed=1)
    assert torch.equal(a.images, D.finegrain(400, train=True, seed=1).images)
    assert not torch.equal(a.images, D.finegrain(400, train=False, seed=1).images)
    assert a.images.shape == (400, 3, 16, 16) and a.images.dtype == torch.uint8
    assert a.num_classes == 20 and a.name == "finegrain" and int(a.labels.max()) < 20
    with pytest.raises(ValueError, match="pairs"):
        D.finegrain(10, num_classes=5)

    plain = D.finegrain(8_000, seed=1, detail=0.0, noise=0.0)
    x = plain.images.double()
    means = torch.stack([x[plain.labels == k].mean(0) for k in range(20)])
    within = (means[0::2] - means[1::2]).pow(2).mean()
    between = (means[0::2] - means[0::2].roll(1, 0)).pow(2).mean()
    assert within < 0.05 * between

    pattern = D.finegrain(8_000, seed=1, noise=0.0).images.double() - x
    colour = x - 128

    def kept(img):  # share of the energy a 4x4 average keeps
        return float(torch.nn.functional.avg_pool2d(img, 4).pow(2).mean() / img.pow(2).mean())

    assert kept(pattern) < 0.4 and kept(colour) > 0.8


def _offsets(batch, marker):
    """Recover the crop offset and flip of each augmented marker image."""
    out = []
    for img in batch:
        ys, xs = torch.nonzero(img[0] == 255, as_tuple=True)
        out.append((int(ys.min()), int(xs.min())))
    return out


def test_both_loaders_give_the_same_augmentation_distribution():
    # One image with a single bright 2x1 pixel pair: its position after augmentation reveals
    # the crop offset (dy, dx) and the flip.
    img = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    img[0, 0, 15, 15] = 255
    img[0, 0, 15, 16] = 255
    n = 4000
    data = D.ImageData(img.repeat(n, 1, 1, 1), torch.zeros(n, dtype=torch.long), "marker", 1,
                       mean=(0, 0, 0), std=(1 / 255, 1 / 255, 1 / 255))
    counts = {}
    for kind in ("tensor", "dataloader"):
        loader = D.make_loader(data, 500, True, "cpu", kind, seed=1, workers=0)
        loader.set_epoch(0)
        xs = torch.cat([x for x, _ in loader]).round().to(torch.uint8)
        pos = torch.tensor(_offsets(xs, 255))
        counts[kind] = (torch.bincount(pos[:, 0], minlength=32)[11:20].float() / len(pos),
                        torch.bincount(pos[:, 1], minlength=32)[10:20].float() / len(pos))
    for tensor_hist, loader_hist in zip(counts["tensor"], counts["dataloader"], strict=True):
        assert (tensor_hist - loader_hist).abs().max() < 0.03
    rows, cols = counts["tensor"]
    assert (rows - 1 / 9).abs().max() < 0.03  # 9 equally likely vertical offsets


def test_tensor_loader_epochs_are_reproducible_and_distinct():
    data = D.synthetic_cifar(256, seed=0)
    loader = D.TensorLoader(data, 64, True, "cpu", seed=5)
    loader.set_epoch(2)
    first = [x for x, _ in loader]
    loader.set_epoch(2)
    again = [x for x, _ in loader]
    loader.set_epoch(3)
    other = [x for x, _ in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    assert len(loader) == 4
