"""lsmooth.data: labels, listing, split, label noise, robust opening, generated datasets."""

import random
from pathlib import Path
from urllib.error import URLError

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lsmooth.data as D
from lsmooth.data import (
    BREEDS,
    CAT_BREEDS,
    DOG_BREEDS,
    IMAGE_RE,
    PETS_RE,
    DataError,
    RGBImage,
    add_label_noise,
    label_from_name,
    list_images,
    load_image_folder,
    make_digits,
    make_tiny,
    split_files,
)


# ---------------------------------------------------------------- labels
def test_breed_lists_match_pets():
    assert len(BREEDS) == len(set(BREEDS)) == 37
    assert len(CAT_BREEDS) == 12 and all(b[0].isupper() for b in CAT_BREEDS)
    assert len(DOG_BREEDS) == 25 and all(b == b.lower() for b in DOG_BREEDS)


@pytest.mark.parametrize("pattern", [PETS_RE, IMAGE_RE], ids=["pets_re", "image_re"])
@pytest.mark.parametrize("n", [1, 34, 201])
def test_regex_labels_every_breed(pattern, n):
    for breed in BREEDS:
        assert label_from_name(f"{breed}_{n}.jpg", pattern) == breed


@pytest.mark.parametrize(
    "name", ["Abyssinian_100.mat", "beagle.jpg", "beagle_1.jpeg", "beagle_x.jpg", "_1.jpg", "pug_1.JPG"]
)
def test_regex_rejects_non_pets_names(name):
    assert label_from_name(name, PETS_RE) is None


def test_generic_regex_takes_png_but_pets_regex_does_not():
    assert label_from_name("7_12.png", IMAGE_RE) == "7"
    assert label_from_name("7_12.png", PETS_RE) is None


# ---------------------------------------------------------------- split
def _pets_like_names():
    return [Path(f"/x/{b}_{i}.jpg") for b in BREEDS for i in range(1, 201)][:7390]


def test_split_sizes_match_fastai_on_pets_count():
    train, valid = split_files(_pets_like_names())
    assert (len(train), len(valid)) == (5912, 1478)
    assert not set(train) & set(valid)


def test_split_ignores_listing_order():
    files = _pets_like_names()
    expected = split_files(files)
    for order in (files[::-1], random.Random(1).sample(files, len(files))):
        assert split_files(order) == expected


def test_split_leaves_global_torch_rng_alone():
    import torch

    torch.manual_seed(123)
    a = torch.rand(3)
    torch.manual_seed(123)
    split_files(_pets_like_names()[:50])
    assert torch.equal(torch.rand(3), a)


# ---------------------------------------------------------------- noise
CLASSES = [f"c{i}" for i in range(10)]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 500), rate=st.floats(0, 0.99), seed=st.integers(0, 2**31))
def test_symmetric_noise_flips_exact_fraction_to_other_classes(n, rate, seed):
    labels = [CLASSES[i % 10] for i in range(n)]
    new, changed = add_label_noise(labels, rate, CLASSES, seed)
    assert changed.sum() == round(rate * n)
    assert all((a != b) == c for a, b, c in zip(labels, new, changed, strict=True))
    assert set(new) <= set(CLASSES)


def test_noise_is_reproducible_from_seed():
    labels = [CLASSES[i % 10] for i in range(1000)]
    a = add_label_noise(labels, 0.4, CLASSES, seed=3)
    b = add_label_noise(labels, 0.4, CLASSES, seed=3)
    c = add_label_noise(labels, 0.4, CLASSES, seed=4)
    assert a[0] == b[0] and a[0] != c[0]


def test_uniform_noise_keeps_about_one_in_k():
    labels = [CLASSES[i % 10] for i in range(20000)]
    _, changed = add_label_noise(labels, 0.5, CLASSES, seed=0, kind="uniform")
    assert changed.mean() == pytest.approx(0.5 * 9 / 10, abs=0.01)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_noise_rate_out_of_range(rate):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        add_label_noise(["a", "b"], rate, ["a", "b"])


def test_noise_touches_training_labels_only(tiny_dir):
    clean = load_image_folder(tiny_dir)
    noisy = load_image_folder(tiny_dir, noise=0.25, noise_seed=7)
    assert (noisy.train, noisy.valid) == (clean.train, clean.valid)
    assert all(noisy.labels[p.name] == clean.labels[p.name] for p in noisy.valid)
    flipped = sum(noisy.labels[p.name] != clean.labels[p.name] for p in noisy.train)
    assert flipped == noisy.noisy == round(0.25 * len(clean.train))


# ---------------------------------------------------------------- folders
def test_tiny_has_all_breeds_and_is_idempotent(tmp_path):
    root = make_tiny(tmp_path)
    files = list_images(root)
    assert len(files) == 37 * 6 and files == sorted(files, key=lambda p: p.name)
    assert {label_from_name(p.name, PETS_RE) for p in files} == set(BREEDS)
    mtimes = [p.stat().st_mtime_ns for p in files]
    assert make_tiny(tmp_path) == root
    assert [p.stat().st_mtime_ns for p in list_images(root)] == mtimes


def test_digits_are_the_sklearn_digits(tmp_path):
    from PIL import Image

    files = list_images(make_digits(tmp_path))
    assert len(files) == 1797
    assert {label_from_name(p.name) for p in files} == {str(d) for d in range(10)}
    with Image.open(files[0]) as im:
        assert (im.mode, im.size) == ("RGB", (8, 8))


def test_generated_root_refuses_foreign_folder(tmp_path):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "mine.txt").write_text("x")
    with pytest.raises(DataError, match="not generated by lsmooth"):
        make_tiny(tmp_path)


def _write(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: _write(d / "a_file.jpg"), "is a file"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "is empty"),
        (lambda d: [_write(d / "bad" / n) for n in ("cat.jpg", "dog.jpeg", "notes.txt")] and d / "bad",
         r"'cat.jpg', 'dog.jpeg', 'notes.txt'"),
        (lambda d: [_write(d / "broken" / f"pug_{i}.jpg") for i in range(5)] and d / "broken",
         "none of the 5 images .* can be read"),
    ],
    ids=["missing", "file", "empty", "no-matching-names", "all-unreadable"],
)
def test_bad_folders_raise_clear_error(tmp_path, make, match):
    with pytest.raises(DataError, match=match) as info:
        load_image_folder(make(tmp_path))
    assert "\n" not in str(info.value)


def test_messy_images_are_converted_or_skipped(messy_dir):
    data = load_image_folder(messy_dir)
    assert [p.name for p in data.skipped] == ["beagle_116.jpg"]
    assert data.ignored == 2  # the .mat file and the README
    assert len(data.train) + len(data.valid) == 24
    for p in data.train + data.valid:
        img = RGBImage.create(p)
        assert img.mode == "RGB"
    assert "skipped 1 unreadable" in data.summary()


def test_pets_download_failure_is_one_clear_line(monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(D, "untar_data", offline)
    with pytest.raises(DataError) as info:
        D.pets_folder()
    msg = str(info.value)
    assert "\n" not in msg
    assert "--data PATH" in msg and "--dataset digits" in msg and "Name or service" in msg


def test_dataloaders_batch_shapes_and_vocab(tiny_dir):
    data = load_image_folder(tiny_dir)
    dls = D.image_dataloaders(data, size=16, bs=8)
    xb, yb = dls.one_batch()
    assert tuple(xb.shape) == (8, 3, 16, 16)
    assert list(dls.vocab) == sorted(BREEDS)
    with pytest.raises(DataError, match="larger than the training set"):
        D.image_dataloaders(data, size=16, bs=10_000)

