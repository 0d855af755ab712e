"""Shared fixtures: the recipe module, and small image folders written once per session."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lsmooth.data import make_tiny

ROOT = Path(__file__).resolve().parents[1]


def run_main(module, argv, capsys):
    """``module.main(argv)`` in process -> (exit code, stdout, stderr); argparse errors exit 2."""
    try:
        code = module.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def pets_recipe():
    """``recipes/pets.py`` imported as module ``pets`` (recipes/ is not a package)."""
    if "pets" not in sys.modules:
        spec = importlib.util.spec_from_file_location("pets", ROOT / "recipes" / "pets.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["pets"] = module
        spec.loader.exec_module(module)
    return sys.modules["pets"]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The generated ``tiny`` dataset (37 breeds x 6 JPEGs) in a session temp folder."""
    return make_tiny(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def messy_dir(tmp_path_factory) -> Path:
    """Pets-like folder with the kinds of broken files Pets has, next to good ones.

    Per class (3 classes x 8 files): RGB JPEGs, plus one grayscale, one RGBA PNG, one palette PNG
    with transparency and one GIF saved as .jpg; one corrupt JPEG in total; two non-image names.
    """
    folder = tmp_path_factory.mktemp("messy") / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k, label in enumerate(["Abyssinian", "beagle", "chihuahua"]):
        base = np.full((24, 24, 3), 60 + 80 * k, np.uint8)
        for n in range(1, 5):
            arr = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / f"{label}_{n}.jpg")
        img = Image.fromarray(base)
        img.convert("L").save(folder / f"{label}_5.jpg")
        img.convert("RGBA").save(folder / f"{label}_6.png")
        pal = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
        pal.info["transparency"] = 0
        pal.save(folder / f"{label}_7.png", transparency=0)
        img.convert("P").save(folder / f"{label}_8.jpg", format="GIF")  # GIF named .jpg
    good = (folder / "beagle_1.jpg").read_bytes()
    (folder / "beagle_116.jpg").write_bytes(good[: len(good) // 3])  # truncated: corrupt JPEG
    (folder / "Abyssinian_100.mat").write_bytes(b"not an image")
    (folder / "README").write_text("not an image\n")
    return folder.parent
