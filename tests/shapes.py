"""A small image folder for tests and the benchmark: four classes of distinct synthetic shapes and
colours, on noisy backgrounds, at several sizes, as PNG and JPEG, with grayscale (L), palette (P)
and RGBA images among them. ``python tests/shapes.py DIR [PER_CLASS]`` writes one."""

from __future__ import annotations

import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

CLASSES = {"circle": (220, 40, 40), "cross": (240, 200, 30), "square": (40, 180, 60),
           "triangle": (40, 80, 230)}


def draw(shape: str, size: int, rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (size, size), tuple(rng.randint(0, 60) for _ in range(3)))
    d = ImageDraw.Draw(img)
    for _ in range(size // 4):  # speckle noise
        x, y = rng.randrange(size), rng.randrange(size)
        d.point((x, y), fill=tuple(rng.randint(0, 90) for _ in range(3)))
    r = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    color = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in CLASSES[shape])
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        d.ellipse(box, fill=color)
    elif shape == "square":
        d.rectangle(box, fill=color)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    else:
        w = max(2, r // 3)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=color)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=color)
    return img


def write_folder(root: Path, per_class: int = 60, val_per_class: int = 20, seed: int = 0,
                 sizes: tuple[int, ...] = (40, 48, 64, 80)) -> Path:
    """DATA_DIR/{train,val}/<class>/*.png|jpg, images ``sizes`` pixels square; returns ``root``."""
    rng = random.Random(seed)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for shape in CLASSES:
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = draw(shape, rng.choice(sizes), rng)
                if i % 3 == 0:
                    img.save(folder / f"{i:04d}.JPG", quality=90)  # upper-case suffix too
                    continue
                if i % 17 == 5:
                    img = img.convert("RGBA")
                elif i % 19 == 7:
                    img = img.convert("P")
                img.save(folder / f"{i:04d}.png")
    # one grayscale image per split: still a shape the colour-blind model can see
    draw("square", 48, rng).convert("L").save(root / "train" / "square" / "gray.png")
    draw("circle", 48, rng).convert("L").save(root / "val" / "circle" / "gray.png")
    return root


if __name__ == "__main__":
    write_folder(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 60)
