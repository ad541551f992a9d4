"""Named training recipes: optimizer, schedule, regularisation and augmentation.

`paper` is the study's recipe to the letter (DESIGN section 4). `fast` is a
modern recipe for GPUs. A recipe is plain data; `train.py` executes it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from seratio.errors import SeratioError, int_in

PAPER_EPOCHS = 200
# Table 2 of the paper, by 0-based epoch e: the factor applies once e > boundary.
PAPER_BOUNDARIES = (80, 120, 160, 180)
PAPER_FACTORS = (1e-1, 1e-2, 1e-3, 5e-4)
# The paper trained on all 50,000 images at batch 32: 1,563 steps per epoch with the last partial
# batch, which seratio keeps (the authors' script dropped it: 1,562), the reference for BN below.

# Test-time augmentation: the views (flipped?, dy, dx) whose softmax a final evaluation averages,
# shifted with the same edge fill as training (`augment.view_batch`). "flip-shift" was chosen on the
# validation set of two 40-epoch `fast` runs (benchmarks/RESULTS.md).
View = tuple[bool, int, int]
TTA_VIEWS: dict[str, tuple[View, ...]] = {
    "none": ((False, 0, 0),),
    "flip": ((False, 0, 0), (True, 0, 0)),
    "flip-shift": tuple((flip, d, d) for flip in (False, True) for d in (0, 1, -1)),
}
# Fields that change no per-epoch number and none that studies average (test-time augmentation
# only adds `tta_*` fields to result.json), so runs made before they existed keep their hash.
_NOT_HASHED = ("tta",)


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str
    lr: float
    batch_size: int
    epochs: int
    # Coupled L2 in torch terms on conv/FC kernels only: Keras l2(1e-4) adds 1e-4 * w^2 to
    # the loss, whose gradient 2e-4 * w is exactly torch's weight_decay=2e-4.
    weight_decay: float
    schedule: str
    adam_eps: float = 1e-7
    momentum: float = 0.0
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    flip_p: float = 0.5
    max_shift: int = 3
    cuda_bf16: bool = False
    cuda_channels_last: bool = False
    # BN running-average momentum per step (torch convention), defined for an epoch of
    # `bn_reference_steps` steps; 0 steps means the momentum is fixed.
    bn_momentum: float = 0.1
    bn_reference_steps: int = 0
    tta: str = "none"

    def __post_init__(self) -> None:
        if self.tta not in TTA_VIEWS:
            raise SeratioError(f"test-time augmentation {self.tta!r} is unknown; allowed: {', '.join(TTA_VIEWS)}")

    def lr_at(self, epoch: int, progress: float = 0.0) -> float:
        """Learning rate during 0-based `epoch`, `progress` in (0, 1] through it."""
        if self.schedule == "paper":
            return self.lr * _paper_factor(epoch, self.epochs)
        return self.lr * _warmup_linear_factor(epoch + progress, self.warmup_epochs, self.epochs)

    def bn_momentum_for(self, steps_per_epoch: int) -> float:
        """Keep the BN average's horizon the same fraction of an epoch as at the reference length.

        Keras's momentum 0.99 averages over ~100 steps, 7% of the paper's 1,563-step epoch. On a
        small subset the same per-step value would average over several epochs of a fast-changing
        network and leave evaluation near chance, so shorter epochs get a proportionally faster
        average; at full size the value is exactly Keras's.
        """
        if not self.bn_reference_steps or steps_per_epoch >= self.bn_reference_steps:
            return self.bn_momentum
        return 1 - (1 - self.bn_momentum) ** (self.bn_reference_steps / steps_per_epoch)

    def steps_per_epoch(self, train_images: int) -> int:
        """Updates per epoch: the last, partial batch is still a step."""
        return math.ceil(train_images / self.batch_size)

    def step_lr(self, epoch: int, step: int, steps: int) -> float:
        """The learning rate of 0-based update `step` of `steps` in `epoch`, for schedules that move
        within an epoch: the position is where the update ends, so the last one reaches the epoch's end."""
        return self.lr_at(epoch, (step + 1) / steps)

    def mean_lr(self, epoch: int, steps: int) -> float:
        """The learning rate averaged over the `steps` updates of 0-based `epoch`, for the metrics.

        Why not the value at the epoch's start: `fast` warms up from 0 every step, so its first
        epoch would read as lr 0.0, as if nothing had trained.
        """
        if not self.steps_lr_within_epoch():
            return self.lr_at(epoch)
        return math.fsum(self.step_lr(epoch, step, steps) for step in range(steps)) / steps

    def steps_lr_within_epoch(self) -> bool:
        return self.schedule != "paper"

    def fingerprint(self) -> str:
        """Short hash of every field that decides training and the recorded metrics, so runs of
        different recipes are never averaged silently."""
        fields = {key: value for key, value in asdict(self).items() if key not in _NOT_HASHED}
        payload = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:12]


def _paper_factor(epoch: int, epochs: int) -> float:
    """Table 2, with the boundaries scaled in proportion when the run is shorter or longer."""
    factor = 1.0
    for boundary, value in zip(PAPER_BOUNDARIES, PAPER_FACTORS):
        if epoch > math.floor(boundary * epochs / PAPER_EPOCHS):
            factor = value
    return factor


def _warmup_linear_factor(position: float, warmup: float, epochs: int) -> float:
    if warmup > 0 and position < warmup:
        return position / warmup
    return max(0.0, (epochs - position) / max(epochs - warmup, 1e-9))


RECIPES: dict[str, Recipe] = {
    "paper": Recipe(
        name="paper",
        optimizer="adam",
        lr=1e-3,
        batch_size=32,
        epochs=PAPER_EPOCHS,
        weight_decay=2e-4,
        schedule="paper",
        bn_momentum=0.01,
        bn_reference_steps=1563,
    ),
    "fast": Recipe(
        name="fast",
        optimizer="sgd",
        lr=0.2,
        batch_size=256,
        epochs=50,
        weight_decay=5e-4,
        schedule="warmup-linear",
        momentum=0.9,
        warmup_epochs=2.0,
        label_smoothing=0.1,
        cuda_bf16=True,
        cuda_channels_last=True,
        tta="flip-shift",
    ),
}


MAX_EPOCHS = 10_000
"""50 times the paper's 200: a slip of the keyboard must not start a run that never ends."""
MAX_BATCH_SIZE = 60_000
"""Above the largest training set seratio reads (CIFAR's 50,000): a larger batch is the same full-batch step."""
MAX_LR = 1e6
"""Far above any rate that trains; far above float32's range (3.4e38) an optimizer cannot even store it."""


def get_recipe(
    name: str, *, epochs: int | None = None, batch_size: int | None = None, lr: float | None = None
) -> Recipe:
    """The named recipe with user overrides. A shorter or longer run scales its schedule: the paper
    schedule's boundaries, and `fast`'s warm-up (2 of 50 epochs), which would otherwise fill a
    2-epoch run and leave it no decay."""
    if name not in RECIPES:
        raise SeratioError(f"unknown recipe {name!r}; allowed: {', '.join(RECIPES)}")
    if epochs is not None and not int_in(epochs, 1, MAX_EPOCHS):
        raise SeratioError(f"epochs {epochs!r} must be an integer from 1 to {MAX_EPOCHS:,}")
    if batch_size is not None and not int_in(batch_size, 1, MAX_BATCH_SIZE):
        raise SeratioError(f"batch size {batch_size!r} must be an integer from 1 to {MAX_BATCH_SIZE:,}")
    if lr is not None and not (isinstance(lr, (int, float)) and 0 < lr <= MAX_LR):
        raise SeratioError(f"learning rate {lr!r} must be a finite number > 0 and <= {MAX_LR:g}")
    recipe = RECIPES[name]
    overrides: dict[str, Any] = {"epochs": epochs, "batch_size": batch_size, "lr": lr}
    if epochs is not None:
        overrides["warmup_epochs"] = recipe.warmup_epochs * epochs / recipe.epochs
    return replace(recipe, **{k: v for k, v in overrides.items() if v is not None})
