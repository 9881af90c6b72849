"""Image folders, transforms, bad images, components and device choice, without horovodrun."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from shapes import CLASSES, write_folder

from hvdtrain.errors import UserError
from hvdtrain.imagefolder import scan
from hvdtrain.recipe import DataConfig
from hvdtrain.worker.components import build_component_model, data_component
from hvdtrain.worker.data import DataError
from hvdtrain.worker.devices import Seen, choose_device
from hvdtrain.worker.images import BadImage, ImageDataset, center_box, collate, random_crop_box
from hvdtrain.worker.sources import Loaded, open_source


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("shapes"), per_class=6, val_per_class=3)


def test_scan_reads_the_layout_with_sorted_classes(folder: Path) -> None:
    found = scan(folder)
    assert found.classes == sorted(CLASSES)
    assert len(found.train) == 4 * 6 + 1 and len(found.val) == 4 * 3 + 1  # + one gray image each
    assert any(p.endswith(".JPG") for p, _ in found.train)  # suffixes in any case
    assert {label for _, label in found.train} == {0, 1, 2, 3}
    assert all(Path(p).parent.name == found.classes[label] for p, label in found.train)


def test_hidden_folders_are_never_classes_and_the_plan_lists_the_classes(folder: Path, tmp_path,
                                                                         in_cli) -> None:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(folder, copy)
    for split in ("train", "val"):  # what Jupyter and editors leave behind
        (copy / split / ".ipynb_checkpoints").mkdir()
        Image.new("RGB", (8, 8)).save(copy / split / ".ipynb_checkpoints" / "x.png")
        Image.new("RGB", (8, 8)).save(copy / split / sorted(CLASSES)[0] / ".hidden.png")
    found = scan(copy)
    assert found.classes == sorted(CLASSES) and len(found.train) == len(scan(folder).train)
    small = [f"data.data_dir={copy}", "data.batch_size=4"]
    planned = in_cli("plan", "imagefolder-resnet", *small, "--json")
    assert json_of(planned)["classes"] == sorted(CLASSES)
    text = in_cli("plan", "imagefolder-resnet", *small).stdout
    assert f"classes        4: {', '.join(sorted(CLASSES))}\n" in text


def json_of(proc) -> dict:  # noqa: ANN001
    import json

    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_an_unreadable_class_folder_is_named(folder: Path, tmp_path: Path, monkeypatch) -> None:
    """(As root nothing is unreadable: the listing is made to fail as it does for other users.)"""
    locked = folder / "train" / sorted(CLASSES)[1]
    real = Path.iterdir

    def iterdir(self: Path):  # noqa: ANN202
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(UserError) as info:
        scan(folder)
    assert info.value.lines() == [
        f"image folder {folder} is not usable (1 problem):",
        f"{locked}: cannot read it (Permission denied): check its permissions"]


def test_bench_counts_the_classes_scan_would_use(folder: Path, tmp_path: Path) -> None:
    from hvdtrain.launcher.bench import image_classes
    from hvdtrain.recipe_files import load_recipe

    def classes(data_dir: Path) -> int | None:
        return image_classes(load_recipe("imagefolder-resnet", [f"data.data_dir={data_dir}"]).recipe)

    assert classes(folder) == len(scan(folder).classes) == 4
    for name in ("b", "a", "c"):
        (tmp_path / "train" / name).mkdir(parents=True)
    (tmp_path / "train" / "notes.txt").write_text("a file, not a class")
    assert classes(tmp_path) == 3
    assert classes(tmp_path / "elsewhere") is None  # not here: the bench assumes 10


def test_scan_reports_every_layout_problem(tmp_path: Path) -> None:
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "dog").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "dog" / "a.png")
    (tmp_path / "val" / "bird").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "bird" / "b.png")
    with pytest.raises(UserError) as info:
        scan(tmp_path)
    assert str(info.value) == f"image folder {tmp_path} is not usable (2 problems):"
    assert info.value.problems == [
        f"{tmp_path}/train/cat: no images (.jpg, .jpeg, .png, .bmp, .webp): add some or remove "
        "the folder",
        f"{tmp_path}/val/bird: class 'bird' is not in {tmp_path}/train: every validation class "
        "needs training images"]
    with pytest.raises(UserError, match=r"^image folder not found: .*/nope \(data.data_dir"):
        scan(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as info:
        scan(empty)
    assert info.value.problems == [
        f"{empty}/train: missing: the layout is DATA_DIR/train/<class>/<image> and "
        "DATA_DIR/val/<class>/<image>",
        f"{empty}/val: missing: the layout is DATA_DIR/train/<class>/<image> and "
        "DATA_DIR/val/<class>/<image>"]


def test_crop_boxes_stay_inside_and_cover_the_asked_area() -> None:
    gen = torch.Generator().manual_seed(0)
    for w, h in ((64, 48), (40, 200), (7, 9)):
        for _ in range(50):
            left, top, right, bottom = random_crop_box(w, h, gen)
            assert 0 <= left < right <= w and 0 <= top < bottom <= h
            area = (right - left) * (bottom - top)
            assert area <= w * h and (area >= 0.08 * w * h * 0.5 or min(w, h) < 10)
    assert center_box(100, 60) == (24, 4, 76, 56)  # 87.5 % of the shorter side, centred


def test_every_mode_becomes_a_normalised_rgb_tensor(tmp_path: Path) -> None:
    samples = []
    for i, mode in enumerate(("L", "P", "RGBA", "CMYK", "RGB")):
        path = tmp_path / f"{i}.{'jpg' if mode == 'CMYK' else 'png'}"
        Image.new(mode, (30 + i, 20)).save(path)
        samples.append((str(path), i))
    train = ImageDataset(samples, 16, True, True, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    evals = ImageDataset(samples, 16, False, True, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    for ds in (train, evals):
        for i in range(len(samples)):
            x, label = ds[i]
            assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and label == i
            assert x.min() >= -1.0 and x.max() <= 1.0


def test_a_broken_image_is_data_not_an_exception(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("RGB", (8, 8)).save(good)
    bad.write_bytes(b"\x89PNG not really")
    ds = ImageDataset([(str(good), 0), (str(bad), 1)], 8, False, False, (0, 0, 0), (1, 1, 1))
    item = ds[1]
    assert isinstance(item, BadImage) and item.path == str(bad)
    x, y, skipped = collate([ds[0], ds[1]])
    assert x.shape == (1, 3, 8, 8) and y.tolist() == [0] and skipped == [item]


def test_bad_image_stop_names_the_file_and_skip_counts_it(folder: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(folder, root)
    broken = root / "train" / "circle" / "0001.png"
    broken.write_bytes(b"not an image")
    for mode in ("stop", "skip"):
        cfg = DataConfig(dataset="imagefolder", data_dir=str(root), image_size=16, batch_size=4,
                         on_bad_image=mode)
        source = open_source(cfg, 0, pin_memory=False)
        index = next(i for i, (p, _) in enumerate(source.train.samples) if p == str(broken))
        if mode == "stop":
            with pytest.raises(DataError, match=rf"^cannot decode image {broken} \(.*\): fix or "
                                                r"remove the file, or set data.on_bad_image: skip$"):
                list(source.train_batches([0, index, 2]))
        else:
            batches = list(source.train_batches([0, index, 2]))
            assert [len(y) for _, y in batches] == [2]
            assert [b.path for b in source.take_skipped()] == [str(broken)]
            assert source.take_empty() == 0
            empty = list(source.train_batches([index]))  # no image decoded: shaped, empty
            assert [tuple(x.shape) for x, _ in empty] == [(0, 3, 16, 16)]
            assert source.take_empty() == 1 and source.take_empty() == 0  # counted once
    first = Path(scan(root).train[0][0])  # the shape comes from the first image that decodes
    first.write_bytes(b"not an image")
    for mode in ("stop", "skip"):
        cfg = DataConfig(dataset="imagefolder", data_dir=str(root), image_size=16, batch_size=4,
                         on_bad_image=mode)
        if mode == "stop":
            with pytest.raises(DataError, match=rf"^cannot decode image {first} "):
                open_source(cfg, 0, pin_memory=False)
        else:
            assert open_source(cfg, 0, pin_memory=False).input_shape == (3, 16, 16)


def test_loader_workers_keep_the_batches_and_their_order(folder: Path) -> None:
    def labels(workers: int) -> list[list[int]]:
        cfg = DataConfig(dataset="imagefolder", data_dir=str(folder), image_size=16,
                         batch_size=5, loader_workers=workers, augment=False)
        source = open_source(cfg, 0, pin_memory=False)
        order = [3, 1, 20, 7, 11, 0, 5]
        return [y.tolist() for _ in range(2) for _, y in source.train_batches(order)]

    assert labels(2) == labels(0)


def test_components_are_built_and_their_mistakes_named(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "mine.py").write_text(
        "import torch\n"
        "def good(input_shape, num_classes, width=4):\n"
        "    return torch.nn.Linear(input_shape[0], num_classes)\n"
        "def not_a_module(input_shape, num_classes):\n    return 42\n"
        "def boom(**kw):\n    raise ValueError('no data here')\n"
        "def three(): return ([1], [], 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # components come from the start directory (or PYTHONPATH)
    monkeypatch.delenv("HVDTRAIN_COMPONENT_PACKAGES", raising=False)
    model = build_component_model("mine:good", {"width": 8}, (3, 4, 4), 5)
    assert isinstance(model, torch.nn.Linear) and model.out_features == 5
    cases = [
        (lambda: build_component_model("mine:not_a_module", {}, (3, 4, 4), 5),
         "model.component 'mine:not_a_module' returned int, not a torch.nn.Module"),
        (lambda: build_component_model("mine:missing", {}, (3, 4, 4), 5),
         "model.component 'mine:missing': mine has no callable 'missing'"),
        (lambda: data_component("mine:boom", {}),
         "data.component 'mine:boom' raised ValueError: no data here"),
        (lambda: data_component("mine:three", {}),
         "data.component 'mine:three': its val_dataset is not a non-empty dataset (an object with "
         "__len__ and __getitem__)"),
        (lambda: data_component("nosuchmodule_xyz:f", {}),
         f"data.component 'nosuchmodule_xyz:f': module nosuchmodule_xyz not found from {tmp_path} "
         "or PYTHONPATH: run hvdtrain from the directory that holds it (workers start in the same "
         "directory), or add its folder to PYTHONPATH"),
        # the standard library and installed packages are not the user's project
        (lambda: data_component("subprocess:run", {"args": "touch x", "shell": True}),
         f"data.component 'subprocess:run': module subprocess is not part of your project "
         f"({tmp_path} or PYTHONPATH): it is installed ({subprocess_file()}). A recipe's "
         "components run only your own code; to use an installed package, name it when you run "
         "hvdtrain: HVDTRAIN_COMPONENT_PACKAGES=subprocess"),
    ]
    for call, message in cases:
        with pytest.raises(UserError) as info:
            call()
        assert str(info.value) == message
    assert not (tmp_path / "x").exists()
    monkeypatch.setenv("HVDTRAIN_COMPONENT_PACKAGES", "json")  # named by the user: allowed
    with pytest.raises(UserError, match="^model.component 'json:loads' raised TypeError"):
        build_component_model("json:loads", {}, (3, 4, 4), 5)
    (tmp_path / "json.py").write_text("def build(**kw): pass\n")  # json is imported already
    monkeypatch.delenv("HVDTRAIN_COMPONENT_PACKAGES")
    with pytest.raises(UserError, match=f"^model.component 'json:build': {tmp_path}/json.py is "
                                        "shadowed by the module json already imported from "):
        build_component_model("json:build", {}, (3, 4, 4), 5)
    sys.modules.pop("mine", None)


def subprocess_file() -> str:
    import subprocess

    return subprocess.__file__


SEEN = dict(local_rank=1, local_size=2, host="node1")


@pytest.mark.parametrize(("setting", "precision", "cuda", "gpus", "expected"), [
    ("auto", "fp32", False, 0, "cpu"),
    ("auto", "bf16", True, 2, "cuda:1"),
    ("cpu", "fp32", True, 2, "cpu"),
    ("cuda", "fp16", True, 4, "cuda:1"),
    ("cuda", "fp32", False, 0, "train.device=cuda, but host node1 has no usable NVIDIA GPU: use "
                               "train.device=auto (CUDA where there is one, else CPU) or cpu"),
    ("auto", "fp32", True, 1, "2 ranks on host node1 but 1 GPU(s): hvdtrain runs one GPU per "
                              "process; give it at most 1 slot(s) (--np 1 on one machine), or set "
                              "train.device=cpu"),
    ("auto", "fp16", False, 0, "train.precision=fp16 needs CUDA (fp16 autocast on CPUs is slow and "
                               "unsupported for many ops), but host node1 has no usable NVIDIA "
                               "GPU: use train.precision=bf16 or fp32 on CPUs"),
])
def test_device_choice(setting: str, precision: str, cuda: bool, gpus: int, expected: str) -> None:
    seen = Seen(cuda_available=cuda, gpu_count=gpus, **SEEN)
    if expected == "cpu" or expected.startswith("cuda:"):
        assert str(choose_device(setting, precision, seen)) == expected
    else:
        with pytest.raises(UserError) as info:
            choose_device(setting, precision, seen)
        assert str(info.value) == expected


def test_loaded_source_reports_its_shape(folder: Path) -> None:
    cfg = DataConfig(dataset="imagefolder", data_dir=str(folder), image_size=24)
    source = open_source(cfg, 0, pin_memory=False)
    assert isinstance(source, Loaded)
    assert (source.input_shape, source.num_classes, source.classes) == (
        (3, 24, 24), 4, sorted(CLASSES))
