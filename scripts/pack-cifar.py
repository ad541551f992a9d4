"""Pack CIFAR-10 losslessly into WebP mosaics, small enough to reach a lent GPU in two device calls.

A device call carries at most 64 MiB, and CIFAR-10's six batch files are 186 MB: three calls, each
holding the machine idle while its files travel. Lossless WebP stores a batch in 17 MB instead of
31, so two calls carry all of it. `unpack` writes the official python layout back, pixel for pixel
and label for label, and checks the image count and labels against what `pack` recorded.

    python3 scripts/pack-cifar.py pack SRC_LAYOUT DEST_A DEST_B   # here: batches 1-3, then the rest
    python3 scripts/pack-cifar.py unpack PACKED_DIR LAYOUT        # there: once per carried folder

SRC_LAYOUT and LAYOUT are `cifar-10-batches-py` folders; `unpack` may run once per part into the
same LAYOUT. It needs numpy and Pillow (with WebP), which the GPU machines' image holds.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
META = "batches.meta"
SIDE = 32
TILES = 100
"""A batch of 10,000 images is one mosaic of 100 x 100 tiles: one WebP instead of 10,000 keeps
the format's per-file overhead out and lets its predictor see whole rows of images."""


def _mosaic(data: np.ndarray) -> np.ndarray:
    """(N, 3072) channel-planar rows, as the official files hold them, to one (H, W, 3) image."""
    images = data.reshape(TILES, TILES, 3, SIDE, SIDE).transpose(0, 3, 1, 4, 2)
    return np.ascontiguousarray(images).reshape(TILES * SIDE, TILES * SIDE, 3)


def _rows(mosaic: np.ndarray) -> np.ndarray:
    images = mosaic.reshape(TILES, SIDE, TILES, SIDE, 3).transpose(0, 2, 4, 1, 3)
    return np.ascontiguousarray(images).reshape(TILES * TILES, 3 * SIDE * SIDE)


def _pack_one(src: Path, dest: Path) -> str:
    try:
        with src.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except OSError as error:
        raise SystemExit(f"pack-cifar: cannot read {src} ({error.strerror}); SRC_LAYOUT must be a cifar-10-batches-py folder")
    data = batch[b"data"]
    if data.shape != (TILES * TILES, 3 * SIDE * SIDE) or data.dtype != np.uint8:
        raise SystemExit(f"pack-cifar: {src} holds {data.dtype} {data.shape}, expected uint8 (10000, 3072)")
    buffer = io.BytesIO()
    Image.fromarray(_mosaic(data)).save(buffer, "WEBP", lossless=True, quality=100, method=4)
    if not np.array_equal(_rows(_decode(buffer.getvalue())), data):
        raise SystemExit(f"pack-cifar: WebP did not give {src}'s pixels back; nothing usable was written")
    (dest / f"{src.name}.webp").write_bytes(buffer.getvalue())
    labels = [int(label) for label in batch[b"labels"]]
    (dest / f"{src.name}.json").write_text(json.dumps({"labels": labels, "batch_label": batch[b"batch_label"].decode()}))
    return f"{src.name}: {buffer.tell() / 1e6:.1f} MB"


def _decode(webp: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(webp)).convert("RGB"))


def pack(src: Path, dests: list[Path]) -> None:
    """The first half of the batches into the first folder, the rest and the meta file into the second."""
    for dest in dests:
        dest.mkdir(parents=True, exist_ok=True)
    half = len(BATCHES) // 2
    targets = [dests[0] if i < half else dests[1] for i in range(len(BATCHES))]
    with ProcessPoolExecutor() as pool:
        for line in pool.map(_pack_one, [src / name for name in BATCHES], targets):
            print(line)
    shutil.copyfile(src / META, dests[1] / META)


def unpack(packed: Path, layout: Path) -> None:
    webps = sorted(packed.glob("*.webp"))
    if not webps:
        raise SystemExit(f"pack-cifar: {packed} holds no .webp batch; give a folder that `pack` wrote")
    layout.mkdir(parents=True, exist_ok=True)
    for webp in webps:
        record = json.loads(webp.with_suffix(".json").read_text())
        data = _rows(_decode(webp.read_bytes()))
        if len(record["labels"]) != len(data):
            raise SystemExit(f"pack-cifar: {webp} holds {len(data)} images but {len(record['labels'])} labels")
        batch = {b"batch_label": record["batch_label"].encode(), b"labels": record["labels"], b"data": data}
        with (layout / webp.stem).open("wb") as f:
            pickle.dump(batch, f, protocol=4)
        print(f"{layout / webp.stem}: {len(data)} images")
    if (packed / META).exists():
        shutil.copyfile(packed / META, layout / META)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    packing = sub.add_parser("pack", help="official layout -> two folders of WebP mosaics")
    packing.add_argument("src", type=Path)
    packing.add_argument("dests", type=Path, nargs=2)
    unpacking = sub.add_parser("unpack", help="one folder of WebP mosaics -> the official layout")
    unpacking.add_argument("packed", type=Path)
    unpacking.add_argument("layout", type=Path)
    args = parser.parse_args(argv)
    if args.mode == "pack":
        pack(args.src, args.dests)
    else:
        unpack(args.packed, args.layout)


if __name__ == "__main__":
    main(sys.argv[1:])
