"""recipes/pets.py: command line, bad input, offline behaviour, end-to-end runs on `tiny`."""

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from conftest import run_main

ROOT = Path(__file__).resolve().parents[1]


def assert_one_line_error(code, err, *needles):
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---------------------------------------------------------------- bad input
def _bad_data(tmp: Path, kind: str) -> str:
    if kind == "missing":
        return str(tmp / "nope")
    if kind == "file":
        (tmp / "f.jpg").write_bytes(b"x")
        return str(tmp / "f.jpg")
    folder = tmp / kind
    folder.mkdir()
    if kind == "no-match":
        for n in ("IMG_0001.jpeg", "cat.jpg", "notes.txt"):
            (folder / n).write_bytes(b"x")
    elif kind == "unreadable":
        for i in range(4):
            (folder / f"pug_{i}.jpg").write_bytes(b"not a jpeg")
    return str(folder)


BAD_FLAGS = [
    (["--eps", "1.5"], "--eps"),
    (["--eps", "nan"], "--eps"),
    (["--eps", "-inf"], "--eps"),
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "-3"], "--epochs"),
    (["--epochs", "1.5"], "--epochs"),
    (["--bs", "0"], "--bs"),
    (["--bs", "-8"], "--bs"),
    (["--bs", "many"], "invalid int value"),
    (["--lr", "0"], "--lr"),
    (["--size", "4"], "--size"),
    (["--noise", "1"], "--noise"),
    (["--noise", "-0.1"], "--noise"),
    (["--noise", "nan"], "--noise"),
    (["--noise-kind", "pairflip"], "--noise-kind"),
    (["--workers", "-1"], "--workers"),
    (["--arch", "resnet43"], "did you mean resnet34"),
    (["--arch", "zzqqxx"], "not a torchvision or timm model"),
    (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["--bogus"], "unrecognized arguments"),
]


@pytest.mark.parametrize("argv, needle", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_gives_one_line(pets_recipe, tmp_path, capsys, tiny_dir, argv, needle):
    base = ["--dataset", "tiny", "--data", str(tiny_dir), "--out", str(tmp_path / "runs")]
    code, _, err = run_main(pets_recipe, base + argv, capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize(
    "kind, needle",
    [("missing", "does not exist"), ("file", "is a file"), ("empty", "is empty"),
     ("no-match", "'IMG_0001.jpeg'"), ("unreadable", "can be read")],
)
def test_bad_data_folder_gives_one_line(pets_recipe, tmp_path, capsys, kind, needle):
    argv = ["--dataset", "tiny", "--data", _bad_data(tmp_path, kind), "--out", str(tmp_path / "r")]
    code, _, err = run_main(pets_recipe, argv, capsys)
    assert_one_line_error(code, err, needle)


def test_unwritable_out_gives_one_line(pets_recipe, tmp_path, capsys, tiny_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    argv = ["--dataset", "tiny", "--data", str(tiny_dir), "--out", str(blocker / "runs")]
    code, _, err = run_main(pets_recipe, argv, capsys)
    assert_one_line_error(code, err, "--out")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_out_gives_one_line(pets_recipe, tmp_path, capsys, tiny_dir):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    argv = ["--dataset", "tiny", "--data", str(tiny_dir), "--out", str(locked)]
    code, _, err = run_main(pets_recipe, argv, capsys)
    assert_one_line_error(code, err, "--out", "cannot write")


def test_bs_larger_than_training_set(pets_recipe, tmp_path, capsys, tiny_dir):
    argv = ["--dataset", "tiny", "--data", str(tiny_dir), "--bs", "4096", "--out", str(tmp_path)]
    code, _, err = run_main(pets_recipe, argv, capsys)
    assert_one_line_error(code, err, "larger than the training set")


# ---------------------------------------------------------------- config and arch
def test_presets_fill_unset_values_only(pets_recipe):
    cfg = pets_recipe.resolve(pets_recipe.Config(dataset="digits", epochs=2))
    assert (cfg.arch, cfg.pretrained, cfg.epochs, cfg.size) == ("resnet18", False, 2, 32)
    pets = pets_recipe.resolve(pets_recipe.Config())
    assert (pets.arch, pets.pretrained, pets.epochs, pets.size, pets.eps) == (
        "resnet34", True, 4, 224, 0.1)


def test_arch_names_torchvision_first_then_timm(pets_recipe):
    import torchvision

    assert pets_recipe.resolve_arch("resnet34") is torchvision.models.resnet34
    assert pets_recipe.resolve_arch("convnext_atto") == "convnext_atto"


def test_dry_run_prints_config_and_data_writes_nothing(pets_recipe, tmp_path, capsys, tiny_dir):
    out = tmp_path / "runs"
    argv = ["--dataset", "tiny", "--data", str(tiny_dir), "--noise", "0.2", "--out", str(out),
            "--dry-run"]
    code, stdout, err = run_main(pets_recipe, argv, capsys)
    assert code == 0, err
    assert '"arch": "resnet18"' in stdout
    assert "222 images, 37 classes: 178 train / 44 valid" in stdout
    assert "label noise: 36 of 178 training labels changed" in stdout
    assert not out.exists()


# ---------------------------------------------------------------- offline
def test_offline_pets_is_one_line(pets_recipe, monkeypatch, capsys):
    import lsmooth.data

    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(lsmooth.data, "untar_data", offline)
    code, _, err = run_main(pets_recipe, ["--dry-run"], capsys)
    assert_one_line_error(code, err, "Oxford-IIIT Pets", "--data PATH", "--dataset digits")


def test_offline_torchvision_weights_is_one_line(pets_recipe, monkeypatch, tmp_path, capsys, tiny_dir):
    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    argv = ["--dataset", "tiny", "--data", str(tiny_dir), "--pretrained", "--out", str(tmp_path)]
    code, _, err = run_main(pets_recipe, argv, capsys)
    assert_one_line_error(code, err, "--no-pretrained", "resnet18-", str(tmp_path / "hub"))


def test_offline_timm_weights_is_one_line(pets_recipe, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(pets_recipe, "_reachable", lambda *a, **k: False)
    with pytest.raises(pets_recipe.WeightsUnavailable, match="--no-pretrained") as info:
        pets_recipe.pretrained_kwargs("convnext_atto")
    assert "\n" not in str(info.value)


def _offline_env(tmp_path: Path) -> dict:
    """Environment for a CLI subprocess that can reach no server and has empty caches."""
    env = dict(os.environ)
    dead = "http://127.0.0.1:9"  # discard port: every download fails at once
    env.update(http_proxy=dead, https_proxy=dead, HTTP_PROXY=dead, HTTPS_PROXY=dead,
               FASTAI_HOME=str(tmp_path / "fastai"), TORCH_HOME=str(tmp_path / "torch"),
               HF_HOME=str(tmp_path / "hf"))
    env.pop("PYTHONWARNINGS", None)  # what a user sees by default
    return env


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--dry-run"], ["Oxford-IIIT Pets", "--data PATH"]),
        (["--dataset", "tiny", "--pretrained", "--epochs", "1"], ["--no-pretrained"]),
    ],
    ids=["pets-download", "weights-download"],
)
def test_cli_subprocess_offline_is_one_line(tmp_path, tiny_dir, argv, needles):
    if "tiny" in argv:
        argv = [*argv, "--data", str(tiny_dir)]
    res = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "pets.py"), *argv, "--out", str(tmp_path / "runs")],
        capture_output=True, text=True, env=_offline_env(tmp_path), timeout=120, cwd=tmp_path,
    )
    assert_one_line_error(res.returncode, res.stderr, *needles)


def test_cli_subprocess_bad_value_is_one_line(tmp_path, tiny_dir):
    """The real command line (imports, warnings filter, exit code), not just main()."""
    argv = ["--dataset", "tiny", "--data", str(tiny_dir), "--arch", "resnet43", "--out", str(tmp_path / "r")]
    res = subprocess.run([sys.executable, str(ROOT / "recipes" / "pets.py"), *argv], capture_output=True,
                         text=True, env=_offline_env(tmp_path), timeout=120, cwd=tmp_path)
    assert res.returncode == 2
    assert_one_line_error(res.returncode, res.stderr, "--arch 'resnet43'", "did you mean resnet34")
    assert res.stdout == ""


# ---------------------------------------------------------------- end to end on tiny
def _tiny_cfg(pets, tiny, out, **kw):
    base = dict(dataset="tiny", data=str(tiny), epochs=1, size=16, bs=32, out=str(out),
                progress=False, seed=0, threads=1)
    return pets.Config(**(base | kw))


@pytest.mark.slow
def test_tiny_run_writes_run_folder(pets_recipe, tmp_path, capsys, tiny_dir):
    final = pets_recipe.train(_tiny_cfg(pets_recipe, tiny_dir, tmp_path, eps=0.1))
    run = Path(final["run_dir"])
    assert run.parent == tmp_path
    assert {p.name for p in run.iterdir()} == {
        "config.json", "env.json", "metrics.csv", "final.json", "valid_preds.pt"}
    assert json.loads((run / "final.json").read_text()) == final
    config = json.loads((run / "config.json").read_text())
    assert (config["eps"], config["epochs"], config["arch"]) == (0.1, 1, "resnet18")
    env = json.loads((run / "env.json").read_text())
    assert {"torch", "fastai", "device", "torch_threads"} <= env.keys()
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[:5] == ["epoch", "train_loss", "valid_loss", "error_rate", "accuracy"]
    assert len(rows) == 2
    for key in ("error_rate", "accuracy", "nll", "ece", "brier", "wall_time_s", "images_per_s"):
        assert isinstance(final[key], float)
    assert final["error_rate"] == pytest.approx(1 - final["accuracy"])
    preds = torch.load(run / "valid_preds.pt")
    assert preds["probs"].shape == (44, 37) and preds["targets"].shape == (44,)
    out = capsys.readouterr().out
    assert "error" in out and "ECE" in out and f"run folder: {run}" in out


@pytest.mark.slow
def test_baseline_eps0_uses_fastai_cross_entropy(pets_recipe, tmp_path, tiny_dir, monkeypatch):
    from fastai.losses import CrossEntropyLossFlat

    seen = {}
    real = pets_recipe.vision_learner

    def spy(*args, **kwargs):
        seen["loss"] = kwargs["loss_func"]
        return real(*args, **kwargs)

    monkeypatch.setattr(pets_recipe, "vision_learner", spy)
    pets_recipe.train(_tiny_cfg(pets_recipe, tiny_dir, tmp_path, eps=0.0))
    assert isinstance(seen["loss"], CrossEntropyLossFlat)


@pytest.mark.slow
def test_messy_images_train_and_report_skipped(pets_recipe, tmp_path, capsys, messy_dir):
    final = pets_recipe.train(_tiny_cfg(pets_recipe, messy_dir, tmp_path, bs=8))
    assert final["skipped_images"] == 1
    assert "skipped 1 unreadable image(s): 'beagle_116.jpg'" in capsys.readouterr().out


@pytest.mark.slow
def test_cached_torchvision_weights_load_without_network(pets_recipe, tmp_path, tiny_dir, monkeypatch):
    import torchvision

    hub = tmp_path / "hub"
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), hub / "checkpoints" / Path(url).name)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def no_network(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    final = pets_recipe.train(_tiny_cfg(pets_recipe, tiny_dir, tmp_path, pretrained=True))
    assert final["n_train"] == 178


def test_cached_timm_weights_are_loaded_from_the_cache(pets_recipe, monkeypatch, tmp_path):
    import huggingface_hub

    cached = tmp_path / "model.safetensors"
    cached.write_bytes(b"")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: str(cached))
    monkeypatch.setattr(pets_recipe, "_reachable", lambda *a, **k: pytest.fail("network used"))
    assert pets_recipe.pretrained_kwargs("convnext_atto") == {
        "pretrained_cfg_overlay": {"file": str(cached)}}


@pytest.mark.slow
def test_bf16_autocast_on_cpu_trains(pets_recipe, tmp_path, tiny_dir):
    final = pets_recipe.train(_tiny_cfg(pets_recipe, tiny_dir, tmp_path, precision="bf16"))
    config = json.loads((Path(final["run_dir"]) / "config.json").read_text())
    assert config["precision_used"] == "bf16" and 0 <= final["error_rate"] <= 1
