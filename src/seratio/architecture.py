"""The SE-ResNet family as numbers: depth, one reduction ratio per stage, SE widths, parameters and MACs.

Kept apart from the torch modules in `seratio.models` so that what only parses or checks a
configuration (`seratio --help`, `study status`, a config's validation) never pays the two seconds
of importing torch.

The SE hidden width is floor(c / r) with no rounding: rounding to multiples of
8 (timm's default) would map every ratio from 2 to 32 on 16 channels to the
same width and collapse the search space this tool exists to explore.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from seratio.errors import SeratioError, exact_int

STAGE_CHANNELS = (16, 32, 64)
STEM_CHANNELS = 16

Ratio = int | None
Ratios = tuple[Ratio, ...]
"""Reduction ratio per stage; None means no SE block in that stage."""


def is_integer_text(text: str) -> bool:
    """ASCII digits with an optional minus: Python's int() also reads '１６', '1_6' and '+2', which
    would let a typo through as another ratio."""
    return re.fullmatch(r"-?[0-9]+", text) is not None


def _parse_one(token: str | int | None, stage: int) -> Ratio:
    if token is None or (isinstance(token, str) and token.strip().lower() in {"none", "-"}):
        return None
    text = str(token).strip()
    try:
        if not is_integer_text(text):
            raise ValueError(text)
        value = int(text)
    except ValueError:  # also a number too long for int() (4,300 digits)
        raise SeratioError(
            f"stage {stage}: reduction ratio {text!r} is not an integer; use an integer >= 1 or 'none'"
        ) from None
    if value < 1:
        raise SeratioError(f"stage {stage}: reduction ratio {value} is < 1; use an integer >= 1 or 'none'")
    return value


def parse_rr(spec: str | int | None | Sequence[str | int | None], stages: int = len(STAGE_CHANNELS)) -> Ratios:
    """Parse '8,2,16', 'none', 8, None or a sequence into one ratio per stage.

    A single value applies to every stage, so `--rr none` (or None) is the plain ResNet
    and `--rr 8` (or 8) is the constant (8, 8, 8).
    """
    if isinstance(spec, str):
        tokens: list[Any] = spec.split(",")
    elif spec is None or isinstance(spec, numbers.Integral):
        tokens = [spec]
    elif isinstance(spec, Iterable):
        tokens = list(spec)
    else:
        raise SeratioError(f"reduction ratios {spec!r} are not a ratio or a sequence of them; e.g. 8, None, "
                           "(8, 2, 16) or '8,2,16'")
    if len(tokens) == 1:
        tokens = tokens * stages
    if len(tokens) != stages:
        raise SeratioError(
            f"reduction ratios {spec!r} give {len(tokens)} stages; the model has {stages} "
            f"(give one value for all stages or {stages} comma-separated values, e.g. 8,2,16)"
        )
    return tuple(_parse_one(token, stage) for stage, token in enumerate(tokens, start=1))


def format_rr(rr: Ratios) -> str:
    return ",".join("none" if r is None else str(r) for r in rr)


MAX_CLASSES = 100_000
"""Five times ImageNet-21k's classes; beyond that `info` would count parameters of a classifier no one trains."""
MAX_DEPTH = 3002
"""2.5x the deepest CIFAR ResNet published (1202 layers); deeper ones would take minutes just to build."""


@dataclass(frozen=True)
class ModelConfig:
    """A CIFAR (SE-)ResNet, checked when made: depth 6n+2 (50 is the paper's "ResNet-52", n = 8),
    one reduction ratio per stage (None: no SE there; `rr` takes what `parse_rr` does) and the
    classifier's classes."""

    depth: int = 50
    rr: Ratios = (None, None, None)
    num_classes: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "depth", exact_int(self.depth))
        object.__setattr__(self, "num_classes", exact_int(self.num_classes))
        if not isinstance(self.depth, int) or not 8 <= self.depth <= MAX_DEPTH or (self.depth - 2) % 6:
            raise SeratioError(
                f"depth {self.depth!r} is not 6n+2 with 1 <= n <= {(MAX_DEPTH - 2) // 6}; "
                f"allowed: 8, 14, 20, 26, 32, 38, 44, 50, 56, ..., {MAX_DEPTH}"
            )
        if not isinstance(self.num_classes, int) or not 2 <= self.num_classes <= MAX_CLASSES:
            raise SeratioError(f"number of classes {self.num_classes!r} must be an integer from 2 to {MAX_CLASSES}")
        object.__setattr__(self, "rr", parse_rr(self.rr))
        se_hidden(self)

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6


def se_hidden(config: ModelConfig) -> list[int | None]:
    """Hidden width c // r per stage; a width of 0 is an error naming stage, c and r. Every count
    and the torch model go through here, so a caller from Python who passes a run's config hears
    what to give instead of an AttributeError."""
    if not isinstance(config, ModelConfig):
        raise SeratioError(f"{type(config).__name__} {config!r:.60} is not a ModelConfig; "
                           "RunConfig.model_config() gives a run's")
    widths: list[int | None] = []
    for stage, (channels, ratio) in enumerate(zip(STAGE_CHANNELS, config.rr), start=1):
        if ratio is None:
            widths.append(None)
            continue
        if channels // ratio == 0:
            raise SeratioError(
                f"stage {stage} has {channels} channels; ratio {ratio} gives SE hidden width "
                f"{channels} // {ratio} = 0; use a ratio <= {channels} or 'none'"
            )
        widths.append(channels // ratio)
    return widths


class Block(NamedTuple):
    """One basic block: input and output channels, stride, and SE hidden width (None: no SE)."""

    cin: int
    cout: int
    stride: int
    se_width: int | None

    @property
    def projects(self) -> bool:
        """Whether the shortcut is a 1x1 conv with BN instead of the identity."""
        return self.stride != 1 or self.cin != self.cout


def blocks(config: ModelConfig) -> Iterator[Block]:
    """The residual blocks in order, the one layout that the torch model and both counts below follow."""
    cin = STEM_CHANNELS
    for stage, (cout, width) in enumerate(zip(STAGE_CHANNELS, se_hidden(config))):
        for index in range(config.blocks_per_stage):
            yield Block(cin, cout, 2 if stage > 0 and index == 0 else 1, width)
            cin = cout


def count_params(config: ModelConfig) -> int:
    """Trainable parameters, counted from the shapes: convs have no bias, BN has a scale and a shift
    per channel, the SE and classifier FCs have biases. `tests/test_models.py` checks the count
    against the built torch model; counting here keeps `seratio info` free of torch."""
    params = 9 * 3 * STEM_CHANNELS + 2 * STEM_CHANNELS
    for block in blocks(config):
        params += 9 * (block.cin * block.cout + block.cout * block.cout) + 4 * block.cout
        if block.projects:
            params += block.cin * block.cout + 2 * block.cout
        if block.se_width is not None:
            params += 2 * block.cout * block.se_width + block.se_width + block.cout
    return params + (STAGE_CHANNELS[-1] + 1) * config.num_classes


def count_macs(config: ModelConfig, image_size: int = 32) -> int:
    """Multiply-accumulates of one forward pass of one image, convs and FCs only."""
    size = image_size
    macs = size * size * 9 * 3 * STEM_CHANNELS
    for block in blocks(config):
        size //= block.stride
        macs += size * size * 9 * (block.cin * block.cout + block.cout * block.cout)
        if block.projects:
            macs += size * size * block.cin * block.cout
        if block.se_width is not None:
            macs += 2 * block.cout * block.se_width
    return macs + STAGE_CHANNELS[-1] * config.num_classes
