"""lsmooth.train: Config and resolve, data before weights offline, tiny runs end to end, determinism."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from conftest import tiny_config

import lsmooth.data
import lsmooth.train as T
from lsmooth.runs import CONFIG_FILE, ENV_FILE, FINAL_FILE, METRICS_FILE, PREDS_FILE
from lsmooth.train import Config, ConfigError, resolve, train

FIELDS = [f.name for f in dataclasses.fields(Config)]


# ---------------------------------------------------------------- Config and resolve
def test_every_setting_is_declared_once_with_help():
    for f in dataclasses.fields(Config):
        assert f.metadata["help"], f.name
    for dataset, preset in T.PRESETS.items():
        assert set(preset) <= set(FIELDS), dataset
        assert all(getattr(Config(), k) is None for k in preset), dataset  # None = "the preset"


def test_presets_fill_unset_values_only():
    cfg = resolve(Config(dataset="digits", epochs=2))
    assert (cfg.arch, cfg.pretrained, cfg.epochs, cfg.size, cfg.flip) == ("resnet18", False, 2, 32, False)
    pets = resolve(Config())
    assert (pets.arch, pets.pretrained, pets.epochs, pets.size, pets.item_size, pets.eps) == (
        "resnet34", True, 4, 224, 460, 0.1)


def test_resolve_leaves_nothing_unset():
    cfg = resolve(Config(dataset="tiny"))
    assert [k for k in FIELDS if getattr(cfg, k) is None] == ["data"]  # None there = the dataset's own folder
    assert cfg.precision == "fp32" and cfg.workers == 0 and cfg.name == "tiny-resnet18-eps0.1-noise0-s42"
    assert resolve(cfg) == cfg


def test_item_size_grows_with_size():
    assert resolve(Config(size=512)).item_size == 512
    assert resolve(Config(size=128)).item_size == 460


BAD = [
    (dict(eps=1.5), "--eps 1.5"), (dict(eps=float("nan")), "--eps nan"), (dict(eps=float("-inf")), "--eps"),
    (dict(epochs=0), "--epochs 0"), (dict(epochs=1.5), "--epochs 1.5"), (dict(bs=0), "--bs 0"),
    (dict(lr=0.0), "--lr 0.0"), (dict(lr=float("inf")), "--lr inf"), (dict(size=4), "--size 4"),
    (dict(size=64, item_size=32), "--item-size 32: must be an integer >= --size (64)"),
    (dict(min_scale=0.0), "--min-scale"), (dict(min_scale=1.5), "--min-scale"),
    (dict(valid_pct=1.0), "--valid-pct"), (dict(valid_pct=0), "--valid-pct"), (dict(split_seed=-1), "--split-seed"),
    (dict(seed=-1), "--seed"), (dict(seed=1.5), "--seed"),
    (dict(noise=1.0), "--noise 1.0"), (dict(noise=-0.1), "--noise"), (dict(noise_kind="pairflip"), "--noise-kind"),
    (dict(precision="fp8"), "--precision 'fp8': use one of auto, fp32, fp16, bf16"),
    (dict(workers=-1), "--workers"), (dict(threads=0), "--threads"), (dict(pretrained="yes"), "--pretrained"),
    (dict(dataset="imagenet"), "--dataset 'imagenet' is unknown; use one of pets, digits, tiny"),
    (dict(arch="resnet43"), "did you mean resnet34"), (dict(arch="zzqqxx"), "not a torchvision or timm model"),
]


@pytest.mark.parametrize("bad, needle", BAD, ids=[str(b) for b, _ in BAD])
def test_bad_settings_raise_one_line_naming_the_flag(bad, needle):
    with pytest.raises(ConfigError) as info:
        resolve(Config(**({"dataset": "tiny"} | bad)))
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is allowed with a GPU")
def test_fp16_needs_a_gpu():
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve(Config(precision="fp16"))


def test_arch_names_torchvision_first_then_timm():
    import torchvision

    assert T.resolve_arch("resnet34") is torchvision.models.resnet34
    assert T.resolve_arch("convnext_atto") == "convnext_atto"


# ---------------------------------------------------------------- data, dry run, offline
def test_dry_run_prints_config_and_data_writes_nothing(tmp_path, capsys, tiny_dir):
    T.dry_run(tiny_config(tiny_dir, tmp_path / "runs", noise=0.2))
    out = capsys.readouterr().out
    assert '"arch": "resnet18"' in out and '"item_size": 32' in out
    assert "222 images, 37 classes: 178 train / 44 valid" in out
    assert "label noise: 36 of 178 training labels changed" in out
    assert not (tmp_path / "runs").exists()


def test_split_settings_reach_the_data(tiny_dir, tmp_path):
    data = T.load_data(resolve(tiny_config(tiny_dir, tmp_path, valid_pct=0.5, split_seed=1)))
    assert (len(data.train), len(data.valid)) == (111, 111)


def _offline(*args, **kwargs):
    raise URLError("[Errno -2] Name or service not known")


def test_offline_the_data_error_comes_first_and_names_every_way_out(monkeypatch, tmp_path):
    monkeypatch.setattr(lsmooth.data, "untar_data", _offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("weights before data"))
    with pytest.raises(lsmooth.data.DataError) as info:
        train(Config(out=str(tmp_path / "runs")))
    msg = str(info.value)
    assert "\n" not in msg
    for way_out in ("--data PATH", "--dataset digits", "--no-pretrained", "resnet34-", str(tmp_path / "hub")):
        assert way_out in msg, msg


def test_offline_without_weights_to_fetch_names_only_the_data(monkeypatch, tmp_path):
    monkeypatch.setattr(lsmooth.data, "untar_data", _offline)
    with pytest.raises(lsmooth.data.DataError) as info:
        T.load_data(resolve(Config(pretrained=False)))
    assert "--dataset digits" in str(info.value) and "--no-pretrained" not in str(info.value)


def test_unwritable_out_is_a_config_error(tmp_path, tiny_dir):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match="--out"):
        train(tiny_config(tiny_dir, tmp_path / "a_file" / "runs"))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_out_is_a_config_error(tmp_path, tiny_dir):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="--out.*cannot write"):
        train(tiny_config(tiny_dir, locked))


def test_bs_larger_than_the_training_set(tmp_path, tiny_dir):
    with pytest.raises(lsmooth.data.DataError, match="larger than the training set"):
        train(tiny_config(tiny_dir, tmp_path, bs=4096))


# ---------------------------------------------------------------- end to end on tiny
@pytest.mark.slow
def test_tiny_run_writes_its_folder(tmp_path, capsys, tiny_dir):
    final = train(tiny_config(tiny_dir, tmp_path, eps=0.1, noise=0.1))
    run = Path(final["run_dir"])
    assert run.parent == tmp_path
    assert {p.name for p in run.iterdir()} == {CONFIG_FILE, ENV_FILE, METRICS_FILE, FINAL_FILE, PREDS_FILE}
    assert json.loads((run / FINAL_FILE).read_text()) == final
    config = json.loads((run / CONFIG_FILE).read_text())
    resolved = dataclasses.asdict(resolve(tiny_config(tiny_dir, tmp_path, eps=0.1, noise=0.1)))
    assert {k: config[k] for k in FIELDS} == resolved  # every setting, resolved
    assert config["data_folder"] == str(tiny_dir / "images") and config["processes"] == 1
    env = json.loads((run / ENV_FILE).read_text())
    assert {"torch", "fastai", "device", "torch_threads"} <= env.keys()
    rows = (run / METRICS_FILE).read_text().splitlines()
    assert rows[0].split(",")[:5] == ["epoch", "train_loss", "valid_loss", "error_rate", "accuracy"]
    assert len(rows) == 2
    for key in ("error_rate", "accuracy", "nll", "ece", "brier", "wall_time_s", "images_per_s"):
        assert isinstance(final[key], float)
    assert final["error_rate"] == pytest.approx(1 - final["accuracy"]) and final["noisy_labels"] == 18
    preds = torch.load(run / PREDS_FILE)
    assert preds["probs"].shape == (44, 37) and preds["targets"].shape == (44,)
    out = capsys.readouterr().out
    assert "error" in out and "ECE" in out and f"run folder: {run}" in out


@pytest.mark.slow
def test_a_single_run_needs_no_accelerate(tmp_path, tiny_dir):
    """The main command installs no extras: accelerate (needed by fastai.distributed) is optional."""
    code = (
        "import sys\n"
        "sys.modules['accelerate'] = None  # as if not installed: importing it raises ModuleNotFoundError\n"
        "from tests.conftest import tiny_config\n"
        "from lsmooth.train import train\n"
        f"final = train(tiny_config({str(tiny_dir)!r}, {str(tmp_path)!r}, epochs=1))\n"
        "assert 'accelerate' not in {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}\n"
        "print('error_rate', final['error_rate'])\n"
    )
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         env=os.environ | {"PYTHONPATH": str(root)}, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "error_rate" in res.stdout


@pytest.mark.slow
def test_baseline_eps0_uses_fastai_cross_entropy_and_path_is_the_run_folder(tmp_path, tiny_dir, monkeypatch):
    from fastai.losses import CrossEntropyLossFlat

    seen = {}
    real = T.vision_learner

    def spy(*args, **kwargs):
        seen["learn"] = real(*args, **kwargs)
        return seen["learn"]

    monkeypatch.setattr(T, "vision_learner", spy)
    final = train(tiny_config(tiny_dir, tmp_path, eps=0.0))
    assert isinstance(seen["learn"].loss_func, CrossEntropyLossFlat)
    assert seen["learn"].path == Path(final["run_dir"])


@pytest.mark.slow
def test_messy_images_train_and_report_skipped(tmp_path, capsys, messy_dir):
    final = train(tiny_config(messy_dir, tmp_path, bs=8))
    assert final["skipped_images"] == 1
    assert "skipped 1 unreadable image(s): 'beagle_116.jpg'" in capsys.readouterr().out


@pytest.mark.slow
def test_bf16_autocast_on_cpu_trains(tmp_path, tiny_dir):
    final = train(tiny_config(tiny_dir, tmp_path, precision="bf16"))
    config = json.loads((Path(final["run_dir"]) / CONFIG_FILE).read_text())
    assert config["precision"] == "bf16" and 0 <= final["error_rate"] <= 1


@pytest.mark.slow
def test_cached_torchvision_weights_load_without_network(tmp_path, tiny_dir, monkeypatch):
    import torchvision

    hub = tmp_path / "hub"
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), hub / "checkpoints" / Path(url).name)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("tried to use the network"))
    final = train(tiny_config(tiny_dir, tmp_path, pretrained=True))
    assert final["n_train"] == 178


@pytest.mark.slow
def test_same_seed_same_metrics_every_epoch(tiny_dir, tmp_path):
    runs = [train(tiny_config(tiny_dir, tmp_path / str(i), epochs=2, seed=seed)) for i, seed in enumerate((0, 0, 1))]
    tables = [(Path(r["run_dir"]) / METRICS_FILE).read_text().splitlines() for r in runs]
    drop_time = [[row.rsplit(",", 1)[0] for row in t] for t in tables]
    assert drop_time[0] == drop_time[1] and len(drop_time[0]) == 3
    keys = ("error_rate", "nll", "ece", "brier")
    assert [runs[0][k] for k in keys] == [runs[1][k] for k in keys]
    assert runs[2]["nll"] != runs[0]["nll"]  # the seed does matter
