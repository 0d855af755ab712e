"""lsmooth.data: label noise (exact, training labels only, from a seed), skipping unreadable images without
moving the split, the generated stand-in datasets."""

import re
from pathlib import Path

import pytest
from conftest import PETS_RE, tiny_dls
from hypothesis import given, settings
from hypothesis import strategies as st

from lsmooth.data import (
    BREEDS,
    CAT_BREEDS,
    DOG_BREEDS,
    LabelNoise,
    SkipUnreadable,
    add_label_noise,
    make_digits,
    make_tiny,
    stand_in,
)


def test_breed_lists_match_pets_and_the_recipes_regex_labels_them():
    assert len(BREEDS) == len(set(BREEDS)) == 37
    assert len(CAT_BREEDS) == 12 and all(b[0].isupper() for b in CAT_BREEDS)
    assert len(DOG_BREEDS) == 25 and all(b == b.lower() for b in DOG_BREEDS)
    for breed in BREEDS:
        for n in (1, 34, 201):
            assert re.match(PETS_RE, f"{breed}_{n}.jpg").group(1) == breed  # the greedy (.+) keeps every _


# ---------------------------------------------------------------- label noise
@settings(max_examples=40, deadline=None)
@given(n=st.integers(10, 400), rate=st.floats(0.0, 0.95), seed=st.integers(0, 2**31))
def test_symmetric_noise_flips_an_exact_fraction_to_other_classes(n, rate, seed):
    classes = [f"c{i}" for i in range(5)]
    labels = [classes[i % 5] for i in range(n)]
    new, changed = add_label_noise(labels, rate, classes, seed)
    assert changed.sum() == round(rate * n)  # exact, up to rounding
    assert all((a != b) == c for a, b, c in zip(labels, new, changed, strict=True))


def test_noise_is_reproducible_from_the_seed_and_uniform_keeps_about_one_in_k():
    labels = [f"c{i % 10}" for i in range(5000)]
    classes = sorted(set(labels))
    assert add_label_noise(labels, 0.4, classes, 3)[0] == add_label_noise(labels, 0.4, classes, 3)[0]
    assert add_label_noise(labels, 0.4, classes, 3)[0] != add_label_noise(labels, 0.4, classes, 4)[0]
    _, changed = add_label_noise(labels, 0.4, classes, 0, kind="uniform")
    assert abs(changed.mean() - 0.4 * 9 / 10) < 0.02  # 1 in K redrawn labels is the old one


@pytest.mark.parametrize("rate, kind, match", [(1.0, "symmetric", "rate 1.0"), (-0.1, "symmetric", "rate -0.1"),
                                               (0.2, "pairflip", "kind 'pairflip'")])
def test_bad_noise_settings_name_the_value(rate, kind, match):
    with pytest.raises(ValueError, match=match):
        add_label_noise(["a", "b"], rate, ["a", "b"], kind=kind)


def test_label_noise_changes_training_labels_only(tiny_dir, capsys):
    dls = tiny_dls(tiny_dir, noise=0.2, seed=0)
    clean = tiny_dls(tiny_dir, noise=0.0, seed=0)
    assert "label noise: 36 of 178 training labels changed (symmetric)" in capsys.readouterr().out
    assert [str(p) for p in dls.train_ds.items] == [str(p) for p in clean.train_ds.items]  # same split
    label = lambda ds, i: ds.vocab[ds[i][1]]  # noqa: E731
    changed = [label(dls.train_ds, i) != label(clean.train_ds, i) for i in range(len(dls.train_ds))]
    assert sum(changed) == 36
    assert all(label(dls.valid_ds, i) == label(clean.valid_ds, i) for i in range(len(dls.valid_ds)))
    assert all(label(clean.train_ds, i) == re.match(PETS_RE, Path(p).name).group(1)
               for i, p in enumerate(clean.train_ds.items))


def test_label_noise_pickles_with_its_labels():
    import pickle

    noise = LabelNoise(str.upper, 0.5, seed=1)
    noise.setups(["a", "b", "c", "d"])
    back = pickle.loads(pickle.dumps(noise))
    assert [back(o) for o in "abcd"] == [noise(o) for o in "abcd"] and back.changed == 2


# ---------------------------------------------------------------- unreadable images
def test_unreadable_images_are_skipped_without_moving_the_split(messy_dir, capsys):
    from fastai.vision.all import RandomSplitter, get_image_files

    files = get_image_files(messy_dir).sorted()
    split = SkipUnreadable(RandomSplitter(0.2, seed=42))
    train, valid = split(files)
    assert "skipped 1 unreadable image(s): beagle_116.jpg" in capsys.readouterr().out
    plain_train, plain_valid = RandomSplitter(0.2, seed=42)(files)
    bad = [i for i, f in enumerate(files) if f.name == "beagle_116.jpg"]
    assert sorted([*train, *valid]) == sorted((set(plain_train) | set(plain_valid)) - set(bad))
    assert set(valid) == set(plain_valid) - set(bad)  # the other images stay on their side
    assert split.skipped == [str(files[bad[0]])]


def test_odd_images_open_as_rgb(messy_dir):
    """GIF saved as .jpg, grayscale, RGBA and palette images: fastai's ImageBlock opens each as RGB."""
    from fastai.vision.all import PILImage, get_image_files

    for f in get_image_files(messy_dir):
        if f.name != "beagle_116.jpg":
            assert PILImage.create(f).mode == "RGB", f.name


# ---------------------------------------------------------------- stand-ins
def test_tiny_has_every_breed_and_is_generated_once(tmp_path):
    folder = make_tiny(tmp_path)
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 37 * 6 and {re.match(PETS_RE, n).group(1) for n in names} == set(BREEDS)
    mtime = (folder / names[0]).stat().st_mtime_ns
    assert make_tiny(tmp_path) == folder and (folder / names[0]).stat().st_mtime_ns == mtime
    (folder / names[0]).unlink()  # ours but incomplete: generated again
    assert len(list(make_tiny(tmp_path).iterdir())) == 37 * 6


def test_digits_are_scikit_learns_digits(tmp_path):
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = stand_in("digits", tmp_path)
    digits = load_digits()
    assert len(list(folder.iterdir())) == 1797
    img = np.asarray(Image.open(folder / f"{digits.target[5]}_5.png"))
    assert img.shape == (8, 8, 3) and (img[..., 0] == np.rint(digits.images[5] * 255 / 16)).all()
    assert make_digits(tmp_path) == folder


def test_a_folder_not_made_by_lsmooth_is_left_alone(tmp_path):
    (tmp_path / "tiny" / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match="exists but was not generated by lsmooth"):
        make_tiny(tmp_path)
    with pytest.raises(ValueError, match="no offline dataset 'cifar'; use one of digits, tiny"):
        stand_in("cifar", tmp_path)
