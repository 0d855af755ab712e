"""lsmooth.runs: atomic files, run folders, random streams that survive a weights-only checkpoint."""

import json
import random

import numpy as np
import pytest
import torch

from lsmooth import runs
from lsmooth.runs import atomic_save_torch, atomic_write_json, check_writable, new_run_dir, rng_state, set_rng_state


def test_interrupted_atomic_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / runs.CHECKPOINT_FILE
    atomic_save_torch(path, {"epoch": 0})

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # what a kill mid-write looks like from inside

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        atomic_save_torch(path, {"epoch": 1})
    monkeypatch.undo()
    assert torch.load(path) == {"epoch": 0}
    assert [p.name for p in tmp_path.iterdir()] == [runs.CHECKPOINT_FILE]  # no temp file left
    atomic_write_json(tmp_path / runs.FINAL_FILE, {"a": 1})
    assert json.loads((tmp_path / runs.FINAL_FILE).read_text()) == {"a": 1}


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    atomic_save_torch(tmp_path / "rng.pth", rng_state())
    draws = (random.random(), np.random.rand(), torch.rand(2))
    set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True))
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert draws[:2] == again[:2] and torch.equal(draws[2], again[2])


def test_new_run_dirs_never_collide(tmp_path):
    a, b = new_run_dir(tmp_path, "same name/with slash"), new_run_dir(tmp_path, "same name/with slash")
    assert a != b and a.name.endswith("same_name_with_slash") and b.name.endswith("-2")


def test_check_writable_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        check_writable(tmp_path / "f")
    with pytest.raises(PermissionError, match="cannot write"):
        check_writable(tmp_path / "f" / "below")


def test_file_names_are_distinct():
    names = [runs.CONFIG_FILE, runs.ENV_FILE, runs.METRICS_FILE, runs.FINAL_FILE, runs.PREDS_FILE, runs.CHECKPOINT_FILE]
    assert len(set(names)) == len(names)


def test_atomic_writes_get_the_mode_open_would_give(tmp_path, monkeypatch):
    """Not mkstemp's owner-only 0600: results copied or shared keep the usual permissions."""
    monkeypatch.setattr(runs, "_UMASK", 0o022)  # the usual umask, whatever this process has
    for f in (atomic_write_json(tmp_path / "a.json", {}), atomic_save_torch(tmp_path / "b.pt", {})):
        assert f.stat().st_mode & 0o777 == 0o644
