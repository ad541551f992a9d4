"""CIFAR ResNet / SE-ResNet family (depth 6n+2) with one reduction ratio per stage, as torch modules.

The shapes come from `seratio.architecture`, which holds the model's configuration without torch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from seratio.architecture import STAGE_CHANNELS, STEM_CHANNELS, Block, ModelConfig, blocks

# Keras BatchNormalization's epsilon, as the paper's TensorFlow code used; the running-average
# momentum is the recipe's (see `set_bn_momentum`).
BN_EPS = 1e-3


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

    def __init__(self, block: Block) -> None:
        super().__init__()
        cin, cout, stride, se_width = block
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = _bn(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = _bn(cout)
        self.se = SqueezeExcite(cout, se_width) if se_width is not None else nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if block.projects:
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
        self.blocks = nn.Sequential(*(BasicBlock(block) for block in blocks(config)))
        self.fc = nn.Linear(STAGE_CHANNELS[-1], config.num_classes)
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
    """The torch model, He-initialised as training builds it; `count_params(config)` equals its
    parameter count (`tests/test_models.py`)."""
    return CifarResNet(config)


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = momentum


def kernel_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Conv and FC weight matrices: the tensors Keras-style L2 applies to (not BN, not biases)."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
