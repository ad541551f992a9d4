"""seratio.data against the real CIFAR-10 copy, plus damaged, missing and downloaded variants of it."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import re
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from seratio import datasets
from seratio.data import CifarData, load_cifar
from seratio.datasets import resolve_data_dir
from seratio.errors import SeratioError

BATCH_FILES = ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"


def real_layout(cifar_dir: Path) -> Path:
    return cifar_dir if (cifar_dir / "batches.meta").is_file() else cifar_dir / "cifar-10-batches-py"


def linked_layout(cifar_dir: Path, root: Path, skip: tuple[str, ...] = ()) -> Path:
    """A layout dir of symlinks to the real files (cheap), minus `skip` which the test writes itself."""
    layout = root / "cifar-10-batches-py"
    layout.mkdir(parents=True)
    for name in BATCH_FILES:
        if name not in skip:
            (layout / name).symlink_to(real_layout(cifar_dir) / name)
    return layout


def write_pickle(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=4))


def image_hashes(images: torch.Tensor) -> list[bytes]:
    rows = images.reshape(len(images), -1).numpy()
    return [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows]


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may read the developer's cache or reach the network by accident."""
    monkeypatch.delenv("SERATIO_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("unexpected download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


@pytest.fixture(scope="module")
def default(cifar_dir: Path) -> CifarData:
    return load_cifar("cifar10", cifar_dir)


@pytest.fixture(scope="module")
def full(cifar_dir: Path) -> CifarData:
    return load_cifar("cifar10", cifar_dir, val_size=0)


@pytest.fixture(scope="session")
def tarball(cifar_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real files as an official-layout cifar-10-python.tar.gz (gzip level 1 keeps this to seconds)."""
    path = tmp_path_factory.mktemp("tarball") / "cifar-10-python.tar.gz"
    with gzip.open(path, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        tar.add(real_layout(cifar_dir), arcname="cifar-10-batches-py")
    return path


# ---------------------------------------------------------------- real data


def test_default_split_sizes_types_and_names(default: CifarData) -> None:
    assert (len(default.train), len(default.val), len(default.test)) == (45_000, 5_000, 10_000)
    for split in (default.train, default.val, default.test):
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert split.images.shape == (len(split), 3, 32, 32) and split.labels.shape == (len(split),)
        assert split.images.device.type == "cpu"
        assert 0 <= int(split.labels.min()) and int(split.labels.max()) <= 9
    assert default.num_classes == 10 and default.dataset == "cifar10"
    assert default.class_names[:3] == ["airplane", "automobile", "bird"] and default.class_names[-1] == "truck"
    assert default.root.name == "cifar-10-batches-py"


def test_splits_are_class_balanced(default: CifarData) -> None:
    assert torch.bincount(default.val.labels).tolist() == [500] * 10
    assert torch.bincount(default.train.labels).tolist() == [4_500] * 10
    assert torch.bincount(default.test.labels).tolist() == [1_000] * 10


def test_channel_means_match_published_cifar10_values(full: CifarData) -> None:
    def mean(images: torch.Tensor) -> list[float]:
        total = images.view(len(images), 3, -1).sum(dim=(0, 2), dtype=torch.int64).double()
        return (total / (len(images) * 32 * 32 * 255)).tolist()

    assert mean(full.train.images) == pytest.approx([0.4914, 0.4822, 0.4465], abs=5e-4)
    assert mean(full.test.images) == pytest.approx([0.4942, 0.4851, 0.4504], abs=5e-4)


def test_official_order_is_kept(full: CifarData) -> None:
    """data_batch_1's known label counts: the loader neither shuffles nor mixes up batches."""
    expected = [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]
    assert torch.bincount(full.train.labels[:10_000]).tolist() == expected
    assert len(full.train) == 50_000 and len(full.val) == 0
    assert full.val.images.shape == (0, 3, 32, 32)


def test_train_and_val_partition_the_official_train_set(default: CifarData, full: CifarData) -> None:
    train, val = image_hashes(default.train.images), image_hashes(default.val.images)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(image_hashes(full.train.images))


def test_split_is_fixed_by_seed(cifar_dir: Path, default: CifarData) -> None:
    again = load_cifar("cifar10", cifar_dir)
    assert torch.equal(again.val.images, default.val.images)
    assert torch.equal(again.train.labels, default.train.labels)
    other = load_cifar("cifar10", cifar_dir, split_seed=1)
    assert not torch.equal(other.val.images, default.val.images)
    assert torch.bincount(other.val.labels).tolist() == [500] * 10


def test_every_load_returns_fresh_tensors(cifar_dir: Path) -> None:
    first = load_cifar("cifar10", cifar_dir, val_size=0)
    first.train.images.zero_()
    first.test.images.zero_()
    second = load_cifar("cifar10", cifar_dir, val_size=0)
    assert int(second.train.images[0].sum()) > 0 and int(second.test.images[0].sum()) > 0


def test_val_remainder_goes_to_the_lowest_classes(cifar_dir: Path) -> None:
    d = load_cifar("cifar10", cifar_dir, val_size=5_005)
    assert torch.bincount(d.val.labels).tolist() == [501] * 5 + [500] * 5
    assert len(d.train) == 44_995


def test_train_subset_is_stratified_and_keeps_val_fixed(cifar_dir: Path, default: CifarData) -> None:
    d = load_cifar("cifar10", cifar_dir, train_subset=1_005)
    assert torch.bincount(d.train.labels).tolist() == [101] * 5 + [100] * 5
    assert torch.equal(d.val.images, default.val.images)
    assert set(image_hashes(d.train.images)) <= set(image_hashes(default.train.images))
    assert torch.equal(load_cifar("cifar10", cifar_dir, train_subset=1_005).train.images, d.train.images)
    other_seed = load_cifar("cifar10", cifar_dir, train_subset=1_005, split_seed=3)
    assert not torch.equal(other_seed.train.images, d.train.images)


def test_test_subset_is_stratified_repeatable_and_leaves_train_and_val_alone(
    cifar_dir: Path, default: CifarData
) -> None:
    d = load_cifar("cifar10", cifar_dir, test_subset=1_005)
    assert torch.bincount(d.test.labels).tolist() == [101] * 5 + [100] * 5
    assert set(image_hashes(d.test.images)) <= set(image_hashes(default.test.images))
    assert torch.equal(d.train.images, default.train.images) and torch.equal(d.val.images, default.val.images)
    assert torch.equal(load_cifar("cifar10", cifar_dir, test_subset=1_005).test.images, d.test.images)
    other_seed = load_cifar("cifar10", cifar_dir, test_subset=1_005, split_seed=3)
    assert not torch.equal(other_seed.test.images, d.test.images)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"test_subset": 9}, r"test subset 9 must be an integer from 10 \(one image per class\) to 10,000$"),
        ({"test_subset": 10_001}, r"test subset 10001 must be an integer from 10 .* to 10,000$"),
        ({"test_subset": 500.0}, r"test subset 500.0 must be an integer from 10 .* to 10,000$"),
        ({"test_subset": True}, r"test subset True must be an integer from 10 "),
        ({"train_subset": "500"}, r"train subset '500' must be an integer from 10 "),
        ({"val_size": -1}, r"val size -1 must be an integer from 0 to 49,990 \(it leaves at least one training image per class of the 50,000\)"),
        ({"val_size": 50_000}, r"val size 50000 must be an integer from 0 to 49,990 "),
        ({"val_size": 5000.0}, r"val size 5000.0 must be an integer from 0 to 49,990 "),
        ({"train_subset": 9}, r"train subset 9 must be an integer from 10 \(one image per class\) to 45,000 \(the training images left after a val size of 5,000\)"),
        ({"train_subset": 45_001}, r"train subset 45001 must be an integer from 10 .* to 45,000 "),
        ({"val_size": 49_995, "train_subset": 10}, r"val size 49995 must be an integer from 0 to 49,990 "),
        ({"val_size": 49_000, "train_subset": 1_001}, r"train subset 1001 must be an integer from 10 .* to 1,000 \(the training images left after a val size of 49,000\)"),
    ],
)
def test_bad_split_sizes_name_value_and_range(cifar_dir: Path, kwargs: dict, message: str) -> None:
    """In the words `RunConfig` uses, whether the value is out of range or no integer at all."""
    with pytest.raises(SeratioError, match=message):
        load_cifar("cifar10", cifar_dir, **kwargs)


def test_a_numpy_integer_split_size_is_taken(cifar_dir: Path) -> None:
    assert len(load_cifar("cifar10", cifar_dir, val_size=0, train_subset=np.int64(100)).train) == 100


def test_unknown_dataset_lists_allowed_names() -> None:
    with pytest.raises(SeratioError, match=r"'cifar11'.*cifar10, cifar100"):
        load_cifar("cifar11")


# ---------------------------------------------------------------- finding the data


def test_accepts_the_layout_dir_itself(cifar_dir: Path) -> None:
    layout = real_layout(cifar_dir)
    assert resolve_data_dir(layout, "cifar10") == layout
    assert resolve_data_dir(layout.parent, "cifar10") == layout


def test_env_var_is_used_and_explicit_dir_wins(
    cifar_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERATIO_DATA", str(cifar_dir))
    assert resolve_data_dir(None, "cifar10") == real_layout(cifar_dir)
    with pytest.raises(SeratioError, match=re.escape(str(tmp_path))):
        resolve_data_dir(tmp_path, "cifar10")


def test_explicit_dir_without_data_fails_and_never_falls_back(cifar_dir: Path, tmp_path: Path) -> None:
    linked_layout(cifar_dir, tmp_path / "xdg-cache" / "seratio")  # a cache that *would* have the data
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SeratioError) as err:
        load_cifar("cifar10", empty)
    msg = str(err.value)
    for needle in (str(empty), "cifar-10-batches-py/", "cifar-10-python.tar.gz", "--data-dir", "SERATIO_DATA"):
        assert needle in msg
    with pytest.raises(SeratioError, match="does not exist"):
        load_cifar("cifar10", tmp_path / "typo")


def test_env_dir_without_data_names_the_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERATIO_DATA", str(tmp_path))
    with pytest.raises(SeratioError, match=r"\$SERATIO_DATA"):
        resolve_data_dir(None, "cifar10")


def test_cache_dir_is_used_without_download(cifar_dir: Path, tmp_path: Path) -> None:
    layout = linked_layout(cifar_dir, tmp_path / "xdg-cache" / "seratio")
    assert resolve_data_dir(None, "cifar10") == layout


def test_offline_download_says_where_to_put_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    cache = tmp_path / "xdg-cache" / "seratio"
    with pytest.raises(SeratioError) as err:
        load_cifar("cifar10")
    msg = str(err.value)
    for needle in ("name resolution", str(cache), "cifar-10-python.tar.gz", "--data-dir", "SERATIO_DATA"):
        assert needle in msg
    assert list(cache.iterdir()) == []


def test_download_with_bad_md5_is_rejected_and_discarded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    junk = b"<html>captive portal</html>"
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: io.BytesIO(junk))
    with pytest.raises(SeratioError) as err:
        load_cifar("cifar10")
    msg = str(err.value)
    for needle in ("cifar-10-python.tar.gz", "MD5", hashlib.md5(junk).hexdigest(), OFFICIAL_MD5):
        assert needle in msg
    assert list((tmp_path / "xdg-cache" / "seratio").iterdir()) == []


def test_download_verifies_then_extracts_into_cache(
    tarball: Path, full: CifarData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    md5 = hashlib.md5(tarball.read_bytes()).hexdigest()
    monkeypatch.setitem(datasets.DATASETS, "cifar10", dataclasses.replace(datasets.DATASETS["cifar10"], md5=md5))
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: tarball.open("rb"))
    d = load_cifar("cifar10", val_size=0)
    cache = tmp_path / "xdg-cache" / "seratio"
    assert sorted(p.name for p in cache.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    assert d.root == cache / "cifar-10-batches-py"
    assert torch.equal(d.test.images, full.test.images) and torch.equal(d.train.labels, full.train.labels)


def test_tarball_is_extracted_in_place(tarball: Path, full: CifarData, tmp_path: Path) -> None:
    (tmp_path / tarball.name).symlink_to(tarball)
    d = load_cifar("cifar10", tmp_path, val_size=0)
    assert d.root == tmp_path / "cifar-10-batches-py"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp dirs left
    assert torch.equal(d.train.images[-100:], full.train.images[-100:])


@pytest.mark.faults
@pytest.mark.parametrize("garble", [False, True], ids=["truncated", "garbled"])
def test_damaged_tarball_names_it_and_leaves_nothing(tarball: Path, tmp_path: Path, garble: bool) -> None:
    """Garbled: full length, but random bytes early on decode to junk that misaligns the tar headers."""
    raw = bytearray(tarball.read_bytes())
    if garble:
        raw[1 << 20 : (1 << 20) + 4096] = np.random.default_rng(0).bytes(4096)
    else:
        del raw[4 << 20 :]
    bad = tmp_path / tarball.name
    bad.write_bytes(raw)
    with pytest.raises(SeratioError, match=rf"{re.escape(str(bad))}.*truncated or corrupt.*re-download"):
        load_cifar("cifar10", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [tarball.name]


# ---------------------------------------------------------------- damaged files


def corrupt_layout(cifar_dir: Path, tmp_path: Path, name: str, content: bytes) -> Path:
    layout = linked_layout(cifar_dir, tmp_path, skip=(name,))
    (layout / name).write_bytes(content)
    return layout / name


def real_bytes(cifar_dir: Path, name: str) -> bytes:
    return (real_layout(cifar_dir) / name).read_bytes()


@pytest.mark.faults
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: raw[: len(raw) // 2], "cannot be unpickled"),  # truncated mid-pixels
        (lambda raw: raw[:1000], "cannot be unpickled"),  # truncated mid-labels
        (lambda raw: bytes(64) + raw[64:], "cannot be unpickled"),  # zeroed header
        (lambda raw: raw[:60] + b"\xff" + raw[61:], "cannot be unpickled"),  # bad opcode among labels
        (lambda raw: raw[:61] + b"\xff" + raw[62:], r"labels span \[0, 255\]"),  # label 255
        (lambda raw: b"", "cannot be unpickled"),  # empty file
    ],
)
def test_damaged_batch_names_the_file(cifar_dir: Path, tmp_path: Path, damage, message: str) -> None:
    path = corrupt_layout(cifar_dir, tmp_path, "data_batch_3", damage(real_bytes(cifar_dir, "data_batch_3")))
    with pytest.raises(SeratioError, match=rf"{re.escape(str(path))}: {message}.*re-download cifar-10-python.tar.gz"):
        load_cifar("cifar10", tmp_path)


@pytest.mark.faults
def test_missing_batch_names_the_file(cifar_dir: Path, tmp_path: Path) -> None:
    layout = linked_layout(cifar_dir, tmp_path, skip=("data_batch_4",))
    with pytest.raises(SeratioError, match=rf"{re.escape(str(layout / 'data_batch_4'))}: file is missing"):
        load_cifar("cifar10", tmp_path)


@pytest.mark.faults
@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"data": np.zeros((10_000, 3071), np.uint8), b"labels": [0] * 10_000}, r"uint8 \(10000, 3071\)"),
        ({b"data": np.zeros((10_000, 3072), np.float32), b"labels": [0] * 10_000}, "float32"),
        ({b"data": np.zeros((10_000, 3072), np.uint8), b"labels": [0] * 9_999}, "'labels' is not 10000 integers"),
        ({b"data": np.zeros((10_000, 3072), np.uint8)}, "'labels' is not 10000 integers"),
        ({b"labels": [0] * 10_000}, "'data' is NoneType"),
        ([1, 2, 3], "holds a list, not a dict"),
    ],
)
def test_wrong_structure_is_rejected(cifar_dir: Path, tmp_path: Path, batch: object, message: str) -> None:
    layout = linked_layout(cifar_dir, tmp_path, skip=("data_batch_2",))
    write_pickle(layout / "data_batch_2", batch)
    with pytest.raises(SeratioError, match=rf"data_batch_2: .*{message}"):
        load_cifar("cifar10", tmp_path)


@pytest.mark.faults
def test_short_batch_fails_the_count_check(cifar_dir: Path, tmp_path: Path) -> None:
    layout = linked_layout(cifar_dir, tmp_path, skip=("data_batch_5",))
    write_pickle(layout / "data_batch_5", {b"data": np.zeros((100, 3072), np.uint8), b"labels": [0] * 100})
    with pytest.raises(SeratioError, match="40100 images in all, expected 50000"):
        load_cifar("cifar10", tmp_path)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.faults
def test_malicious_pickle_is_refused_without_running(cifar_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    layout = linked_layout(cifar_dir, tmp_path, skip=("data_batch_1",))
    write_pickle(layout / "data_batch_1", {b"data": _Exploit(marker), b"labels": []})
    with pytest.raises(SeratioError, match=r"data_batch_1: refusing to unpickle, it references (posix|os)\.system"):
        load_cifar("cifar10", tmp_path)
    assert not marker.exists()


# ---------------------------------------------------------------- CIFAR-100 layout


def test_cifar100_layout(full: CifarData, tmp_path: Path) -> None:
    """Real CIFAR-10 pixels relabelled into the CIFAR-100 file layout: exercises its keys and names."""
    layout = tmp_path / "cifar-100-python"
    layout.mkdir()
    for name, split in (("train", full.train), ("test", full.test)):
        fine = [i % 100 for i in range(len(split))]
        write_pickle(
            layout / name,
            {
                b"data": split.images.reshape(len(split), -1).numpy(),
                b"fine_labels": fine,
                b"coarse_labels": [f // 5 for f in fine],
                b"filenames": [],
                b"batch_label": name.encode(),
            },
        )
    names = [f"c{i}".encode() for i in range(100)]
    write_pickle(layout / "meta", {b"fine_label_names": names, b"coarse_label_names": []})
    d = load_cifar("cifar100", tmp_path)
    assert d.num_classes == 100 and d.class_names[:2] == ["c0", "c1"] and d.dataset == "cifar100"
    assert (len(d.train), len(d.val), len(d.test)) == (45_000, 5_000, 10_000)
    assert torch.bincount(d.val.labels).tolist() == [50] * 100
    assert torch.equal(d.test.images, full.test.images)
    with pytest.raises(SeratioError, match="cifar-10-batches-py/"):
        load_cifar("cifar10", tmp_path)
