"""Image data for the lsmooth recipes: Oxford-IIIT Pets and two offline stand-ins.

Every dataset here uses the Pets layout: one flat folder of images named ``<label>_<n>.<ext>``
(``american_pit_bull_terrier_12.jpg``), the label being everything before the last ``_<n>``.

- ``pets``: Oxford-IIIT Pet via fastai's ``untar_data(URLs.PETS)``, labelled with the regex
  :data:`PETS_RE` (``^(.+)_\\d+\\.jpg$``, the one from the fastai lesson).
- ``digits``: scikit-learn's bundled handwritten digits as 8x8 RGB PNGs (:func:`make_digits`).
- ``tiny``: 37 real breed names, a few generated JPEGs each (:func:`make_tiny`), for fast tests.

The generic regex :data:`IMAGE_RE` accepts ``.jpg`` and ``.png``; on Pets (all ``.jpg``) it gives
the same labels as :data:`PETS_RE`.

The split is fastai's ``RandomSplitter(valid_pct=0.2, seed=42)`` applied to the file list *sorted
by name*, so it does not depend on the order in which a file system lists the folder. Label noise
(:func:`add_label_noise`) touches training labels only. ``data/README.md`` documents the datasets.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.core import DataLoaders
from fastai.data.external import URLs, untar_data
from fastai.data.transforms import RandomSplitter
from fastai.vision.augment import Resize, aug_transforms
from fastai.vision.core import PILImage
from fastai.vision.data import ImageBlock
from PIL import Image

__all__ = [
    "BREEDS",
    "CAT_BREEDS",
    "DOG_BREEDS",
    "IMAGE_RE",
    "NOISE_KINDS",
    "PETS_RE",
    "DataError",
    "ImageData",
    "RGBImage",
    "add_label_noise",
    "image_dataloaders",
    "label_from_name",
    "list_images",
    "load_image_folder",
    "make_digits",
    "make_tiny",
    "open_rgb",
    "pets_folder",
    "scan_images",
    "split_files",
]

PETS_RE = re.compile(r"^(.+)_\d+\.jpg$")
IMAGE_RE = re.compile(r"^(.+)_\d+\.(?:jpg|png)$")

# Oxford-IIIT Pet: cat breeds are capitalised, dog breeds lowercase (the file names say so).
CAT_BREEDS = (
    "Abyssinian", "Bengal", "Birman", "Bombay", "British_Shorthair", "Egyptian_Mau",
    "Maine_Coon", "Persian", "Ragdoll", "Russian_Blue", "Siamese", "Sphynx",
)
DOG_BREEDS = (
    "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "boxer",
    "chihuahua", "english_cocker_spaniel", "english_setter", "german_shorthaired",
    "great_pyrenees", "havanese", "japanese_chin", "keeshond", "leonberger", "miniature_pinscher",
    "newfoundland", "pomeranian", "pug", "saint_bernard", "samoyed", "scottish_terrier",
    "shiba_inu", "staffordshire_bull_terrier", "wheaten_terrier", "yorkshire_terrier",
)
BREEDS = CAT_BREEDS + DOG_BREEDS

NOISE_KINDS = ("symmetric", "uniform")
_GENERATED = ".lsmooth-generated"  # marker: this folder was written by make_tiny/make_digits


class DataError(ValueError):
    """A data folder or download that cannot be used. The message says what was wrong."""


def _example(names: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:k])
    return shown + (f" and {len(names) - k} more" if len(names) > k else "")


# ---------------------------------------------------------------- labels, listing, split
def label_from_name(name: str, pattern: re.Pattern = IMAGE_RE) -> str | None:
    """Label of a file name in the Pets layout (``'great_pyrenees_7.jpg'`` -> ``'great_pyrenees'``).

    Returns ``None`` when the name does not match. The greedy ``(.+)`` keeps every ``_`` of a
    multi-word breed and stops at the last ``_<digits>``.
    """
    m = pattern.match(name)
    return m.group(1) if m else None


def list_images(folder: str | os.PathLike, pattern: re.Pattern = IMAGE_RE) -> list[Path]:
    """Files of ``folder`` whose names match ``pattern``, sorted by name.

    ``folder`` may be the images folder itself or a Pets root holding ``images/``. Other files
    (Pets ships three ``.mat`` files there) are ignored. Raises :class:`DataError` when the folder
    is missing, not a folder, empty, or has no matching name (listing a few of its names).
    """
    path = Path(folder).expanduser()
    if not path.exists():
        raise DataError(f"data folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise DataError(f"data path {str(path)!r} is a file, not a folder of images")
    if (path / "images").is_dir():
        path = path / "images"
    names = sorted(p.name for p in path.iterdir())
    if not names:
        raise DataError(f"data folder {str(path)!r} is empty")
    files = [path / n for n in names if pattern.match(n) and (path / n).is_file()]
    if not files:
        raise DataError(
            f"no file in {str(path)!r} is named like '<label>_<n>.jpg' (regex {pattern.pattern}); "
            f"found {_example(names)}"
        )
    return files


def split_files(
    files: Sequence[Path], valid_pct: float = 0.2, seed: int = 42
) -> tuple[list[Path], list[Path]]:
    """fastai's ``RandomSplitter(valid_pct, seed)`` over the files sorted by name.

    Sorting first makes the split a function of the *set* of names only: the same on every
    machine and file system. For Pets (7,390 images) this gives 5,912 train / 1,478 valid.
    """
    items = sorted(files, key=lambda p: (Path(p).name, str(p)))
    # RandomSplitter re-seeds torch's global generator; keep the caller's random stream intact.
    with torch.random.fork_rng(devices=[]):
        train_idx, valid_idx = RandomSplitter(valid_pct=valid_pct, seed=seed)(items)
    return [items[i] for i in train_idx], [items[i] for i in valid_idx]


def add_label_noise(
    labels: Sequence[str],
    rate: float,
    classes: Sequence[str],
    seed: int = 0,
    kind: str = "symmetric",
) -> tuple[list[str], np.ndarray]:
    """Corrupt ``labels`` (pass the training labels only) reproducibly from ``seed``.

    - ``'symmetric'``: exactly ``round(rate * n)`` labels, chosen uniformly without replacement,
      are flipped to a *different* class drawn uniformly from the other K-1 classes. The flipped
      fraction is exact up to that rounding (< 0.5/n).
    - ``'uniform'``: the same ``round(rate * n)`` labels are replaced by a class drawn uniformly
      from all K classes, so about 1/K of them keep their label (actual noise ~ rate*(K-1)/K).

    Returns the new labels and a boolean mask of the labels that changed.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"noise rate {rate!r} is not allowed; it must be in [0, 1)")
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind {kind!r} is not supported; use one of {NOISE_KINDS}")
    classes = list(classes)
    index = {c: i for i, c in enumerate(classes)}
    k, n = len(classes), len(labels)
    if k < 2 and rate > 0:
        raise ValueError("label noise needs at least two classes")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n, size=round(rate * n), replace=False)
    if kind == "symmetric":
        offsets = rng.integers(1, k, size=len(chosen))  # never 0: always a different class
    else:
        offsets = rng.integers(0, k, size=len(chosen))
    new = list(labels)
    for i, off in zip(chosen.tolist(), offsets.tolist(), strict=True):
        new[i] = classes[(index[labels[i]] + off) % k]
    changed = np.array([a != b for a, b in zip(new, labels, strict=True)], dtype=bool)
    return new, changed


# ---------------------------------------------------------------- robust image opening
def open_rgb(fn: str | os.PathLike) -> Image.Image:
    """Open any image Pillow reads (GIF saved as .jpg, grayscale, RGBA, palette, CMYK) as RGB."""
    with Image.open(fn) as im:
        im.load()
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")  # what Pillow asks for, instead of warning on the direct path
        return im.convert("RGB") if im.mode != "RGB" else im.copy()


def _readable(fn: Path) -> bool:
    try:
        with Image.open(fn) as im:
            im.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale; still reads the whole stream
            im.load()
        return True
    except Exception:  # noqa: BLE001 - Pillow raises many types for broken files
        return False


def scan_images(files: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """Split ``files`` into (readable, unreadable); the unreadable ones (corrupt JPEGs) are skipped."""
    good, bad = [], []
    for f in files:
        (good if _readable(f) else bad).append(f)
    return good, bad


class RGBImage(PILImage):
    """fastai ``PILImage`` that opens files with :func:`open_rgb`."""

    @classmethod
    def create(cls, fn, **kwargs):
        if isinstance(fn, (str, os.PathLike)):
            return cls(open_rgb(fn))
        return super().create(fn, **kwargs)


# ---------------------------------------------------------------- datasets
@dataclass
class ImageData:
    """A split, checked image folder: what the DataLoaders are built from."""

    folder: Path
    train: list[Path]
    valid: list[Path]
    labels: dict[str, str]  # file name -> label used (noisy for training files)
    classes: list[str]
    skipped: list[Path] = field(default_factory=list)
    ignored: int = 0  # files in the folder whose names do not match the regex
    noisy: int = 0  # training labels changed by label noise

    def summary(self) -> str:
        lines = [
            f"data: {self.folder}",
            f"  {len(self.train) + len(self.valid)} images, {len(self.classes)} classes: "
            f"{len(self.train)} train / {len(self.valid)} valid",
            f"  skipped {len(self.skipped)} unreadable image(s)"
            + (f": {_example([p.name for p in self.skipped])}" if self.skipped else ""),
        ]
        if self.ignored:
            lines.append(f"  ignored {self.ignored} file(s) not named '<label>_<n>.<ext>'")
        if self.noisy:
            lines.append(f"  label noise: {self.noisy} of {len(self.train)} training labels changed")
        return "\n".join(lines)


class _Labeller:
    """Picklable ``get_y``: file name -> label."""

    def __init__(self, labels: dict[str, str]):
        self.labels = labels

    def __call__(self, path: Path) -> str:
        return self.labels[Path(path).name]


class _FixedSplit:
    """Picklable splitter: the first ``n_train`` items are training items, the rest validation."""

    def __init__(self, n_train: int):
        self.n_train = n_train

    def __call__(self, items):
        return list(range(self.n_train)), list(range(self.n_train, len(items)))


def load_image_folder(
    folder: str | os.PathLike,
    *,
    pattern: re.Pattern = IMAGE_RE,
    valid_pct: float = 0.2,
    split_seed: int = 42,
    noise: float = 0.0,
    noise_kind: str = "symmetric",
    noise_seed: int = 0,
) -> ImageData:
    """List, split, check and (optionally) corrupt the labels of a Pets-layout folder.

    The split is computed on *all* matching names before unreadable files are dropped, so a
    broken file never moves other files between train and valid.
    """
    files = list_images(folder, pattern)
    root = files[0].parent
    n_names = sum(1 for _ in root.iterdir())
    train, valid = split_files(files, valid_pct, split_seed)
    train, bad_train = scan_images(train)
    valid, bad_valid = scan_images(valid)
    skipped = sorted(bad_train + bad_valid)
    if not train and not valid:
        raise DataError(
            f"none of the {len(files)} images in {str(root)!r} can be read "
            f"(e.g. {_example([p.name for p in skipped], 3)})"
        )
    if not train or not valid:
        raise DataError(
            f"{str(root)!r} has too few readable images ({len(train) + len(valid)}) "
            f"for a {1 - valid_pct:.0%}/{valid_pct:.0%} train/valid split"
        )
    labels = {p.name: label_from_name(p.name, pattern) for p in train + valid}
    classes = sorted(set(labels.values()))
    noisy = 0
    if noise > 0:
        new, changed = add_label_noise(
            [labels[p.name] for p in train], noise, classes, noise_seed, noise_kind
        )
        labels.update({p.name: y for p, y in zip(train, new, strict=True)})
        noisy = int(changed.sum())
    return ImageData(root, train, valid, labels, classes, skipped, n_names - len(files), noisy)


def image_dataloaders(
    data: ImageData,
    *,
    size: int,
    item_size: int | None = None,
    bs: int = 64,
    workers: int = 0,
    flip: bool = True,
    min_scale: float = 0.75,
    device: torch.device | str | None = None,
) -> DataLoaders:
    """fastai DataLoaders: ``Resize(item_size)`` per item, then ``aug_transforms(size, min_scale)``.

    For Pets this is the fastbook recipe (``Resize(460)``, ``aug_transforms(size=224,
    min_scale=0.75)``). Normalisation is left to the learner (ImageNet or the timm model's stats
    when pretrained); the recipe adds ImageNet stats when training from scratch.
    """
    if bs > len(data.train):
        raise DataError(
            f"batch size {bs} is larger than the training set ({len(data.train)} images)"
        )
    block = DataBlock(
        blocks=(ImageBlock(cls=RGBImage), CategoryBlock(vocab=data.classes)),
        get_y=_Labeller(data.labels),
        splitter=_FixedSplit(len(data.train)),
        item_tfms=Resize(item_size or size),
        batch_tfms=aug_transforms(size=size, min_scale=min_scale, do_flip=flip),
    )
    return block.dataloaders(
        data.train + data.valid, bs=bs, num_workers=workers, device=device
    )


def pets_folder() -> Path:
    """The Pets ``images/`` folder, downloaded (~800 MB) and cached by ``untar_data``.

    Raises :class:`DataError` with what to do instead when the download fails (offline).
    """
    try:
        root = untar_data(URLs.PETS)
    except Exception as e:  # noqa: BLE001 - urllib, fastdownload, tarfile each raise their own
        reason = str(getattr(e, "reason", "") or e).strip() or type(e).__name__
        raise DataError(
            f"could not download Oxford-IIIT Pets ({URLs.PETS}): {reason}. Offline? "
            f"Pass --data PATH to a local copy of its images/ folder, or use --dataset digits (no download at all)"
        ) from None
    return root / "images"


# ---------------------------------------------------------------- generated datasets
def _generate(target: Path, n_expected: int, write) -> Path:
    """Write a dataset into ``target/images`` once, atomically; reuse it when complete."""
    images = target / "images"
    if (target / _GENERATED).exists() and images.is_dir():
        if sum(1 for _ in images.iterdir()) == n_expected:
            return target
        shutil.rmtree(target)  # ours (marker) but incomplete or edited: regenerate
    elif target.exists():
        raise DataError(
            f"{str(target)!r} exists but was not generated by lsmooth; move it or pick another root"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        (tmp / "images").mkdir()
        write(tmp / "images")
        (tmp / _GENERATED).write_text("generated by lsmooth.data; safe to delete\n")
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / _GENERATED).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def make_tiny(root: str | os.PathLike, per_class: int = 6) -> Path:
    """``root/tiny/images``: ``per_class`` small JPEGs for each of the 37 Pets breeds.

    Each breed has its own colour and stripe pattern (plus per-image noise and size), so a model
    can learn something in one epoch. Deterministic; idempotent. Returns ``root/tiny``.
    """

    def write(folder: Path) -> None:
        rng = np.random.default_rng(0)
        for k, breed in enumerate(BREEDS):
            hue = np.array([np.cos(2 * np.pi * (k / 37 + s / 3)) for s in range(3)])
            colour = 128 + 100 * hue
            period = 3 + k % 5
            for n in range(1, per_class + 1):
                h, w = rng.integers(28, 41, size=2)
                yy, xx = np.mgrid[0:h, 0:w]
                stripes = ((yy if k < 12 else xx) // period) % 2  # cats: rows, dogs: columns
                img = colour + 40 * stripes[..., None] + rng.normal(0, 20, (h, w, 3))
                arr = np.clip(img, 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(folder / f"{breed}_{n}.jpg", quality=90)

    return _generate(Path(root) / "tiny", 37 * per_class, write)


def make_digits(root: str | os.PathLike) -> Path:
    """``root/digits/images``: scikit-learn's 1,797 8x8 digits as RGB PNGs ``<digit>_<i>.png``.

    ``i`` is the sample's index in ``load_digits()``; the 17 grey levels (0-16) are scaled to
    0-255 and copied to three channels. Idempotent. Returns ``root/digits``.
    """
    from sklearn.datasets import load_digits

    def write(folder: Path) -> None:
        digits = load_digits()
        grey = np.rint(digits.images * (255 / 16)).astype(np.uint8)
        for i, (img, y) in enumerate(zip(grey, digits.target, strict=True)):
            rgb = np.repeat(img[..., None], 3, axis=-1)
            Image.fromarray(rgb).save(folder / f"{y}_{i}.png")

    return _generate(Path(root) / "digits", 1797, write)
