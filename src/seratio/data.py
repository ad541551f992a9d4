"""CIFAR files -> verified uint8 tensors (train / val / test) on the training device.

Every batch is checked for shape, dtype, label range and total count, so a damaged file ends in a
`SeratioError` that names it, never in silently wrong pixels. Finding, extracting and downloading
the files is `seratio.datasets`' job.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seratio.datasets import DATASETS, DatasetInfo, check_split_size, dataset_info, layout_files, resolve_data_dir
from seratio.errors import SeratioError

try:  # numpy >= 2 moved the module; official pickles still name numpy.core.multiarray.
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct


IMAGE_SHAPE = (3, 32, 32)
_ROW_BYTES = 3 * 32 * 32


@dataclass
class Split:
    """One split held whole in memory, so training indexes batches without a DataLoader."""

    images: torch.Tensor  # uint8 (N, 3, 32, 32), CHW
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class CifarData:
    """Everything a run needs from the data: the three splits and how to name the classes."""

    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: list[str]
    dataset: str
    root: Path


# ---------------------------------------------------------------- reading and verifying


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickling can run arbitrary code; a CIFAR file only ever needs to rebuild numpy arrays."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


def _corrupt(path: Path, info: DatasetInfo, problem: str) -> SeratioError:
    return SeratioError(
        f"{path}: {problem}. It is truncated, corrupt or not from the official {info.title} archive; "
        f"re-download {info.tar_name} from {info.url} and replace the {info.dir_name}/ folder."
    )


def _load_pickle(path: Path, info: DatasetInfo) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise _corrupt(path, info, "file is missing") from None
    except PermissionError:
        raise  # not damage, so no advice to re-download: the command names the file and the OS's reason
    except _ForbiddenGlobal as err:
        raise _corrupt(path, info, f"refusing to unpickle, it references {err}") from None
    except Exception as err:  # a damaged pickle stream can fail with almost any exception type
        raise _corrupt(path, info, f"cannot be unpickled ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise _corrupt(path, info, f"holds a {type(obj).__name__}, not a dict")
    # Python-2 files give bytes keys; a copy re-saved under Python 3 gives str keys.
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_batch(path: Path, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(path, info)
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW_BYTES:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise _corrupt(path, info, f"'data' is {desc}, expected uint8 (N, {_ROW_BYTES})")
    try:
        labels = np.asarray(batch.get(info.label_key, []))
    except (TypeError, ValueError):  # ragged or otherwise unarrayable garbage
        labels = np.asarray([])
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise _corrupt(path, info, f"'{info.label_key}' is not {data.shape[0]} integers")
    if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise _corrupt(
            path, info, f"labels span [{labels.min()}, {labels.max()}], outside [0, {info.num_classes - 1}]"
        )
    return data, labels.astype(np.int64)


def _read_split(
    layout: Path, files: tuple[str, ...], expected: int, info: DatasetInfo
) -> tuple[np.ndarray, np.ndarray]:
    parts = [_read_batch(layout / name, info) for name in files]
    images = np.concatenate([p[0] for p in parts]).reshape(-1, *IMAGE_SHAPE)
    labels = np.concatenate([p[1] for p in parts])
    if len(labels) != expected:
        raise _corrupt(layout, info, f"{', '.join(files)} hold {len(labels)} images in all, expected {expected}")
    return images, labels


def _read_class_names(layout: Path, info: DatasetInfo) -> tuple[str, ...]:
    path = layout / info.meta_file
    names = _load_pickle(path, info).get(info.names_key)
    if not isinstance(names, list) or len(names) != info.num_classes:
        raise _corrupt(path, info, f"'{info.names_key}' is not a list of {info.num_classes} names")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


@dataclass(frozen=True)
class _Arrays:
    """Parsed dataset shared by every load in this process; callers only ever get copies."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: tuple[str, ...]


def _read_arrays(layout: Path, dataset: str) -> _Arrays:
    """Key the cache on file sizes and mtimes too, so replacing a file on disk is noticed."""
    info = DATASETS[dataset]
    stamps = tuple((s.st_size, s.st_mtime_ns) if (s := _stat(layout / n)) else None for n in layout_files(info))
    return _read_arrays_cached(layout.resolve(), dataset, stamps)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


@functools.lru_cache(maxsize=2)
def _read_arrays_cached(layout: Path, dataset: str, _stamps: tuple[Any, ...]) -> _Arrays:
    info = DATASETS[dataset]
    class_names = _read_class_names(layout, info)
    train = _read_split(layout, info.train_files, info.train_count, info)
    test = _read_split(layout, info.test_files, info.test_count, info)
    return _Arrays(*map(torch.from_numpy, (*train, *test)), class_names)


# ---------------------------------------------------------------- splitting


def _allocate(total: int, counts: np.ndarray) -> np.ndarray:
    """Split `total` over classes in proportion to `counts` (largest remainder, ties to lower class).

    On balanced CIFAR this is total // K per class, with the remainder going to classes 0, 1, ...
    """
    exact = total * counts / counts.sum()
    quotas = np.floor(exact).astype(np.int64)
    short = total - int(quotas.sum())
    order = np.argsort(-(exact - quotas), kind="stable")
    quotas[order[:short]] += 1
    return quotas


def _stratified_pick(labels: np.ndarray, size: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of `size` items of `labels`, class proportions kept, chosen by `rng`."""
    perm = rng.permutation(len(labels))
    grouped = perm[np.argsort(labels[perm], kind="stable")]  # by class, random order within class
    counts = np.bincount(labels, minlength=num_classes)
    starts = np.cumsum(counts) - counts
    quotas = _allocate(size, counts)
    picked = [grouped[s : s + q] for s, q in zip(starts, quotas)]
    return np.sort(np.concatenate(picked))


def _split_indices(
    labels: np.ndarray, info: DatasetInfo, val_size: int, train_subset: int | None, split_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Val is drawn first, so it stays the same whatever `train_subset` is."""
    val_size = _split_size(info, "val size", val_size)
    rng = np.random.default_rng(split_seed)
    val = _stratified_pick(labels, val_size, info.num_classes, rng)
    train = np.setdiff1d(np.arange(len(labels)), val, assume_unique=True)
    if train_subset is not None:
        train_subset = _split_size(info, "train subset", train_subset, val_size)
        train = train[_stratified_pick(labels[train], train_subset, info.num_classes, rng)]
    return train, val


TEST_STREAM = 1
"""Mixed into the split seed for the test subset: its own random stream, so a test subset never
changes which images are val or train."""


def _test_indices(labels: np.ndarray, info: DatasetInfo, test_subset: int | None, split_seed: int) -> np.ndarray | None:
    if test_subset is None:
        return None
    test_subset = _split_size(info, "test subset", test_subset)
    rng = np.random.default_rng([TEST_STREAM, split_seed])
    return _stratified_pick(labels, test_subset, info.num_classes, rng)


def _split_size(info: DatasetInfo, name: str, value: Any, val_size: int = 0) -> int:
    """`value` checked as `RunConfig` checks it (`check_split_size`), in its words, with a numpy
    integer taken as the int it is; 5000.0, "5000" and True stay refused."""
    if not isinstance(value, bool):
        with contextlib.suppress(TypeError):
            value = operator.index(value)
    check_split_size(info, name, value, val_size)
    return value


def _take(arrays: _Arrays, split: str, index: np.ndarray | None, device: torch.device) -> Split:
    """Copy rows out of the shared cache (index_select is multithreaded, numpy fancy indexing is not)."""
    images, labels = getattr(arrays, f"{split}_images"), getattr(arrays, f"{split}_labels")
    if index is None:
        return Split(images.to(device, copy=True), labels.to(device, copy=True))
    rows = torch.from_numpy(index)
    return Split(images.index_select(0, rows).to(device), labels.index_select(0, rows).to(device))


def load_cifar(
    dataset: str = "cifar10",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    val_size: int = 5000,
    train_subset: int | None = None,
    test_subset: int | None = None,
    split_seed: int = 0,
    device: str | torch.device = "cpu",
) -> CifarData:
    """Load, verify and split a CIFAR dataset; the split depends only on `split_seed`, not the device.

    The validation set is a stratified draw of `val_size` train images; `train_subset` then keeps a
    stratified subset of the rest, and `test_subset` one of the test set, for quick runs whose
    evaluation would otherwise outlast their training. Parsed arrays are cached per process,
    tensors are fresh per call.
    """
    info = dataset_info(dataset)
    layout = resolve_data_dir(data_dir, dataset)
    arrays = _read_arrays(layout, dataset)
    train_idx, val_idx = _split_indices(arrays.train_labels.numpy(), info, val_size, train_subset, split_seed)
    dev = torch.device(device)
    return CifarData(
        train=_take(arrays, "train", train_idx, dev),
        val=_take(arrays, "train", val_idx, dev),
        test=_take(arrays, "test", _test_indices(arrays.test_labels.numpy(), info, test_subset, split_seed), dev),
        num_classes=info.num_classes,
        class_names=list(arrays.class_names),
        dataset=dataset,
        root=layout,
    )
