"""Where CIFAR lives: find the official layout, extract the official tarball, or download it.

Only the per-user cache directory downloads, and only downloads are MD5-checked, because an
extracted copy need not be byte-identical to the official files (see shared/data/cifar10/SOURCE.md).
Extraction goes through a temp dir and a rename, so a crash never leaves half a layout.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seratio.errors import SeratioError, int_in

ENV_VAR = "SERATIO_DATA"


@dataclass(frozen=True)
class DatasetInfo:
    """Where a dataset lives and what a complete, correct copy of it contains."""

    title: str
    dir_name: str
    tar_name: str
    url: str
    md5: str
    num_classes: int
    label_key: str
    names_key: str
    meta_file: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    train_count: int
    test_count: int


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        title="CIFAR-10",
        dir_name="cifar-10-batches-py",
        tar_name="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        num_classes=10,
        label_key="labels",
        names_key="label_names",
        meta_file="batches.meta",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        train_count=50_000,
        test_count=10_000,
    ),
    "cifar100": DatasetInfo(
        title="CIFAR-100",
        dir_name="cifar-100-python",
        tar_name="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        num_classes=100,
        label_key="fine_labels",
        names_key="fine_label_names",
        meta_file="meta",
        train_files=("train",),
        test_files=("test",),
        train_count=50_000,
        test_count=10_000,
    ),
}




def split_sizes(info: DatasetInfo, val_size: int) -> dict[str, tuple[int, int, str, str]]:
    """The sizes a split may take, with why at each end: `RunConfig` checks them before a study
    starts, `load_cifar` again on the files it reads, and both refuse a size out of range in the
    same words."""
    classes, left = info.num_classes, info.train_count - val_size
    per_class = " (one image per class)"
    return {
        "val size": (0, info.train_count - classes, "",
                     f" (it leaves at least one training image per class of the {info.train_count:,})"),
        "train subset": (classes, left, per_class, f" (the training images left after a val size of {val_size:,})"),
        "test subset": (classes, info.test_count, per_class, ""),
    }


def check_split_size(info: DatasetInfo, name: str, value: object, val_size: int = 0) -> None:
    """Refuse `value` for the split size `name` ("val size", "train subset", "test subset")."""
    low, high, low_why, high_why = split_sizes(info, val_size)[name]
    if not int_in(value, low, high):
        raise SeratioError(f"{name} {value!r} must be an integer from {low:,}{low_why} to {high:,}{high_why}")


def dataset_info(dataset: str) -> DatasetInfo:
    """Look a dataset up, so a typo fails before any disk or network access."""
    try:
        return DATASETS[dataset]
    except KeyError:
        allowed = ", ".join(sorted(DATASETS))
        raise SeratioError(f"unknown dataset {dataset!r}; allowed: {allowed}") from None


def cache_dir() -> Path:
    """The per-user directory that may download, following the XDG convention."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "seratio"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None, dataset: str) -> Path:
    """Return the official layout directory of `dataset`, ready to read.

    Looks in `data_dir`, else `$SERATIO_DATA`, else the per-user cache. A directory qualifies if it
    is the layout directory itself, contains it, or contains the official tarball (extracted in
    place). An explicit directory that lacks the data is an error rather than a fallback to the
    cache, so a typo in a path never silently trains on other files. Only the cache downloads.
    """
    info = dataset_info(dataset)
    if data_dir is not None and str(data_dir) != "":
        return _find_in(Path(data_dir).expanduser(), info, source="--data-dir / data_dir")
    env = os.environ.get(ENV_VAR, "")
    if env:
        return _find_in(Path(env).expanduser(), info, source=f"${ENV_VAR}")
    cache = cache_dir()
    found = _existing_layout(cache, info)
    if found is not None:
        return found
    _download(info, cache)
    return _extract(cache / info.tar_name, info)


def _find_in(directory: Path, info: DatasetInfo, *, source: str) -> Path:
    found = _existing_layout(directory, info)
    if found is not None:
        return found
    if directory.exists() and not directory.is_dir():
        raise SeratioError(
            f"{info.title} not found: {directory} (from {source}) is a file, not a directory; pass --data-dir / "
            f"set {ENV_VAR} to a directory that holds {info.dir_name}/ or {info.tar_name} (from {info.url})"
        )
    state = "does not exist" if not directory.exists() else f"has neither {info.dir_name}/ nor {info.tar_name}"
    raise SeratioError(
        f"{info.title} not found: {directory} (from {source}) {state}. {_where_to_put(info, directory)}"
    )


def _existing_layout(directory: Path, info: DatasetInfo) -> Path | None:
    """The layout dir if `directory` is or holds it, extracting the tarball when only that is there."""
    named = directory.name == info.dir_name and directory.is_dir()
    if named or ((directory / info.meta_file).is_file() and (directory / info.train_files[0]).is_file()):
        return directory
    if (directory / info.dir_name).is_dir():
        return directory / info.dir_name
    if (directory / info.tar_name).is_file():
        return _extract(directory / info.tar_name, info)
    return None


def _where_to_put(info: DatasetInfo, directory: Path) -> str:
    return (
        f"Put the official folder {info.dir_name}/ or the archive {info.tar_name} "
        f"(from {info.url}) in {directory}, or pass --data-dir / set {ENV_VAR} to a directory "
        "that holds one of them."
    )


def _download(info: DatasetInfo, cache: Path) -> None:
    """Fetch the tarball into `cache`; it only appears under its final name once its MD5 matches."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=f".{info.tar_name}.", suffix=".part")
    except OSError as err:
        raise SeratioError(
            f"cannot download {info.title}: the cache {cache} is not writable ({err.strerror}). "
            + _where_to_put(info, cache)
        ) from err
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(info.url, timeout=60) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except (OSError, http.client.HTTPException) as err:  # URLError is an OSError
            reason = getattr(err, "reason", err)
            raise SeratioError(
                f"could not download {info.title} from {info.url} ({reason}). If this machine is "
                f"offline, fetch {info.tar_name} elsewhere. {_where_to_put(info, cache)}"
            ) from err
        actual = digest.hexdigest()
        if actual != info.md5:
            raise SeratioError(
                f"downloaded {info.tar_name} from {info.url} has MD5 {actual}, expected {info.md5}; "
                f"the download is corrupt and was discarded. Try again. {_where_to_put(info, cache)}"
            )
        os.replace(tmp, cache / info.tar_name)
    finally:
        tmp.unlink(missing_ok=True)


# `filter="data"` refuses links, devices and paths outside the target; older Pythons lack the
# argument, and there the member check in `_extract` alone keeps extraction inside the temp dir.
_EXTRACT_KW: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def _extract(tarball: Path, info: DatasetInfo) -> Path:
    """Extract next to the tarball via a temp dir and a rename, so a crash never leaves half a layout."""
    parent = tarball.parent
    final = parent / info.dir_name
    try:
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{info.dir_name}.extract-"))
    except OSError as err:
        raise SeratioError(
            f"cannot extract {tarball}: {parent} is not writable ({err.strerror}). Extract it yourself "
            f"(tar xzf {tarball.name}) or copy it to a writable directory and pass --data-dir / set {ENV_VAR}."
        ) from err
    try:
        try:
            with tarfile.open(tarball, "r:gz") as tar:
                for member in tar:
                    if _is_layout_member(member, info.dir_name):
                        tar.extract(member, tmp, **_EXTRACT_KW)
                # tarfile ends quietly at a garbled header; reading to the gzip trailer checks its CRC.
                while tar.fileobj.read(1 << 20):
                    pass
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise SeratioError(
                f"{tarball} is truncated or corrupt ({err}); delete it and re-download it from {info.url}."
            ) from err
        except OSError as err:  # the archive is fine, the disk is not (full, read-only, ...)
            raise SeratioError(f"cannot extract {tarball} into {parent}: {err}") from err
        missing = [n for n in layout_files(info) if not (tmp / info.dir_name / n).is_file()]
        if missing:
            raise SeratioError(
                f"{tarball} lacks {info.dir_name}/{', '.join(missing)}; it is truncated or not the official "
                f"archive. Delete it and re-download it from {info.url}."
            )
        try:
            os.rename(tmp / info.dir_name, final)
        except OSError:
            if not final.is_dir():  # else another process finished the same extraction first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def layout_files(info: DatasetInfo) -> tuple[str, ...]:
    return (info.meta_file, *info.train_files, *info.test_files)


def _is_layout_member(member: tarfile.TarInfo, dir_name: str) -> bool:
    parts = Path(member.name).parts
    return (member.isfile() or member.isdir()) and parts[:1] == (dir_name,) and ".." not in parts
