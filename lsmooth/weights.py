"""Pretrained ImageNet weights: loaded from the local cache when there, downloaded otherwise.

A download that fails (offline) raises :class:`WeightsUnavailable`, one line saying where the file
goes; :func:`weights_hint` says the same, without touching the network, for an error that comes
first (the data).
"""

from __future__ import annotations

import sys
from contextlib import redirect_stderr
from pathlib import Path
from urllib.parse import urlparse

__all__ = ["WeightsUnavailable", "pretrained_kwargs", "weights_hint"]


class WeightsUnavailable(RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


def _reason(e: Exception) -> str:
    return " ".join(str(getattr(e, "reason", "") or e).split()) or type(e).__name__


def _torch_hub_file(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps (and first looks for) ``url``."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _timm_hub_id(arch: str) -> str:
    import timm

    pcfg = timm.models.get_pretrained_cfg(arch)
    if pcfg is None or not pcfg.hf_hub_id:
        raise WeightsUnavailable(f"timm has no pretrained weights for {arch!r} on the Hugging Face hub; "
                                 f"use --no-pretrained")
    return pcfg.hf_hub_id


def _timm_cached(hub_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for fname in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(hub_id, fname)
        if isinstance(hit, str):
            return hit
    return None


def weights_hint(arch: str) -> str:
    """``''`` when the weights of ``arch`` are cached; else a clause saying where they go."""
    import timm
    import torchvision

    if timm.is_model(arch) and arch not in torchvision.models.list_models(module=torchvision.models):
        from huggingface_hub.constants import HF_HUB_CACHE

        try:
            hub_id = _timm_hub_id(arch)
        except WeightsUnavailable as e:
            return f"; {e}"
        if _timm_cached(hub_id):
            return ""
        where = f"{hub_id} in {HF_HUB_CACHE}"
    else:
        file = _torch_hub_file(torchvision.models.get_model_weights(arch).DEFAULT.url)
        if file.exists():
            return ""
        where = f"{file.name} in {file.parent}"
    return f"; the pretrained {arch} weights are not cached either: use --no-pretrained or put {where}"


def pretrained_kwargs(arch) -> dict:
    """Make sure the weights of ``arch`` are local; extra ``vision_learner`` kwargs to load them.

    ``arch``: a torchvision model function or a timm name. Cached weights load without touching
    the network; otherwise they are downloaded (progress on stdout).
    """
    import torch
    import torchvision

    if isinstance(arch, str):  # timm: from the Hugging Face hub cache
        from huggingface_hub import hf_hub_download
        from huggingface_hub.constants import HF_HUB_CACHE

        hub_id = _timm_hub_id(arch)
        file = _timm_cached(hub_id)
        if file is None:
            try:
                file = hf_hub_download(hub_id, "model.safetensors")
            except Exception as e:  # noqa: BLE001 - requests, hub and OS errors each have their own type
                raise WeightsUnavailable(f"cannot download pretrained {arch} weights from huggingface.co/{hub_id} "
                                         f"({_reason(e)}): use --no-pretrained, or put them in the Hugging Face "
                                         f"cache {HF_HUB_CACHE}") from None
        return {"pretrained_cfg_overlay": {"file": file}}
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    file = _torch_hub_file(url)
    if not file.exists():
        try:
            with redirect_stderr(sys.stdout):  # torch.hub reports downloads on stderr
                torch.hub.load_state_dict_from_url(url, progress=sys.stdout.isatty(), map_location="cpu")
        except Exception as e:  # noqa: BLE001 - URLError, HTTPError, timeouts, hash mismatch
            raise WeightsUnavailable(f"cannot download pretrained weights {url} ({_reason(e)}): use "
                                     f"--no-pretrained, or put {file.name} in {file.parent}") from None
    return {}
