"""Images from files: decoded with Pillow in DataLoader worker processes, turned into normalised
tensors by a few small transforms (torchvision cannot be installed next to torch 2.13.0+cpu here).

Training: random-resized crop (scale 0.08-1, aspect 3/4-4/3, as in the ImageNet recipes) to
``image_size`` and a horizontal flip; evaluation: resize so the crop is 87.5 % of the shorter side,
then center crop. Crop and resize happen in one Pillow call. Any mode (L, P, RGBA, CMYK) becomes RGB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image, ImageOps

from hvdtrain.imagefolder import Folder


@dataclass(frozen=True)
class BadImage:
    """An image that failed to decode: the loader reports (stop) or counts (skip) it."""

    path: str
    reason: str


def random_crop_box(width: int, height: int, gen: torch.Generator | None = None,
                    scale: tuple[float, float] = (0.08, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop covering ``scale`` of the area with an aspect
    ratio in ``ratio``; after 10 failed tries, the largest central crop (as torchvision does)."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * torch.empty(1).uniform_(*scale, generator=gen).item()
        aspect = math.exp(torch.empty(1).uniform_(log_lo, log_hi, generator=gen).item())
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            return left, top, left + w, top + h
    return center_box(width, height, 1.0)


def center_box(width: int, height: int, fraction: float = 0.875) -> tuple[int, int, int, int]:
    """The central square whose side is ``fraction`` of the shorter side."""
    side = max(1, round(min(width, height) * fraction))
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def to_tensor(img: Image.Image, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """RGB image -> float (3, H, W), normalised per channel."""
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    x = data.view(img.height, img.width, 3).permute(2, 0, 1).float().div_(255)
    return (x - mean) / std


class ImageDataset(torch.utils.data.Dataset):
    """(image tensor, class index) for each file of one split; a file that fails to decode
    becomes a ``BadImage`` instead of an exception, so it crosses process boundaries as data."""

    def __init__(self, samples: list[tuple[str, int]], size: int, train: bool, augment: bool,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.samples, self.size, self.random = samples, size, train and augment
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | BadImage:
        path, label = self.samples[i]
        try:
            with Image.open(path) as raw:
                img = raw.convert("RGB")
        except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for a broken file
            return BadImage(path, f"{type(exc).__name__}: {exc}")
        box = (random_crop_box(*img.size) if self.random else center_box(*img.size))
        img = img.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
        if self.random and torch.rand(1).item() < 0.5:
            img = ImageOps.mirror(img)
        return to_tensor(img, self.mean, self.std), label


def collate(samples: list) -> tuple[torch.Tensor, torch.Tensor, list[BadImage]]:
    """A batch of the images that decoded, plus the ones that did not (runs in loader workers)."""
    good = [s for s in samples if not isinstance(s, BadImage)]
    bad = [s for s in samples if isinstance(s, BadImage)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad
    return (torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good]), bad)


def datasets(folder: Folder, size: int, augment: bool, mean: tuple[float, ...],
             std: tuple[float, ...]) -> tuple[ImageDataset, ImageDataset]:
    return (ImageDataset(folder.train, size, True, augment, mean, std),
            ImageDataset(folder.val, size, False, augment, mean, std))
