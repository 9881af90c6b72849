"""The CNNs a recipe can name: a small CNN for 1-channel 8x8 / 28x28 input, a ResNet-style CNN for
3x32x32, a ResNet-18 for image folders (ImageNet-style stem), or your own (``model.component``).
All adapt to the data set's input shape and class count."""

from __future__ import annotations

import torch
from torch import nn

from hvdtrain.recipe import ModelConfig


class SmallCNN(nn.Module):
    """conv-conv-pool-conv, global 2x2 pool, two linear layers: ~90k parameters at width 32."""

    def __init__(self, in_ch: int, classes: int, width: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(8 * w, 128), nn.ReLU(inplace=True),
            nn.Linear(128, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCNN(nn.Module):
    """CIFAR-style ResNet: a stem, three stages (width, 2x, 4x; stride 2 between), global pool.
    ``imagenet_stem``/``stages=4``: the ResNet-18 shape (7x7/2 conv + max pool, four stages)."""

    def __init__(self, in_ch: int, classes: int, width: int = 16, depth: int = 2,
                 dropout: float = 0.0, stages: int = 3, imagenet_stem: bool = False) -> None:
        super().__init__()
        if imagenet_stem:
            self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        layers, cin = [], width
        for stage, cout in enumerate(width * 2**i for i in range(stages)):
            for block in range(depth):
                layers.append(BasicBlock(cin, cout, 2 if stage > 0 and block == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(cin, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], classes: int) -> nn.Module:
    if cfg.component:
        from hvdtrain.worker.components import build_component_model

        return build_component_model(cfg.component, cfg.kwargs, input_shape, classes)
    in_ch = input_shape[0]
    if cfg.arch == "small_cnn":
        return SmallCNN(in_ch, classes, cfg.width, cfg.dropout)
    if cfg.arch == "resnet18":  # width 64, depth 2: torchvision's resnet18 layout
        return ResNetCNN(in_ch, classes, cfg.width, cfg.depth, cfg.dropout, stages=4,
                         imagenet_stem=True)
    return ResNetCNN(in_ch, classes, cfg.width, cfg.depth, cfg.dropout)
