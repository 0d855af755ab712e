"""lsmooth/sweep.py: grid and shards, the results file, resume, merging, the sweep folder.

Training is faked (run folders written by tests/fake_runs.py) except where marked slow; the
end-to-end sweeps through the command line are in tests/test_compare.py.
"""

import dataclasses
import json
from pathlib import Path

import pytest
from fake_runs import SETTINGS, fake_row, fake_run_dir

from lsmooth.report import SUMMARY_JSON
from lsmooth.runs import FINAL_FILE
from lsmooth.sweep import (
    SWEEP_FILE,
    Job,
    SweepError,
    append_result,
    check_sweep_folder,
    grid,
    load_results,
    merge,
    parse_shard,
    read_results,
    results_file,
    run_jobs,
    run_key,
    run_sweep,
    shard,
)


# ---------------------------------------------------------------- grid and shards
def test_grid_is_every_combination_once_in_a_fixed_order():
    g = grid([0, 0.1, 0.1], [0, 0.4], [2, 1])
    assert len(g) == 2 * 2 * 2 and len({j.key for j in g}) == 8
    assert g[0] == Job(0.0, 0.0, 2) and g[1] == Job(0.0, 0.0, 1)  # seeds vary fastest, order kept
    assert grid([0, 0.1], [0], [0, 1]) == grid([0, 0.1], [0], [0, 1])


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 13])
def test_shards_cover_the_grid_exactly_once(n):
    g = grid([-0.1, 0, 0.1, 0.3], [0, 0.2, 0.4], [0, 1])  # 24 jobs
    parts = [shard(g, i, n) for i in range(1, n + 1)]
    keys = [j.key for p in parts for j in p]
    assert sorted(keys) == sorted(j.key for j in g)  # covered, and no job twice
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
    assert parts == [shard(g, i, n) for i in range(1, n + 1)]  # deterministic


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "a/b", "1", "1/2/3", "-1/2"])
def test_parse_shard_rejects(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)
    assert parse_shard("2/3") == (2, 3)


def test_results_file_names():
    assert results_file("o") == Path("o/results.jsonl")
    assert results_file("o", (2, 3)) == Path("o/results-shard2of3.jsonl")


# ---------------------------------------------------------------- results file
def test_append_whole_lines_and_cut_a_torn_tail(tmp_path):
    f = tmp_path / "results.jsonl"
    append_result(f, {"key": "a", "x": 1})
    with f.open("a") as fh:  # a writer killed mid-line
        fh.write('{"key": "b", "x"')
    with pytest.warns(UserWarning, match="unreadable line"):
        assert [r["key"] for r in read_results(f)] == ["a"]
    append_result(f, {"key": "c", "x": 3})
    assert [r["key"] for r in read_results(f)] == ["a", "c"]
    assert f.read_text().endswith("\n") and f.read_text().count("\n") == 2


def test_load_results_merges_shards_dedups_and_refuses_mixed_settings(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    rows = [fake_row(a, 0.0, 0, 0.1), fake_row(a, 0.1, 0, 0.2), fake_row(b, 0.0, 1, 0.3)]
    append_result(a / "results-shard1of2.jsonl", rows[0])
    append_result(a / "results-shard1of2.jsonl", rows[1])
    append_result(b / "results-shard2of2.jsonl", rows[2])
    append_result(b / "results-shard2of2.jsonl", rows[0])  # the same run twice: kept once
    merged = load_results(a, b / "results-shard2of2.jsonl")
    assert [r["key"] for r in merged] == [run_key(0, 0, 0), run_key(0, 0, 1), run_key(0.1, 0, 0)]
    append_result(b / "results-shard2of2.jsonl", fake_row(b, 0.1, 1, 0.3) | {"settings": SETTINGS | {"epochs": 9}})
    with pytest.raises(ValueError, match="epochs=2 .* epochs=9"):
        load_results(a, b)
    with pytest.raises(FileNotFoundError):
        load_results(tmp_path / "missing")


def test_load_results_finds_moved_run_folders(tmp_path):
    a = tmp_path / "machine1"
    row = fake_row(a, 0.0, 0, 0.1)
    append_result(a / "results.jsonl", row | {"run_dir": "/elsewhere/gone"})
    assert load_results(a)[0]["run_dir"] == str(a / row["run_dir_rel"])


# ---------------------------------------------------------------- running a grid
def fake_train(root: Path, calls: list, stop_at: int | None = None):
    """A train_one that writes a fake run folder; raises KeyboardInterrupt on call number ``stop_at``."""
    def train_one(job: Job) -> dict:
        calls.append(job.key)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        run = fake_run_dir(root / "runs" / job.key.replace("|", "-"), job.eps, job.seed, 0.1 + job.eps)
        return {"run_dir": str(run), "error_rate": 0.1 + job.eps, "nll": 0.2, "ece": 0.05, "brier": 0.1}
    return train_one


def test_run_jobs_writes_a_row_per_run_and_resumes_after_an_interrupt(tmp_path):
    jobs, results = grid([0, 0.1], [0], [0, 1]), tmp_path / "results.jsonl"
    calls: list = []
    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, fake_train(tmp_path, calls, stop_at=3), results, SETTINGS, log=lambda s: None)
    first = read_results(results)
    assert [r["key"] for r in first] == [j.key for j in jobs[:2]]
    assert first[0]["settings"] == SETTINGS and first[0]["run_dir_rel"].startswith("runs/")
    assert 1 < first[0]["temperature"] and "ece_ts" in first[0]  # temperature scaling of valid_preds.pt
    calls.clear()
    new = run_jobs(jobs, fake_train(tmp_path, calls), results, SETTINGS, log=lambda s: None)
    assert calls == [j.key for j in jobs[2:]] and len(new) == 2  # only the unfinished runs
    assert read_results(results)[:2] == first
    calls.clear()
    assert run_jobs(jobs, fake_train(tmp_path, calls), results, SETTINGS, done_from=[tmp_path],
                    log=lambda s: None) == [] and calls == []


def test_a_sweep_folder_records_commands_and_refuses_other_settings(tmp_path):
    check_sweep_folder(tmp_path, {"dataset": "tiny", "epochs": 1}, "first")
    check_sweep_folder(tmp_path, {"dataset": "tiny", "epochs": 1}, "again")  # same settings: resume
    record = json.loads((tmp_path / SWEEP_FILE).read_text())
    assert [c["command"] for c in record["commands"]] == ["first", "again"]
    assert record["commands"][0]["environment"]["torch"]
    with pytest.raises(SweepError, match="epochs=1, not 2"):
        check_sweep_folder(tmp_path, {"dataset": "tiny", "epochs": 2})


def test_merge_summarises_folders_with_their_provenance(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for s in (0, 1):
        append_result(a / "results-shard1of2.jsonl", fake_row(a, 0.0, s, 0.1 * (s + 1)))
        append_result(b / "results-shard2of2.jsonl", fake_row(b, 0.1, s, 0.1))
    check_sweep_folder(a, SETTINGS, "python recipes/compare.py --shard 1/2")
    data = merge([a, b], tmp_path / "m", command="python recipes/compare.py --merge a b")
    assert data["n_runs"] == 4 and data["provenance"]["command"].endswith("--merge a b")
    assert [c["command"] for sw in data["provenance"]["sweeps"] for c in sw["commands"]] == [
        "python recipes/compare.py --shard 1/2"]
    assert json.loads((tmp_path / "m" / SUMMARY_JSON).read_text()) == json.loads(json.dumps(data))
    with pytest.raises(SweepError, match="no finished runs"):
        merge([tmp_path / "m"], tmp_path / "m2")


def test_run_sweep_trains_the_grid_resumes_and_refuses_other_settings(tmp_path, tiny_dir, monkeypatch):
    import lsmooth.train

    trained = []

    def train(cfg):  # the real resolve, a fake train
        trained.append((cfg.eps, cfg.seed))
        run = fake_run_dir(Path(cfg.out) / cfg.name, cfg.eps, cfg.seed, 0.1)
        (run / FINAL_FILE).write_text("{}")
        return {"run_dir": str(run), "error_rate": 0.1 + cfg.eps, "nll": 0.2, "ece": 0.05, "brier": 0.1}

    monkeypatch.setattr(lsmooth.train, "train", train)
    base = lsmooth.train.Config(dataset="tiny", data=str(tiny_dir), epochs=1, size=16)
    out = tmp_path / "sweep"
    data = run_sweep(base, [0, 0.1], [0], [0, 1], out, command="cmd", log=lambda s: None)
    assert trained == [(0, 0), (0, 1), (0.1, 0), (0.1, 1)] and data["n_runs"] == 4
    assert (out / "runs").is_dir() and (out / SUMMARY_JSON).exists()
    assert data["provenance"]["sweeps"][0]["settings"]["epochs"] == 1
    run_sweep(base, [0, 0.1], [0], [0, 1], out, command="again", log=lambda s: None)  # nothing to do
    run_sweep(base, [0, 0.1, 0.2], [0], [0, 1], out, command="more", log=lambda s: None)  # one arm more
    assert trained[4:] == [(0.2, 0), (0.2, 1)]
    assert [c["command"] for c in json.loads((out / SWEEP_FILE).read_text())["commands"]] == ["cmd", "more"]
    with pytest.raises(SweepError, match="epochs=1, not 2"):
        run_sweep(dataclasses.replace(base, epochs=2), [0], [0], [0], out, log=lambda s: None)
    with pytest.raises(lsmooth.train.ConfigError):
        run_sweep(base, [0, 1.5], [0], [0], tmp_path / "bad", log=lambda s: None)
    assert not (tmp_path / "bad" / SWEEP_FILE).exists()
