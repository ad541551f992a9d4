"""CIFAR ResNet / SE-ResNet family (depth 6n+2) with one reduction ratio per stage.

The SE hidden width is floor(c / r) with no rounding: rounding to multiples of
8 (timm's default) would map every ratio from 2 to 32 on 16 channels to the
same width and collapse the search space this tool exists to explore.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from seratio.errors import SeratioError

STAGE_CHANNELS = (16, 32, 64)
STEM_CHANNELS = 16
# Keras BatchNormalization's epsilon, as the paper's TensorFlow code used; the running-average
# momentum is the recipe's (see `set_bn_momentum`).
BN_EPS = 1e-3

Ratio = int | None
Ratios = tuple[Ratio, ...]


def _parse_one(token: str | int | None, stage: int) -> Ratio:
    if token is None or (isinstance(token, str) and token.strip().lower() in {"none", "-"}):
        return None
    text = str(token).strip()
    try:
        value = int(text)
    except ValueError:
        raise SeratioError(
            f"stage {stage}: reduction ratio {text!r} is not an integer; use an integer >= 1 or 'none'"
        ) from None
    if value < 1:
        raise SeratioError(f"stage {stage}: reduction ratio {value} is < 1; use an integer >= 1 or 'none'")
    return value


def parse_rr(spec: str | Sequence[str | int | None], stages: int = len(STAGE_CHANNELS)) -> Ratios:
    """Parse '8,2,16', 'none' or a sequence into one ratio per stage.

    A single value applies to every stage, so `--rr none` is the plain ResNet
    and `--rr 8` is the constant (8, 8, 8).
    """
    tokens = spec.split(",") if isinstance(spec, str) else list(spec)
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
    depth: int = 50
    rr: Ratios = (None, None, None)
    num_classes: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.depth, int) or not 8 <= self.depth <= MAX_DEPTH or (self.depth - 2) % 6:
            raise SeratioError(
                f"depth {self.depth!r} is not 6n+2 with 1 <= n <= {(MAX_DEPTH - 2) // 6}; "
                f"allowed: 8, 14, 20, 26, 32, 38, 44, 50, 56, ..., {MAX_DEPTH}"
            )
        if not isinstance(self.num_classes, int) or not 2 <= self.num_classes <= MAX_CLASSES:
            raise SeratioError(f"number of classes {self.num_classes!r} must be an integer from 2 to {MAX_CLASSES}")
        object.__setattr__(self, "rr", parse_rr(list(self.rr)))
        se_hidden(self)

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6


def se_hidden(config: ModelConfig) -> list[int | None]:
    """Hidden width c // r per stage; a width of 0 is an error naming stage, c and r."""
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


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        return x * scale[:, :, None, None]


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, SE on the residual branch, add the shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, se_width: int | None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = _bn(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = _bn(cout)
        self.se = SqueezeExcite(cout, se_width) if se_width is not None else nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _bn(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.stem = nn.Sequential(_conv3x3(3, STEM_CHANNELS), _bn(STEM_CHANNELS), nn.ReLU())
        blocks: list[nn.Module] = []
        cin = STEM_CHANNELS
        for stage, (cout, width) in enumerate(zip(STAGE_CHANNELS, se_hidden(config))):
            for index in range(config.blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(cin, cout, stride, width))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, config.num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(x))
        return self.fc(features.mean((2, 3)))


def _he_normal_(weight: torch.Tensor) -> None:
    """Keras `he_normal`: truncated normal at 2 sd, sd sqrt(2 / fan_in) corrected for truncation."""
    fan_in = weight[0].numel()
    std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std)


def _init_weights(model: nn.Module) -> None:
    """He-normal for convs and the classifier (the paper's Keras code); Keras defaults for SE FCs."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            _he_normal_(module.weight)
        elif isinstance(module, nn.Linear):
            if module is getattr(model, "fc", None):
                _he_normal_(module.weight)
            else:
                nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)


def build_model(config: ModelConfig) -> CifarResNet:
    return CifarResNet(config)


def count_params(config: ModelConfig) -> int:
    """Built on the meta device: shapes only, no memory and no initialisation, so any depth is instant."""
    with torch.device("meta"):
        model = build_model(config)
    return sum(p.numel() for p in model.parameters())


def count_macs(config: ModelConfig, image_size: int = 32) -> int:
    """Multiply-accumulates of one forward pass of one image, convs and FCs only."""
    size = image_size
    macs = size * size * 9 * 3 * STEM_CHANNELS
    cin = STEM_CHANNELS
    for stage, (cout, width) in enumerate(zip(STAGE_CHANNELS, se_hidden(config))):
        for index in range(config.blocks_per_stage):
            stride = 2 if stage > 0 and index == 0 else 1
            size //= stride
            macs += size * size * 9 * (cin * cout + cout * cout)
            if stride != 1 or cin != cout:
                macs += size * size * cin * cout
            if width is not None:
                macs += 2 * cout * width
            cin = cout
    return macs + cin * config.num_classes


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = momentum


def kernel_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Conv and FC weight matrices: the tensors Keras-style L2 applies to (not BN, not biases)."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
