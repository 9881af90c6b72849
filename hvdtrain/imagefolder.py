"""The image-folder layout (ImageNet / ImageFolder style), read with the standard library only, so
the launcher can check a data directory and count its images before anything starts, and every
rank derives the same class list from it::

    DATA_DIR/train/<class>/*.{jpg,jpeg,png,bmp,webp}   (any case)
    DATA_DIR/val/<class>/*

Class index = position in the sorted list of ``train/`` folder names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hvdtrain.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LAYOUT = "DATA_DIR/train/<class>/<image> and DATA_DIR/val/<class>/<image>"


@dataclass(frozen=True)
class Folder:
    classes: list[str]
    train: list[tuple[str, int]]  # (path, class index), sorted by path
    val: list[tuple[str, int]]


def _images(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if not p.name.startswith(".")
                  and p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def class_names(split_dir: Path) -> list[str]:
    """One split's class folders, sorted (in ``train/``: class index = position). Hidden
    folders (``.ipynb_checkpoints``, ``.git``) are never classes."""
    return sorted(p.name for p in split_dir.iterdir()
                  if p.is_dir() and not p.name.startswith("."))


def _readable(folder: Path, problems: list[str], call):  # noqa: ANN001, ANN202 - a listing
    try:
        return call(folder)
    except OSError as exc:
        problems.append(f"{folder}: cannot read it ({exc.strerror}): check its permissions")
        return None


def _split(root: Path, split: str, problems: list[str]) -> dict[str, list[str]]:
    """Class name -> image paths of one split; problems are appended, not raised."""
    folder = root / split
    if not folder.is_dir():
        problems.append(f"{folder}: missing: the layout is {LAYOUT}")
        return {}
    names = _readable(folder, problems, class_names)
    if names is None:
        return {}
    listed = {name: _readable(folder / name, problems, _images) for name in names}
    classes = {name: paths or [] for name, paths in listed.items()}  # unreadable: named above
    if not listed:
        problems.append(f"{folder}: no class folders: put each class's images in "
                        f"{folder}/<class>/")
    for name, paths in listed.items():
        if paths == []:
            problems.append(f"{folder / name}: no images ({', '.join(IMAGE_SUFFIXES)}): add "
                            "some or remove the folder")
    return classes


def scan(data_dir: str | Path) -> Folder:
    """Read and check the layout; raises ``UserError`` listing every problem."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"image folder not found: {root} (data.data_dir; the layout is {LAYOUT})")
    problems: list[str] = []
    train, val = _split(root, "train", problems), _split(root, "val", problems)
    for name in sorted(set(val) - set(train)):
        problems.append(f"{root / 'val' / name}: class {name!r} is not in {root / 'train'}: every "
                        "validation class needs training images")
    if problems:
        raise UserError(f"image folder {root} is not usable ({len(problems)} problem"
                        f"{'s' if len(problems) > 1 else ''}):", problems)
    classes = sorted(train)
    index = {name: i for i, name in enumerate(classes)}
    return Folder(classes,
                  [(p, index[c]) for c in classes for p in train[c]],
                  [(p, index[c]) for c in sorted(val) for p in val[c]])


def labelled(data_dir: str | Path, classes: list[str]) -> list[tuple[str, int]]:
    """(path, class index) of the images in ``DATA_DIR/<class>/`` (or ``DATA_DIR/val/<class>/``
    when DATA_DIR holds a ``val/`` folder), indexed by a trained model's ``classes``: matched by
    name, so a folder may hold fewer classes; one the model does not know is refused."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"data folder not found: {root}: give a folder of DIR/<class>/<image> "
                        "(or one holding val/<class>/<image>)")
    if (root / "val").is_dir() and "val" not in classes:
        root = root / "val"
    problems: list[str] = []
    names = _readable(root, problems, class_names) or []
    unknown = [n for n in names if n not in classes]
    if unknown:
        problems.append(f"{root}: class folder(s) {', '.join(map(repr, unknown))} are not classes "
                        f"of the model (it knows {', '.join(classes)}): remove or rename them")
    found = {n: _readable(root / n, problems, _images) or [] for n in names if n in classes}
    if not names:
        problems.append(f"{root}: no class folders: put each class's images in {root}/<class>/")
    problems += [f"{root / n}: no images ({', '.join(IMAGE_SUFFIXES)})" for n, p in found.items()
                 if not p]
    if problems:
        raise UserError(f"data folder {root} cannot be scored ({len(problems)} problem"
                        f"{'s' if len(problems) > 1 else ''}):", problems)
    return [(p, classes.index(n)) for n in sorted(found) for p in found[n]]
