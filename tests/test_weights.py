"""lsmooth.weights: pretrained weights from the cache without the network; offline, one line saying where they go."""

from pathlib import Path
from urllib.error import URLError

import huggingface_hub
import pytest
import torch
import torchvision

from lsmooth.weights import WeightsUnavailable, pretrained_kwargs, weights_hint


def _offline(*args, **kwargs):
    raise URLError("[Errno -2] Name or service not known")


def test_offline_torchvision_weights_say_where_they_go(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _offline)
    with pytest.raises(WeightsUnavailable) as info:
        pretrained_kwargs(torchvision.models.resnet18)
    msg = str(info.value)
    assert "\n" not in msg and "--no-pretrained" in msg and "resnet18-" in msg and str(tmp_path / "hub") in msg
    assert "Name or service not known" in msg


def test_cached_torchvision_weights_need_no_download(monkeypatch, tmp_path):
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / Path(url).name).write_bytes(b"")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("network used"))
    assert pretrained_kwargs(torchvision.models.resnet18) == {}
    assert weights_hint("resnet18") == ""


def test_hint_names_the_cache_of_missing_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    hint = weights_hint("resnet34")
    assert hint.startswith("; ") and "--no-pretrained" in hint and str(tmp_path / "checkpoints") in hint


def test_offline_timm_weights_say_where_they_go(monkeypatch):
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _offline)
    with pytest.raises(WeightsUnavailable, match="--no-pretrained") as info:
        pretrained_kwargs("convnext_atto")
    assert "\n" not in str(info.value) and "Hugging Face cache" in str(info.value)
    assert "--no-pretrained" in weights_hint("convnext_atto")


def test_cached_timm_weights_are_loaded_from_the_cache(monkeypatch, tmp_path):
    cached = tmp_path / "model.safetensors"
    cached.write_bytes(b"")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: str(cached))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("network used"))
    assert pretrained_kwargs("convnext_atto") == {"pretrained_cfg_overlay": {"file": str(cached)}}
    assert weights_hint("convnext_atto") == ""
