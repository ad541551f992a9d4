"""Batched augmentation on the device: random horizontal flip and random shift with edge fill.

This is DESIGN's whole-pixel version of Keras `ImageDataGenerator(horizontal_flip=True,
width_shift_range=0.1, height_shift_range=0.1, fill_mode='nearest')` on 32 px images: shifts of
-3..3 px, where Keras draws a continuous shift in [-3.2, 3.2] px and interpolates bilinearly. It
runs as one gather over the whole batch, so the images never leave the device and no per-sample
Python runs.
"""

from __future__ import annotations

import torch

from seratio.errors import SeratioError


def augment_batch(
    images: torch.Tensor, generator: torch.Generator, *, flip_p: float = 0.5, max_shift: int = 3
) -> torch.Tensor:
    """Flip each image with probability `flip_p`, then shift it by integers dy, dx ~ U{-max_shift..max_shift}.

    Convention (image first mirrored if flipped, then shifted): output pixel (y, x) is input pixel
    (clamp(y - dy), clamp(x - dx)), clamping to [0, H-1] and [0, W-1]. So dx = +3 moves the content
    3 px right and fills columns 0..2 with copies of column 0, like Keras fill_mode='nearest'.

    All randomness is drawn from `generator` in a fixed order (flips, then dy, then dx), so a seeded
    generator reproduces a batch exactly. It must live on the same device as `images`.
    Returns a new uint8 tensor of the same shape on the same device.
    """
    _check_images(images)
    if not 0.0 <= flip_p <= 1.0:
        raise SeratioError(f"flip_p {flip_p} is out of range; allowed: 0 <= flip_p <= 1")
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise SeratioError(f"max_shift {max_shift!r} is out of range; allowed: an integer >= 0")
    b, dev = images.shape[0], images.device
    flip = torch.rand(b, generator=generator, device=dev) < flip_p
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2, b, 1), generator=generator, device=dev)
    return _flip_and_shift(images, flip, dy, dx)


def view_batch(images: torch.Tensor, flip: bool, dy: int, dx: int) -> torch.Tensor:
    """One fixed test-time view of every image, with the training augmentation's convention and fill,
    so that the views a model is evaluated on are ones it saw in training."""
    _check_images(images)
    b, dev = images.shape[0], images.device
    return _flip_and_shift(
        images, torch.full((b,), flip, device=dev), torch.full((b, 1), dy, device=dev), torch.full((b, 1), dx, device=dev)
    )


def _check_images(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise SeratioError(f"expected uint8 images (B, C, H, W), got {images.dtype} {tuple(images.shape)}")


def _flip_and_shift(images: torch.Tensor, flip: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    b, c, h, w = images.shape
    dev = images.device
    rows = (torch.arange(h, device=dev) - dy).clamp_(0, h - 1)  # (B, H)
    cols = (torch.arange(w, device=dev) - dx).clamp_(0, w - 1)  # (B, W)
    cols = torch.where(flip[:, None], w - 1 - cols, cols)
    # One flat index per output pixel, shared by all channels: a single gather moves the batch.
    src = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return images.reshape(b, c, h * w).gather(2, src).view(b, c, h, w)


def to_float(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Scale uint8 pixels to [0, 1]; refusing other dtypes stops an image from being scaled twice."""
    if images.dtype != torch.uint8:
        raise SeratioError(f"expected uint8 images, got {images.dtype}")
    return images.to(dtype).div_(255)
