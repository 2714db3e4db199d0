"""Checkpoints survive a kill at any instant: a failure injected at every filesystem operation of a run's
save (and of its start), each followed by a resume that must give the uninterrupted run bit for bit.

Every operation that changes the disk goes through one of the functions patched here: os.{replace, rename,
link, unlink, rmdir, mkdir, open, fsync, chmod} and the three writers (safetensors' save_file, torch.save,
Path.write_text). A first run counts them; then for each k a fresh copy of the same checkpoint is resumed
with a failure at operation k:

- "kill": operation k raises, a writer first leaving half a file, and from then on every operation raises
  too (a killed process cannot clean up), so whatever temporaries were on disk stay there;
- "error": operation k raises OSError (disk full, I/O error) and the process goes on, so the trainer's own
  clean-up runs and must leave no temporary of a write behind (a failure to delete an old checkpoint is not
  fatal: the run goes on and the next start removes it).

Then a plain resume must finish the run with the uninterrupted run's losses and weights, exactly, and leave
no temporary file or folder.
"""

import os
import pathlib
import shutil

import pytest
import torch

import dsv3_edu.checkpoint as C
import dsv3_edu.train as T
from dsv3_edu.data import BlockDataset, documents, load_corpus

torch.set_num_threads(1)

OS_OPS = ("replace", "rename", "link", "unlink", "rmdir", "mkdir", "open", "fsync", "chmod")


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no `except Exception` swallows it."""


class Faults:
    """Wraps every disk-changing function; counts calls, and fails from call number ``fail_at`` on."""

    def __init__(self, monkeypatch, fail_at=None, mode="kill"):
        self.count, self.fail_at, self.mode, self.names, self.dead = 0, fail_at, mode, [], False
        for name in OS_OPS:
            monkeypatch.setattr(os, name, self.wrap(f"os.{name}", getattr(os, name)))
        monkeypatch.setattr(C, "save_file", self.wrap("save_file", C.save_file, writer=True))
        monkeypatch.setattr(torch, "save", self.wrap("torch.save", torch.save, writer=True))
        monkeypatch.setattr(pathlib.Path, "write_text", self.wrap("write_text", pathlib.Path.write_text, writer=True))

    def wrap(self, name, fn, writer=False):
        def op(*args, **kwargs):
            if self.dead:
                raise Killed(f"dead process: {name}")
            self.count += 1
            self.names.append(name)
            if self.count == self.fail_at:
                if writer:  # the kill or the full disk comes mid-write: half a file is there
                    target = args[0] if name == "write_text" else args[1]
                    with open(target, "wb") as f:
                        f.write(b"half a fi")
                if self.mode == "kill":
                    self.dead = True
                    raise Killed(f"killed at operation {self.count} ({name})")
                raise OSError(28, f"No space left on device (injected at operation {self.count}, {name})")
            return fn(*args, **kwargs)

        return op


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small run (4 steps, checkpoints at 2 and 4), its uninterrupted result, and its checkpoint at step 2."""
    def small(split, n_docs):
        corpus = {d: "".join(doc + "<|endoftext|>\n" for doc in documents(text)[:n_docs])
                  for d, text in load_corpus(split).items()}
        return BlockDataset(split, 32, corpus=corpus)

    data = {"train_data": small("train", 20), "val_data": small("validation", 4)}
    mc, tc = T.preset("smoke", steps=4, save_every=2, batch_size=2, eval_blocks_per_domain=1, device="cpu")
    full_model, full_history = T.train(mc, tc, progress=False, **data)
    base = tmp_path_factory.mktemp("base") / "run"
    T.train(mc, tc, out_dir=base, progress=False, stop_at=2, **data)
    assert [s for s, _ in T.checkpoint_dirs(base)] == [2]
    return dict(mc=mc, tc=tc, data=data, base=base, weights=full_model.state_dict(), history=full_history)


def temporaries(folder):
    return [str(p.relative_to(folder)) for p in folder.rglob(".*")]


def resume(setup, out):
    return T.train(setup["mc"], setup["tc"], out_dir=out, progress=False, resume=True, **setup["data"])


def assert_same_run(setup, model, history, out):
    assert [r["loss"] for r in history] == [r["loss"] for r in setup["history"]]
    assert [r.get("val_loss") for r in history] == [r.get("val_loss") for r in setup["history"]]
    got = model.state_dict()
    assert got.keys() == setup["weights"].keys()
    assert all(torch.equal(got[k], setup["weights"][k]) for k in got)  # bit for bit, balancing biases included
    published = C.load_pretrained(out).state_dict()  # the released layout on top shows the newest checkpoint
    assert all(torch.equal(published[k], setup["weights"][k]) for k in published)
    assert [s for s, _ in T.checkpoint_dirs(out)] == [4]
    assert temporaries(out) == []


def count_operations(setup, tmp_path, monkeypatch):
    out = tmp_path / "count"
    shutil.copytree(setup["base"], out)
    with monkeypatch.context() as m:
        faults = Faults(m)
        model, history = resume(setup, out)
    assert_same_run(setup, model, history, out)
    return faults


def test_the_count_covers_a_whole_save(setup, tmp_path, monkeypatch):
    faults = count_operations(setup, tmp_path, monkeypatch)
    names = set(faults.names)
    # staging (writers, fsync), the commit (rename), publishing (link + replace), pruning (unlink, rmdir)
    assert {"save_file", "torch.save", "write_text", "os.fsync", "os.rename", "os.link", "os.replace",
            "os.unlink", "os.rmdir", "os.mkdir"} <= names
    assert faults.count >= 30
    assert faults.names.count("os.rename") >= 2  # the commit, and moving the old checkpoint aside


@pytest.mark.parametrize("mode", ["kill", "error"])
def test_a_failure_at_any_operation_resumes_bit_exact(mode, setup, tmp_path, monkeypatch):
    n = count_operations(setup, tmp_path, monkeypatch).count
    outcomes = {}
    for k in range(1, n + 1):
        out = tmp_path / f"{mode}-{k}"
        shutil.copytree(setup["base"], out)
        with monkeypatch.context() as m:
            faults = Faults(m, fail_at=k, mode=mode)
            try:
                resume(setup, out)
                failed = False
            except (Killed, OSError, ValueError):  # ValueError: ensure_writable's OutputPathError
                failed = True
        assert faults.count >= k
        if mode == "error":
            # the process lived on: its own clean-up removed every temporary of a write. What it could not
            # delete (an old checkpoint set aside, the probe file of ensure_writable) goes at the next start.
            left = [t for t in temporaries(out) if not any(s in t for s in (".write-test-", ".old-step-"))]
            assert left == [], (k, faults.names[k - 1])
        newest = T.latest_checkpoint(out)
        assert newest is not None, f"operation {k} ({faults.names[k - 1]}) lost every checkpoint"
        outcomes[k] = (faults.names[k - 1], T.checkpoint_dirs(out)[-1][0], failed)
        model, history = resume(setup, out)  # a fresh start: cleans stale temporaries, continues
        assert_same_run(setup, model, history, out)
    # both sides of the commit were hit: some failures left step 2 the newest, others step 4
    assert {step for _, step, _ in outcomes.values()} == {2, 4}
    if mode == "kill":
        assert all(failed for _, _, failed in outcomes.values())
