"""A model and a data set of your own, plugged into a recipe as components:

    model:
      component: "examples.custom_model:build"     # module path : factory
      kwargs: {hidden: 64}
    data:
      dataset: component
      component: "examples.custom_model:stripes"
      kwargs: {train: 512, val: 128}

hvdtrain calls ``build(input_shape=(C, H, W), num_classes=N, **kwargs)`` on every rank and expects an
``nn.Module``; ``stripes(**kwargs)`` must return ``(train_dataset, val_dataset, num_classes)``, each
item an ``(image tensor, class index)`` pair. The module is found from the directory you start
hvdtrain in (horovodrun starts the workers there too) or from PYTHONPATH.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyMLPConv(nn.Module):
    """One 3x3 convolution, global pooling and a two-layer head: small enough to train in seconds."""

    def __init__(self, channels: int, classes: int, hidden: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(hidden * 16, hidden), nn.ReLU(),
                                  nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


def build(input_shape: tuple[int, int, int], num_classes: int, hidden: int = 32) -> nn.Module:
    return TinyMLPConv(input_shape[0], num_classes, hidden)


class Stripes(torch.utils.data.Dataset):
    """16x16 single-channel images of horizontal (class 0) or vertical (class 1) stripes, noisy."""

    def __init__(self, count: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 2, (count,), generator=g)
        base = (torch.arange(16) % 4 < 2).float()
        rows, cols = base.view(16, 1).expand(16, 16), base.view(1, 16).expand(16, 16)
        clean = torch.where(self.labels.view(-1, 1, 1) == 0, rows, cols)
        self.images = (clean + 0.8 * torch.randn(count, 16, 16, generator=g)).unsqueeze(1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def stripes(train: int = 512, val: int = 128) -> tuple[Stripes, Stripes, int]:
    return Stripes(train, seed=1), Stripes(val, seed=2), 2
