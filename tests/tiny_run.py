"""The tiny real run that several test modules read: its command-line arguments, in one place."""

from __future__ import annotations

from pathlib import Path

TINY = ["--depth", "8", "--rr", "4,4,4", "--train-subset", "2000", "--test-subset", "1000", "--val-size", "500",
        "--epochs", "3"]
"""SE-ResNet-8 (4, 4, 4), 3 epochs of 2,000 real images, tested on 1,000: about 8 s here, and far above chance."""


def train_args(cifar_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *TINY, "--data-dir", str(cifar_dir), "--out", str(out), *extra, "--quiet"]
