"""Data-parallel training: 2 processes = 1 process (weights and biases), the biases drift without the
all-reduce, resume inside a process group, torchrun end to end, a clear error for an uneven batch.

Each spawn or torchrun starts processes (seconds each on 2 cores), so one spawn runs several trainings.
"""

import os
import subprocess
import sys

import pytest
import torch

from dsv3_edu import distributed as D
from dsv3_edu import train as T
from dsv3_edu.checkpoint import read_checkpoint_tensors, to_checkpoint_state
from dsv3_edu.data import BlockDataset, documents, load_corpus

torch.set_num_threads(1)
STEPS = 4


def _small(split, n_docs):
    corpus = {d: "".join(doc + "<|endoftext|>\n" for doc in documents(text)[:n_docs])
              for d, text in load_corpus(split).items()}
    return BlockDataset(split, 32, corpus=corpus)


@pytest.fixture(scope="module")
def setup():
    data = {"train_data": _small("train", 40), "val_data": _small("validation", 10)}
    mc, tc = T.preset("smoke", steps=STEPS, device="cpu", eval_blocks_per_domain=2, record_routing=True)
    single, history = T.train(mc, tc, progress=False, **data)
    return mc, tc, data, single.state_dict(), history


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _biases(state):
    return {k: v for k, v in state.items() if k.endswith("e_score_correction_bias")}


@pytest.fixture(scope="module")
def two_ranks(setup, tmp_path_factory):
    mc, tc, data, _, _ = setup
    out = tmp_path_factory.mktemp("dp")
    runs = [dict(train_config=tc, **data),  # global loads (the default)
            dict(train_config=tc, sync_loads=False, **data),  # each rank steers by its own shard
            dict(train_config=tc, out_dir=str(out), stop_at=2, **data),  # "interrupted" after step 2
            dict(train_config=tc, out_dir=str(out), resume=True, **data)]
    return D.run_data_parallel(mc, runs, world_size=2)


def test_two_processes_end_like_one(setup, two_ranks):
    _, _, _, single, history = setup
    for rank in range(2):
        state = two_ranks[rank][0]["state"]
        assert _max_diff(state, single) <= 1e-5
        assert _max_diff(_biases(state), _biases(single)) == 0.0  # same global counts, same sign steps
        assert any(v.abs().max() > 0 for v in _biases(state).values())  # the biases did move
    got = [r["loss"] for r in two_ranks[0][0]["history"]]
    assert got == pytest.approx([r["loss"] for r in history], abs=1e-5)  # rank 0 logs the global loss
    assert "val_loss" in two_ranks[0][0]["history"][-1] and "val_loss" not in two_ranks[1][0]["history"][-1]


def test_biases_drift_apart_without_the_all_reduce(two_ranks):
    a, b = two_ranks[0][1]["state"], two_ranks[1][1]["state"]
    drift = _max_diff(_biases(a), _biases(b))
    assert drift >= 1e-3  # at least one gamma step apart
    weights = {k: v for k, v in a.items() if k not in _biases(a)}
    # DDP keeps the weights equal (it averages the gradients); nothing keeps the buffers equal
    assert _max_diff(weights, {k: b[k] for k in weights}) <= 1e-5


def test_resume_inside_a_process_group(two_ranks):
    full, resumed = two_ranks[0][0], two_ranks[0][3]
    assert _max_diff(full["state"], resumed["state"]) == 0.0
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in full["history"]]


def test_torchrun_two_processes_equal_one(setup, tmp_path):
    mc, tc, _, _, _ = setup
    single, _ = T.train(mc, tc.replace(record_routing=False), progress=False)  # the full corpus, as the CLI
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dsv3_edu.train",
           "--preset", "smoke", "--steps", str(STEPS), "--device", "cpu", "--out", str(tmp_path / "run"),
           "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("parameters") == 1  # only rank 0 reports
    saved, mine = read_checkpoint_tensors(tmp_path / "run"), to_checkpoint_state(single)
    assert _max_diff(saved, mine) <= 1e-5
    assert any(k.endswith("e_score_correction_bias") for k in saved)


def test_uneven_global_batch_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):
        T.main(["--preset", "smoke", "--batch-size", "3", "--steps", "1"])
    assert "does not split over 2 ranks: use a multiple of 2" in capsys.readouterr().err
    mc, tc = T.preset("smoke", batch_size=6)
    with pytest.raises(ValueError, match="does not split over 4 ranks"):
        D.run_data_parallel(mc, [dict(train_config=tc)], world_size=4)  # refused before any process starts
