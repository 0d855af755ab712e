"""lsmooth.runs: atomic files, the machine description, reading a run folder back."""

import json

import pytest
import torch

from lsmooth import runs
from lsmooth.runs import atomic_save_torch, atomic_write_json, check_writable, environment, machine_line, read_run


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


def test_environment_and_its_one_line():
    env = environment()
    assert {"torch", "fastai", "cpu", "cpu_count", "torch_threads", "load_avg", "device", "git_commit"} <= env.keys()
    line = machine_line(env | {"cpu": "AMD EPYC 7B13", "cpu_count": 2, "torch_threads": 1, "load_avg": 0.84})
    assert line.startswith("AMD EPYC 7B13 (2 CPUs, 1 torch thread, load 0.8), no GPU; torch ")
    gpu = machine_line(env | {"device": "cuda:0", "device_name": "NVIDIA H200", "torch_threads": 2, "load_avg": None})
    assert "threads)" in gpu and ", NVIDIA H200; torch" in gpu


def test_read_run_returns_a_finished_run_only(tmp_path):
    assert read_run(tmp_path) is None
    atomic_write_json(tmp_path / runs.CONFIG_FILE, {"eps": 0.1})
    assert read_run(tmp_path) is None  # started, not finished
    atomic_write_json(tmp_path / runs.FINAL_FILE, {"error_rate": 0.5})
    assert read_run(tmp_path) == {"run_dir": str(tmp_path), "config": {"eps": 0.1}, "final": {"error_rate": 0.5},
                                  "env": {}}
