"""Tests for sd_tune.data on real on-disk formats written into tmp_path (no mocks)."""

from __future__ import annotations

import gzip
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sd_tune import data
from sd_tune.data import (
    DATASETS,
    DatasetInfo,
    InMemorySplit,
    Splits,
    find_fashion_mnist,
    load_splits,
    make_loaders,
    stratified_split,
)

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
HAS_DEBIAN = all((DEBIAN / f"{n}.gz").is_file() for n in data.FASHION_MNIST_FILES)


# --------------------------------------------------------------------------- writers


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    """Write ``array`` (uint8, N or N x H x W) as an IDX file, gzipped if ``gz``."""
    magic = 2051 if array.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_fashion_mnist(
    folder: Path, *, per_class: int = 20, test_per_class: int = 5, gz: bool = True, seed: int = 0
) -> dict[str, np.ndarray]:
    """Four IDX files with balanced labels; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", per_class * 10), ("t10k", test_per_class * 10)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", x, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", y, gz=gz)
        out[f"{prefix}_x"], out[f"{prefix}_y"] = x, y
    return out


def write_cifar(root: Path, name: str, *, per_batch: int = 20, n_test: int = 30) -> dict:
    """CIFAR python batches as torchvision stores them; returns the arrays written."""
    rng = np.random.default_rng(1)
    classes = 10 if name == "cifar10" else 100
    if name == "cifar10":
        folder, key = root / "cifar-10-batches-py", b"labels"
        files = [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]
    else:
        folder, key = root / "cifar-100-python", b"fine_labels"
        files = [("train", per_batch * 5), ("test", n_test)]
    folder.mkdir(parents=True)
    out: dict[str, list] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    for fname, n in files:
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.permutation(np.arange(n) % classes)]
        with (folder / fname).open("wb") as f:
            pickle.dump({b"data": x, key: y, b"batch_label": b"x"}, f)
        part = "test" if fname.startswith("test") else "train"
        out[f"{part}_x"].append(x.reshape(n, 3, 32, 32))
        out[f"{part}_y"].append(np.array(y))
    return {k: np.concatenate(v) for k, v in out.items()}


def write_image_folder(root: Path, *, classes: int = 3, n_train: int = 8, n_val: int = 2) -> None:
    """root/train/<class>/*.JPEG and root/val/<class>/*.JPEG, small RGB images."""
    from PIL import Image

    rng = np.random.default_rng(2)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, size=(36, 40, 3), dtype=np.uint8)
                Image.fromarray(img).save(d / f"img_{i}.JPEG", quality=90)


def id_splits(n_train: int = 103, n_eval: int = 37, shape=(1, 8, 8)) -> Splits:
    """In-memory splits whose labels are the sample ids (to track sharding)."""
    g = torch.Generator().manual_seed(0)
    info = DatasetInfo("custom", n_train, shape[0], shape[1], (0.5,) * shape[0], (0.25,) * shape[0])
    train = InMemorySplit(
        torch.randint(0, 256, (n_train, *shape), generator=g, dtype=torch.uint8),
        torch.arange(n_train),
    )
    ev = InMemorySplit(
        torch.randint(0, 256, (n_eval, *shape), generator=g, dtype=torch.uint8),
        torch.arange(n_eval),
    )
    return Splits(info, train, ev, ev)


def ids(loader) -> list[int]:
    return [int(v) for _, y in loader for v in y]


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SD_TUNE_DATA", raising=False)


# --------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_back_exactly(tmp_path: Path, gz: bool, no_env: None) -> None:
    arrays = write_fashion_mnist(tmp_path, gz=gz)
    s = load_splits("fashion_mnist", root=tmp_path)
    assert s.info == DatasetInfo("fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,))
    for split in (s.train, s.val, s.test):
        assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 28, 28)
    assert torch.equal(s.test.x[:, 0], torch.from_numpy(arrays["t10k_x"]))
    assert torch.equal(s.test.y, torch.from_numpy(arrays["t10k_y"]).long())
    for split, idx in ((s.train, s.train_indices), (s.val, s.val_indices)):
        assert torch.equal(split.x[:, 0], torch.from_numpy(arrays["train_x"][idx]))
        assert torch.equal(split.y, torch.from_numpy(arrays["train_y"][idx]).long())


def test_val_split_stratified_disjoint_and_stable(tmp_path: Path, no_env: None) -> None:
    write_fashion_mnist(tmp_path, per_class=20)
    s = load_splits("fashion_mnist", root=tmp_path, val_fraction=0.1)
    assert len(s.train) + len(s.val) == 200 and len(s.val) == 20
    assert torch.bincount(s.val.y, minlength=10).tolist() == [2] * 10
    assert not set(s.train_indices.tolist()) & set(s.val_indices.tolist())
    assert sorted([*s.train_indices, *s.val_indices]) == list(range(200))
    again = load_splits("fashion_mnist", root=tmp_path, val_fraction=0.1)
    assert np.array_equal(again.val_indices, s.val_indices)
    assert torch.equal(again.train.x, s.train.x)
    other = load_splits("fashion_mnist", root=tmp_path, val_fraction=0.1, split_seed=1)
    assert not np.array_equal(other.val_indices, s.val_indices)
    none = load_splits("fashion_mnist", root=tmp_path, val_fraction=0.0)
    assert len(none.train) == 200 and len(none.val) == 0


def test_stratified_split_is_pure_and_proportional() -> None:
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    keep, held = stratified_split(labels, 0.2, seed=3)
    assert np.bincount(labels[held]).tolist() == [20, 10, 6, 4]
    keep2, held2 = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(held, held2) and np.array_equal(keep, keep2)
    assert len(np.union1d(keep, held)) == len(labels)


def test_train_shrinking_and_eval_cap(tmp_path: Path, no_env: None) -> None:
    write_fashion_mnist(tmp_path, per_class=20, test_per_class=5)
    full = load_splits("fashion_mnist", root=tmp_path)
    half = load_splits("fashion_mnist", root=tmp_path, train_fraction=0.5)
    assert len(half.train) == 90
    assert torch.bincount(half.train.y, minlength=10).tolist() == [9] * 10
    assert set(half.train_indices.tolist()) <= set(full.train_indices.tolist())
    assert np.array_equal(half.val_indices, full.val_indices)  # val unaffected
    capped = load_splits("fashion_mnist", root=tmp_path, max_train_samples=30, max_eval_samples=10)
    assert torch.bincount(capped.train.y, minlength=10).tolist() == [3] * 10
    assert len(capped.val) == 10 and len(capped.test) == 10
    assert torch.bincount(capped.test.y, minlength=10).tolist() == [1] * 10


@pytest.mark.parametrize("layout", ["fashion-mnist", "FashionMNIST/raw"])
def test_fashion_mnist_sub_layouts(tmp_path: Path, layout: str, no_env: None) -> None:
    write_fashion_mnist(tmp_path / layout, gz=layout == "fashion-mnist")
    assert find_fashion_mnist(tmp_path) == tmp_path / layout
    assert len(load_splits("fashion_mnist", root=tmp_path, val_fraction=0).train) == 200


def test_lookup_order_root_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, empty = tmp_path / "a", tmp_path / "b", tmp_path / "empty"
    write_fashion_mnist(a, per_class=3)
    write_fashion_mnist(b / "FashionMNIST" / "raw", per_class=4, gz=False)
    empty.mkdir()
    monkeypatch.setenv("SD_TUNE_DATA", str(b))
    assert find_fashion_mnist(a) == a
    assert len(load_splits("fashion_mnist", root=a, val_fraction=0).train) == 30
    assert find_fashion_mnist() == b / "FashionMNIST" / "raw"
    assert find_fashion_mnist(empty) == b / "FashionMNIST" / "raw"  # falls through, in order
    assert len(load_splits("fashion_mnist", val_fraction=0).train) == 40


@pytest.mark.skipif(not HAS_DEBIAN, reason="dataset-fashion-mnist is not installed")
def test_lookup_falls_back_to_debian(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SD_TUNE_DATA", raising=False)
    assert find_fashion_mnist() == DEBIAN
    assert find_fashion_mnist(tmp_path) == DEBIAN
    write_fashion_mnist(tmp_path / "env", per_class=1)
    monkeypatch.setenv("SD_TUNE_DATA", str(tmp_path / "env"))
    assert find_fashion_mnist() == tmp_path / "env"


@pytest.mark.skipif(not HAS_DEBIAN, reason="dataset-fashion-mnist is not installed")
def test_real_debian_fashion_mnist(no_env: None) -> None:
    s = load_splits("fashion_mnist")
    assert len(s.train) + len(s.val) == 60000 and len(s.test) == 10000
    assert len(s.val) == 6000
    assert s.info.num_classes == 10 and s.info.in_channels == 1 and s.info.image_size == 28
    assert s.train.x.shape[1:] == (1, 28, 28) and s.test.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(s.test.y).tolist() == [1000] * 10
    assert torch.bincount(s.val.y).tolist() == [600] * 10


def test_missing_fashion_mnist_lists_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SD_TUNE_DATA", raising=False)
    monkeypatch.setattr(data.formats, "FASHION_MNIST_SYSTEM_DIRS", (tmp_path / "nodebian",))
    empty = tmp_path / "empty"
    with pytest.raises(FileNotFoundError) as info:
        load_splits("fashion_mnist", root=empty)
    msg = str(info.value)
    for place in (
        empty,
        empty / "fashion-mnist",
        empty / "FashionMNIST" / "raw",
        tmp_path / "nodebian",
    ):
        assert str(place) in msg
    assert "sudo apt-get install dataset-fashion-mnist" in msg
    assert "SD_TUNE_DATA" in msg and "download=True" in msg


def test_corrupt_idx_files(tmp_path: Path, no_env: None) -> None:
    write_fashion_mnist(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    labels = tmp_path / "train-labels-idx1-ubyte"
    good = images.read_bytes()
    images.write_bytes(labels.read_bytes())  # labels where images belong
    with pytest.raises(ValueError, match="magic number must be 2051, but got 2049"):
        load_splits("fashion_mnist", root=tmp_path)
    images.write_bytes(good[:-5])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_splits("fashion_mnist", root=tmp_path)
    images.write_bytes(good)
    write_idx(labels, np.zeros(3, dtype=np.uint8), gz=False)
    with pytest.raises(ValueError, match=r"holds 200 images but .* holds 3 labels"):
        load_splits("fashion_mnist", root=tmp_path)


# --------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_back_exactly(tmp_path: Path, name: str, no_env: None) -> None:
    arrays = write_cifar(tmp_path, name, per_batch=20 if name == "cifar10" else 40)
    s = load_splits(name, root=tmp_path, val_fraction=0.2)
    assert s.info.num_classes == (10 if name == "cifar10" else 100)
    assert s.info.in_channels == 3 and s.info.image_size == 32
    assert len(s.train) + len(s.val) == (100 if name == "cifar10" else 200)
    assert torch.equal(s.test.x, torch.from_numpy(arrays["test_x"]))
    assert torch.equal(s.test.y, torch.from_numpy(arrays["test_y"]))
    assert torch.equal(s.val.x, torch.from_numpy(arrays["train_x"][s.val_indices]))
    assert torch.equal(s.train.y, torch.from_numpy(arrays["train_y"][s.train_indices]))
    counts = torch.bincount(s.val.y, minlength=s.info.num_classes)
    if name == "cifar10":
        assert counts.tolist() == [2] * 10
    else:  # 2 images per class, 0.4 of each held out: 40 classes give one
        assert len(s.val) == 40 and counts.max() == 1


def test_cifar_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar(tmp_path, "cifar10")
    monkeypatch.setenv("SD_TUNE_DATA", str(tmp_path))
    assert len(load_splits("cifar10").test) == 30


def test_cifar_missing_messages(tmp_path: Path, no_env: None) -> None:
    with pytest.raises(FileNotFoundError, match="no `root` was given and \\$SD_TUNE_DATA"):
        load_splits("cifar10")
    with pytest.raises(FileNotFoundError) as info:
        load_splits("cifar100", root=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "cifar-100-python" / "train") in msg and "download=True" in msg


# --------------------------------------------------------------------------- ImageNet folder


def test_image_folder_splits_and_loaders(tmp_path: Path, no_env: None) -> None:
    write_image_folder(tmp_path, classes=3, n_train=8, n_val=2)
    s = load_splits("imagenet", root=tmp_path, image_size=32, val_fraction=0.25)
    assert s.info.num_classes == 3 and s.info.image_size == 32
    assert len(s.train) == 18 and len(s.val) == 6 and len(s.test) == 6
    assert sorted(s.val.targets) == [0, 0, 1, 1, 2, 2]
    assert s.test.targets == [0, 0, 1, 1, 2, 2]
    x, _ = s.val[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert s.train[0][0].shape == (3, 32, 32)
    train_paths = {p for p, _ in s.train.samples}
    assert not train_paths & {p for p, _ in s.val.samples}
    train, _, test = make_loaders(s, batch_size=4, num_workers=0, channels_last=True)
    assert len(train) == 4 and train.num_samples == 16
    xb, yb = next(iter(train))
    assert xb.shape == (4, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert xb.is_contiguous(memory_format=torch.channels_last)
    assert [int(v) for _, yb in test for v in yb] == [0, 0, 1, 1, 2, 2]
    # Two ranks: eval shards cover every sample once, train shards same length.
    shards = [make_loaders(s, batch_size=2, rank=r, world_size=2, num_workers=1) for r in (0, 1)]
    assert len(shards[0][0]) == len(shards[1][0]) == 4
    covered = sorted(i for r in (0, 1) for i in shards[r][2].sampler)
    assert covered == list(range(6))
    assert sorted(ids(shards[0][2]) + ids(shards[1][2])) == [0, 0, 1, 1, 2, 2]
    first = list(shards[0][0].sampler)
    shards[0][0].set_epoch(1)
    assert list(shards[0][0].sampler) != first


def test_image_folder_missing(tmp_path: Path, no_env: None) -> None:
    with pytest.raises(FileNotFoundError, match="train/ and val/"):
        load_splits("imagenet", root=tmp_path)


# --------------------------------------------------------------------------- synthetic


def test_synthetic() -> None:
    s = load_splits(
        "synthetic",
        synthetic_shape=(3, 16, 16),
        synthetic_classes=5,
        synthetic_samples=200,
        val_fraction=0.1,
    )
    assert s.info == DatasetInfo("synthetic", 5, 3, 16, (0.5,) * 3, (0.2041,) * 3)
    assert len(s.train) == 180 and len(s.val) == 20 and len(s.test) == 50
    assert s.train.x.shape[1:] == (3, 16, 16) and s.train.x.dtype == torch.uint8
    again = load_splits(
        "synthetic", synthetic_shape=(3, 16, 16), synthetic_classes=5, synthetic_samples=200
    )
    assert torch.equal(again.train.x, s.train.x) and torch.equal(again.test.y, s.test.y)
    train, _, _ = make_loaders(s, batch_size=32)
    assert train.crop_padding == 2 and train.flip is False


# --------------------------------------------------------------------------- loaders


def test_in_memory_loader_output_is_normalised(tmp_path: Path, no_env: None) -> None:
    write_fashion_mnist(tmp_path)
    s = load_splits("fashion_mnist", root=tmp_path)
    train, val, test = make_loaders(s, batch_size=16, device=torch.device("cpu"))
    xb, yb = next(iter(test))
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64 and xb.device.type == "cpu"
    expected = (s.test.x[:16].float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(xb, expected)
    assert torch.equal(yb, s.test.y[:16])
    assert len(train) == 180 // 16 and train.num_samples == 176
    assert len(val) == 2 and val.num_samples == 20
    xt, _ = next(iter(train))
    assert xt.shape == (16, 1, 28, 28) and xt.dtype == torch.float32


def test_training_shards_per_rank_and_epoch() -> None:
    s = id_splits(n_train=103)
    loaders = [make_loaders(s, batch_size=8, rank=r, world_size=2, seed=5) for r in (0, 1)]
    trains = [lo[0] for lo in loaders]
    assert len(trains[0]) == len(trains[1]) == 51 // 8
    assert trains[0].num_samples == trains[1].num_samples == 48
    epochs = []
    for epoch in (0, 1):
        for t in trains:
            t.set_epoch(epoch)
        a, b = ids(trains[0]), ids(trains[1])
        assert len(a) == len(b) == 48 and len(set(a)) == 48
        assert not set(a) & set(b)
        epochs.append((a, b))
        assert ids(trains[0]) == a  # same epoch, same order
    assert epochs[0][0] != epochs[1][0]
    # The union over ranks is what a single rank with the same seed would shuffle.
    single = make_loaders(s, batch_size=1, world_size=1, seed=5)[0]
    single.set_epoch(1)
    perm = ids(single)
    assert epochs[1][0] == perm[0:96:2][:48] and epochs[1][1] == perm[1:96:2][:48]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_shards_cover_each_sample_once(world_size: int) -> None:
    s = id_splits(n_eval=37)
    seen = []
    for r in range(world_size):
        _, val, test = make_loaders(s, batch_size=4, rank=r, world_size=world_size)
        seen += ids(val)
        assert ids(test) == ids(test)  # fixed order
        assert val.num_samples == len(range(r, 37, world_size))
    assert sorted(seen) == list(range(37))


def test_augmentation_is_random_crop_and_flip() -> None:
    s = id_splits(n_train=64, shape=(2, 8, 8))
    s.info = DatasetInfo("custom", 64, 2, 8, (0.0, 0.0), (1 / 255, 1 / 255))  # x == pixel value
    train, _, _ = make_loaders(s, batch_size=16, crop_padding=2, flip=True, channels_last=True)
    batches = []
    for epoch in (0, 1):
        train.set_epoch(epoch)
        xs, ys = zip(*train)
        x, y = torch.cat(xs), torch.cat(ys)
        assert x.shape == (64, 2, 8, 8) and x.dtype == torch.float32
        assert xs[0].is_contiguous(memory_format=torch.channels_last)
        batches.append(x[torch.argsort(y)])
        padded = F.pad(s.train.x[y], (2, 2, 2, 2))
        flipped = 0
        for i in range(len(y)):
            got = x[i].round().to(torch.uint8)
            crops = [
                (padded[i, :, dy : dy + 8, dx : dx + 8], f)
                for dy in range(5)
                for dx in range(5)
                for f in (False, True)
            ]
            match = [f for c, f in crops if torch.equal(c.flip(2) if f else c, got)]
            assert match, "augmented image is not a padded crop (or flip) of its source"
            flipped += all(match)
        assert 0 < flipped < 64
    assert not torch.equal(batches[0], batches[1])
    plain, _, _ = make_loaders(s, batch_size=64, augment=False)
    x, y = next(iter(plain))
    torch.testing.assert_close(x, s.train.x[y].float())


def test_small_training_set_error_and_bad_arguments(tmp_path: Path) -> None:
    s = id_splits(n_train=10)
    with pytest.raises(ValueError, match="no full batch is left"):
        make_loaders(s, batch_size=8, world_size=2)
    with pytest.raises(ValueError, match=re.escape("`batch_size` must be a positive integer")):
        make_loaders(s, batch_size=0)
    with pytest.raises(ValueError, match=re.escape("`rank` must be in [0, 2)")):
        make_loaders(s, batch_size=1, rank=2, world_size=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "mnist"}, "`name` must be one of " + ", ".join(DATASETS) + ", but got 'mnist'"),
        ({"val_fraction": 1.5}, "`val_fraction` must be in [0, 1), but got 1.5"),
        ({"val_fraction": 1.0}, "`val_fraction` must be in [0, 1), but got 1.0"),
        ({"train_fraction": 0.0}, "`train_fraction` must be in (0, 1], but got 0.0"),
        ({"max_train_samples": 0}, "`max_train_samples` must be a positive integer or None"),
        ({"max_eval_samples": -1}, "`max_eval_samples` must be a positive integer or None"),
        ({"synthetic_classes": 0}, "`synthetic_classes` must be >= 1, but got 0"),
        ({"synthetic_shape": (3, 0, 4)}, "`synthetic_shape` must be three positive integers"),
        ({"name": "cifar10", "image_size": 64}, "`image_size` can only be changed for imagenet"),
    ],
)
def test_bad_load_arguments(kwargs: dict, message: str) -> None:
    kwargs = {"name": "synthetic", **kwargs}
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=re.escape(message)):
        load_splits(name, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_on_cuda() -> None:
    s = load_splits("synthetic", synthetic_samples=256)
    train, val, _ = make_loaders(s, batch_size=32, device="cuda")
    x, y = next(iter(train))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.float32
    xv, _ = next(iter(val))
    assert xv.is_cuda
