"""Two processes (torchrun, gloo on CPU), what `accelerate launch --multi_gpu` does with GPUs: one run folder
written by rank 0, and a SIGKILL then --resume that ends exactly like the uninterrupted two-process run."""

import json
import signal
import socket
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, epochs_table, final_metrics, recipe_env, tiny_argv, wait_for

from lsmooth import distributed
from lsmooth.runs import CHECKPOINT_FILE, CONFIG_FILE, ENV_FILE, FINAL_FILE, METRICS_FILE, PREDS_FILE


def test_one_process_starts_no_group():
    assert distributed.setup() == 1
    assert distributed.rank0_first(lambda x: x + 1, 1) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), str(ROOT / "recipes" / "pets.py"), *map(str, args)]


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers (they live in their own sessions)."""
    psutil = pytest.importorskip("psutil")
    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:  # already over
        proc.wait()
        return
    for p in procs:
        p.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(procs, timeout=10)


@pytest.mark.slow
def test_two_processes_write_once_and_resume_after_sigkill(tiny_dir, tmp_path):
    pytest.importorskip("accelerate")
    env = recipe_env(OMP_NUM_THREADS="1")
    full = subprocess.run(_torchrun(*tiny_argv(tiny_dir, tmp_path / "full")), capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    (ref,) = (tmp_path / "full").iterdir()  # one run folder, written by rank 0 only
    assert [p.name for p in tmp_path.iterdir()] == ["full"]  # and nothing else anywhere
    assert {p.name for p in ref.iterdir()} == {CONFIG_FILE, ENV_FILE, METRICS_FILE, FINAL_FILE, PREDS_FILE}
    assert json.loads((ref / CONFIG_FILE).read_text())["processes"] == 2
    assert full.stdout.count("run folder:") == 1 and full.stdout.count("label noise:") == 1  # rank 0 prints
    assert len(epochs_table(ref)) == 3
    assert torch.load(ref / PREDS_FILE)["probs"].shape == (44, 37)  # both shards, gathered once, unpadded

    proc = subprocess.Popen(_torchrun(*tiny_argv(tiny_dir, tmp_path / "cut")), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)
    try:
        ckpt = wait_for(tmp_path / "cut", f"*/{CHECKPOINT_FILE}", proc)
    finally:
        _kill_tree(proc)
    assert not (ckpt.parent / FINAL_FILE).exists()
    res = subprocess.run(_torchrun("--resume", ckpt.parent), capture_output=True, text=True, timeout=300, env=env,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert final_metrics(ckpt.parent) == final_metrics(ref)
    assert epochs_table(ckpt.parent) == epochs_table(ref)
    assert {p.name for p in ckpt.parent.iterdir()} == {p.name for p in ref.iterdir()}  # checkpoint removed
