"""Data pieces for a fastai ``DataBlock`` in the Pets layout, and the offline stand-in datasets.

The Pets layout is one flat folder of images named ``<label>_<n>.<ext>`` (``great_pyrenees_17.jpg``);
fastai's ``RegexLabeller`` reads the label from the name. Two pieces plug into a ``DataBlock``:

- :class:`SkipUnreadable` wraps a splitter (``RandomSplitter``): it splits *all* items, then leaves
  out the images Pillow cannot open (Pets has two broken JPEGs), so a broken file never moves
  other files between train and valid.
- :class:`LabelNoise` wraps ``get_y``: it corrupts a fixed fraction of the *training* labels,
  reproducibly from a seed (validation labels stay clean).

``pets.py`` shows both in its ``get_dls``. Offline, :func:`stand_in` writes a dataset in the same
layout into ``data/``: ``digits`` (scikit-learn's 1,797 real handwritten digits as 8x8 PNGs) and
``tiny`` (37 breed names, 6 generated JPEGs each, for tests). ``data/README.md`` describes them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from fasttransform import Transform
from PIL import Image

__all__ = ["BREEDS", "NOISE_KINDS", "DataError", "LabelNoise", "SkipUnreadable", "add_label_noise", "image_folder",
           "make_digits", "make_tiny", "stand_in"]

# Oxford-IIIT Pet: cat breeds are capitalised, dog breeds lowercase (the file names say so).
CAT_BREEDS = (
    "Abyssinian", "Bengal", "Birman", "Bombay", "British_Shorthair", "Egyptian_Mau",
    "Maine_Coon", "Persian", "Ragdoll", "Russian_Blue", "Siamese", "Sphynx",
)  # fmt: skip
DOG_BREEDS = (
    "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "boxer",
    "chihuahua", "english_cocker_spaniel", "english_setter", "german_shorthaired",
    "great_pyrenees", "havanese", "japanese_chin", "keeshond", "leonberger", "miniature_pinscher",
    "newfoundland", "pomeranian", "pug", "saint_bernard", "samoyed", "scottish_terrier",
    "shiba_inu", "staffordshire_bull_terrier", "wheaten_terrier", "yorkshire_terrier",
)  # fmt: skip
BREEDS = CAT_BREEDS + DOG_BREEDS

NOISE_KINDS = ("symmetric", "uniform")
DATA_ROOT = Path(__file__).resolve().parents[1] / "data"  # where stand-ins are generated (git-ignored)
_GENERATED = ".lsmooth-generated"  # marker: this folder was written by lsmooth


class DataError(ValueError):
    """A data folder, file name or download that cannot be used; the message (one line) says what to do."""


def _note(text: str) -> None:
    from fastai.torch_core import rank_distrib

    if rank_distrib() == 0:  # every process builds the data; one says so
        print(text, flush=True)


def _names(paths: Sequence, k: int = 5) -> str:
    shown = ", ".join(Path(p).name for p in list(paths)[:k])
    return shown + (f" and {len(paths) - k} more" if len(paths) > k else "")


# ---------------------------------------------------------------- DataBlock pieces
class SkipUnreadable:
    """Splitter: ``splitter(items)``, then the images fastai's ``verify_images`` cannot open are left out
    of both sides (and named once on stdout). Picklable, for ``learn.export()``."""

    def __init__(self, splitter: Callable):
        self.splitter, self.skipped = splitter, []

    def __call__(self, items):
        from fastai.vision.utils import verify_images

        train, valid = self.splitter(items)
        bad = {str(p) for p in verify_images(items)}
        self.skipped = sorted(p for p in map(str, items) if p in bad)
        if self.skipped:
            _note(f"skipped {len(self.skipped)} unreadable image(s): {_names(self.skipped)}")
        return [i for i in train if str(items[i]) not in bad], [i for i in valid if str(items[i]) not in bad]


def add_label_noise(labels: Sequence[str], rate: float, classes: Sequence[str], seed: int = 0,
                    kind: str = "symmetric") -> tuple[list[str], np.ndarray]:
    """Corrupt ``labels`` reproducibly from ``seed``; the new labels and a mask of those that changed.

    - ``'symmetric'``: exactly ``round(rate * n)`` labels, chosen uniformly without replacement, are
      flipped to a *different* class drawn uniformly from the other K-1 classes.
    - ``'uniform'``: the same ``round(rate * n)`` labels are redrawn uniformly from all K classes, so
      about 1/K of them keep their label (actual noise ~ rate*(K-1)/K).
    """
    if not 0 <= rate < 1:
        raise ValueError(f"noise rate {rate!r} is not allowed; it must be in [0, 1)")
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind {kind!r} is not supported; use one of {', '.join(NOISE_KINDS)}")
    classes = list(classes)
    index, k, n = {c: i for i, c in enumerate(classes)}, len(classes), len(labels)
    if k < 2 and rate > 0:
        raise ValueError("label noise needs at least two classes")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n, size=round(rate * n), replace=False)
    offsets = rng.integers(1 if kind == "symmetric" else 0, k, size=len(chosen))  # symmetric: never 0
    new = list(labels)
    for i, off in zip(chosen.tolist(), offsets.tolist(), strict=True):
        new[i] = classes[(index[labels[i]] + off) % k]
    return new, np.array([a != b for a, b in zip(new, labels, strict=True)], dtype=bool)


class LabelNoise(Transform):
    """``get_y`` with noisy training labels: ``label_func``, except that :func:`add_label_noise` changed
    ``rate`` of the training items' labels (from ``seed``, once, when the ``DataBlock`` sets up on its
    training items; the count goes to stdout). Validation items keep their true label."""

    def __init__(self, label_func: Callable, rate: float = 0.0, kind: str = "symmetric", seed: int = 0):
        super().__init__()
        self.label_func, self.rate, self.kind, self.seed = label_func, rate, kind, seed
        self.noisy, self.changed = {}, 0

    def _label(self, o) -> str:
        try:
            return self.label_func(o)
        except AssertionError:  # fastai's RegexLabeller, when the name does not match
            raise DataError(f"no label in the file name {str(o)!r}: the Pets layout names images "
                            f"<label>_<n>.<ext>, e.g. great_pyrenees_17.jpg") from None

    def setups(self, items):
        items = list(items)
        clean = [self._label(o) for o in items]
        new, changed = add_label_noise(clean, self.rate, sorted(set(clean)), self.seed, self.kind)
        self.noisy = {o: y for o, y, c in zip(items, new, changed, strict=True) if c}
        self.changed = int(changed.sum())
        if self.rate:
            _note(f"label noise: {self.changed} of {len(items)} training labels changed ({self.kind})")

    def encodes(self, o):
        return self.noisy.get(o) or self._label(o)


# ---------------------------------------------------------------- offline stand-ins
def _generate(target: Path, n_expected: int, write) -> Path:
    """Write a dataset into ``target/images`` once, atomically; reuse it when complete."""
    images = target / "images"
    if (target / _GENERATED).exists() and images.is_dir():
        if sum(1 for _ in images.iterdir()) == n_expected:
            return images
        shutil.rmtree(target)  # ours (marker) but incomplete or edited: regenerate
    elif target.exists():
        raise ValueError(f"{str(target)!r} exists but was not generated by lsmooth; move it or pick another root")
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
    return images


def make_tiny(root: str | os.PathLike = DATA_ROOT, per_class: int = 6) -> Path:
    """``root/tiny/images``: ``per_class`` small JPEGs for each of the 37 Pets breeds.

    Each breed has its own colour and stripe pattern (plus per-image noise and size), so a model
    can learn something in one epoch. Deterministic; idempotent. Returns the images folder.
    """

    def write(folder: Path) -> None:
        rng = np.random.default_rng(0)
        for k, breed in enumerate(BREEDS):
            hue = np.array([np.cos(2 * np.pi * (k / 37 + s / 3)) for s in range(3)])
            colour, period = 128 + 100 * hue, 3 + k % 5
            for n in range(1, per_class + 1):
                h, w = rng.integers(28, 41, size=2)
                yy, xx = np.mgrid[0:h, 0:w]
                stripes = ((yy if k < 12 else xx) // period) % 2  # cats: rows, dogs: columns
                img = colour + 40 * stripes[..., None] + rng.normal(0, 20, (h, w, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{breed}_{n}.jpg", quality=90)

    return _generate(Path(root) / "tiny", 37 * per_class, write)


def make_digits(root: str | os.PathLike = DATA_ROOT) -> Path:
    """``root/digits/images``: scikit-learn's 1,797 8x8 digits as RGB PNGs ``<digit>_<i>.png``.

    ``i`` is the sample's index in ``load_digits()``; the 17 grey levels (0-16) are scaled to
    0-255 and copied to three channels. Idempotent. Returns the images folder.
    """
    from sklearn.datasets import load_digits

    def write(folder: Path) -> None:
        digits = load_digits()
        grey = np.rint(digits.images * (255 / 16)).astype(np.uint8)
        for i, (img, y) in enumerate(zip(grey, digits.target, strict=True)):
            Image.fromarray(np.repeat(img[..., None], 3, axis=-1)).save(folder / f"{y}_{i}.png")

    return _generate(Path(root) / "digits", 1797, write)


_MAKERS = {"digits": make_digits, "tiny": make_tiny}


def stand_in(name: str, root: str | os.PathLike = DATA_ROOT) -> Path:
    """The images folder of the offline dataset ``name`` (``'digits'`` or ``'tiny'``), generated on first use."""
    if name not in _MAKERS:
        raise ValueError(f"no offline dataset {name!r}; use one of {', '.join(_MAKERS)}")
    return _MAKERS[name](root)


def image_folder(folder: str | os.PathLike) -> Path:
    """``folder`` (or its ``images/``, as Pets unpacks) if it holds images; DataError naming the problem."""
    from fastai.vision.utils import get_image_files

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder {str(folder)!r} does not exist" if not folder.exists()
                        else f"data path {str(folder)!r} is a file, not a folder of images")
    if (folder / "images").is_dir():
        folder = folder / "images"
    if not get_image_files(folder):
        raise DataError(f"no image files in {str(folder)!r}; the Pets layout is a folder of <label>_<n>.jpg")
    return folder
