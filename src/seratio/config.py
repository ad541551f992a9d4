"""What defines one training run, and the environment it records.

A run is a pure function of this config; everything else (the device, where
the data lives) may differ between machines without changing the result, so
it is left out of the run's identity.

torch is imported only where a device or the versions are asked for: every command's options
are checked through this module, and `seratio --help` or `study status` should not wait two
seconds for a library they never use.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import numbers
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seratio import __version__
from seratio.architecture import ModelConfig, Ratios, parse_rr
from seratio.datasets import check_split_size, dataset_info
from seratio.errors import SeratioError, exact_int, int_in
from seratio.recipes import Recipe, get_recipe

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16")
MAX_SEED = 2**32 - 1
"""Seeds are mixed with epoch numbers into 64-bit generator seeds (`seed * 1_000_003 + epoch`)."""
_NOT_IDENTITY = {"device", "data_dir"}


_INTEGERS = ("depth", "epochs", "batch_size", "seed", "train_subset", "test_subset", "val_size", "split_seed")


@dataclass(frozen=True)
class RunConfig:
    """Everything that makes one run, checked when made, so a bad value fails before any training.

    None for `epochs`, `batch_size` and `lr` takes the recipe's (`paper`: 200 epochs, batch 32,
    lr 1e-3); None for a subset uses the whole split. `val_size` 5000 holds out a validation split
    from the 50,000 training images for selection; the paper had none, so its run is `val_size=0`.
    `rr` takes what `parse_rr` does: 8, None, (8, 2, 16) or "8,2,16". `device` and `data_dir` say
    where this machine runs it and are not part of the run's identity.
    """

    rr: Ratios = (None, None, None)
    depth: int = 50
    dataset: str = "cifar10"
    recipe: str = "paper"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    train_subset: int | None = None
    test_subset: int | None = None
    val_size: int = 5000
    split_seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    data_dir: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rr", parse_rr(self.rr))
        for name in _INTEGERS:
            object.__setattr__(self, name, exact_int(getattr(self, name)))
        if isinstance(self.lr, numbers.Real) and not isinstance(self.lr, bool):
            object.__setattr__(self, "lr", _plain_float(self.lr))
        if isinstance(self.data_dir, os.PathLike):
            object.__setattr__(self, "data_dir", os.fspath(self.data_dir))
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise SeratioError(f"data_dir {self.data_dir!r} must be a path or None (then $SERATIO_DATA or the cache)")
        for name in ("seed", "split_seed"):
            value = getattr(self, name)
            if not int_in(value, 0, MAX_SEED):
                raise SeratioError(f"{name.replace('_', ' ')} {value!r} must be an integer from 0 to {MAX_SEED}")
        if self.precision not in PRECISIONS:
            raise SeratioError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        self._check_split()
        self.resolved_recipe()
        self.model_config()

    def _check_split(self) -> None:
        """Dataset and split sizes are known without the files: a study must refuse them before it starts.

        The data loader checks them again against the files it reads.
        """
        info = dataset_info(self.dataset)
        check_split_size(info, "val size", self.val_size)
        if self.train_subset is not None:
            check_split_size(info, "train subset", self.train_subset, self.val_size)
        if self.test_subset is not None:
            check_split_size(info, "test subset", self.test_subset)

    def model_config(self, num_classes: int | None = None) -> ModelConfig:
        classes = num_classes if num_classes is not None else (100 if self.dataset == "cifar100" else 10)
        return ModelConfig(depth=self.depth, rr=self.rr, num_classes=classes)

    def resolved_recipe(self) -> Recipe:
        return get_recipe(self.recipe, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)

    def identity(self) -> dict[str, Any]:
        """The fields that determine the result; two runs with equal identity are the same run."""
        data = asdict(self)
        data["rr"] = list(self.rr)
        return {k: v for k, v in data.items() if k not in _NOT_IDENTITY}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rr"] = list(self.rr)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        if "rr" in data and not isinstance(data["rr"], list):
            raise SeratioError(f"rr {data['rr']!r} must be a list of three ratios (an integer or null each)")
        return cls(**{k: (tuple(v) if k == "rr" else v) for k, v in data.items() if k in known})


def _plain_float(value: numbers.Real) -> float:
    """numpy's float32 1e-3 is 0.0010000000474974513 as a float, another run than `--lr 0.001`;
    its shortest text is 0.001, which is what its writer meant."""
    return float(str(value)) if hasattr(value, "dtype") else float(value)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus a fingerprint of the package source when running from a git checkout.

    The fingerprint is the git tree of `src/`, with a hash of any uncommitted change to it, not the
    commit: a commit that leaves the code alone (a README, a test) must not split a study's runs
    into two programs, which the report would then refuse to average. Cached: asked once per
    process, it names the code this process loaded, even if the checkout moves on while a long
    worker runs, and reusing many finished runs costs one lookup.
    """
    package = Path(__file__).resolve().parent
    root = package.parents[1]
    if package.parent.name != "src":  # installed, not a checkout: the version is all there is
        return __version__
    tree = _git(root, "rev-parse", "--short=10", "HEAD:./src")
    if not tree:
        return __version__
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "--", "src") or ""
    changes = (_git(root, "diff", "HEAD", "--", "src") or "").encode()
    for name in untracked.splitlines():
        with contextlib.suppress(OSError):  # deleted since it was listed
            changes += name.encode() + (root / name).read_bytes()
    edited = f".{hashlib.sha256(changes).hexdigest()[:10]}" if changes else ""
    return f"{__version__}+src.{tree.strip()}{edited}"


def _git(root: Path, *args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, str]:
    import numpy as np
    import torch

    return {
        "seratio": __version__,
        "code_version": code_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SeratioError(f"device {name!r} is not valid; use auto, cpu, cuda or cuda:K") from None
    if device.type not in {"cpu", "cuda"}:
        raise SeratioError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:K")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SeratioError(f"device {name!r} requested but CUDA is not available here; use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SeratioError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device
