"""The training loop: learning, balancing modes, the bias outside the optimizer, resume, atomic checkpoints."""

import json
import math

import pytest
import torch
from train_helpers import small_data

import dsv3_edu.checkpoint as C
import dsv3_edu.train as T
from dsv3_edu.balance import moe_layers
from dsv3_edu.train import (
    TrainConfig,
    batch_generator,
    has_checkpoint,
    load_checkpoint,
    lr_at,
    make_optimizer,
    preset,
    train,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    """Small train / validation sets (a few documents per domain) so every test takes a second."""
    return small_data(40, 10)


def smoke(**overrides):
    return preset("smoke", **{"eval_blocks_per_domain": 2, "device": "cpu", **overrides})


def test_loss_decreases(data):
    mc, tc = smoke(steps=40, lr=3e-3, warmup=5)
    _, history = train(mc, tc, progress=False, **data)
    losses = [r["main_loss"] for r in history]
    assert len(history) == 40 and [r["step"] for r in history] == list(range(1, 41))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert math.isfinite(history[-1]["val_loss"]) and "domains" in history[-1]
    assert history[-1]["val_mtp_loss"] is not None  # the smoke preset has MTP depth 1
    assert all(r["mtp_loss"] is not None for r in history)


def test_bias_is_never_an_optimizer_parameter():
    mc, tc = smoke()
    model = T.DeepSeekV3(mc)
    opt = make_optimizer(model, tc)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    for moe in moe_layers(model):
        assert id(moe.gate.e_score_correction_bias) not in in_opt
        assert id(moe.gate.weight) in in_opt
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    norms = [m.weight for m in model.modules() if type(m).__name__ == "RMSNorm"]
    assert norms and all(id(w) not in decayed for w in norms)  # no weight decay on norms
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert len(in_opt) == sum(1 for _ in model.parameters())


@pytest.mark.parametrize("mode", ["none", "aux_loss", "loss_free", "loss_free_seq"])
def test_bias_moves_only_in_loss_free_modes(mode, data):
    mc, tc = smoke(steps=6, balance=mode, weight_decay=0.5, gamma=1e-2, record_routing=True)
    model, history = train(mc, tc, progress=False, **data)
    biases = [m.gate.e_score_correction_bias for m in moe_layers(model)]
    if mode in ("none", "aux_loss"):
        assert all(torch.equal(b, torch.zeros_like(b)) for b in biases)  # weight decay never reached it
    else:
        assert any(b.abs().sum() > 0 for b in biases)
    has_loss = mode in ("aux_loss", "loss_free_seq")
    assert all((r["balance_loss"] > 0) == has_loss for r in history)


def test_bias_steps_are_exactly_gamma_against_the_load(data):
    gamma = 1e-2
    mc, tc = smoke(steps=8, balance="loss_free", gamma=gamma, record_routing=True)
    _, history = train(mc, tc, progress=False, **data)
    previous = torch.zeros_like(torch.tensor(history[0]["bias"]))
    for record in history:
        bias = torch.tensor(record["bias"])  # (L, E) after this step's update
        loads = torch.tensor(record["loads"], dtype=torch.float64)  # (L, E) this step's counts
        expected_sign = torch.sign(loads.mean(-1, keepdim=True) - loads)
        torch.testing.assert_close((bias - previous).double() / gamma, expected_sign, atol=1e-4, rtol=0)
        previous = bias


def test_no_bias_update_during_evaluation(data):
    mc, tc = smoke(steps=3, balance="loss_free", eval_every=1)
    model, history = train(mc, tc, progress=False, **data)
    before = [m.gate.e_score_correction_bias.clone() for m in moe_layers(model)]
    T.evaluate(model, data["val_data"], 4, 2)
    assert all(torch.equal(b, m.gate.e_score_correction_bias) for b, m in zip(before, moe_layers(model)))
    assert all(m.tokens_per_expert.sum() == 0 for m in moe_layers(model))  # eval forwards are not counted
    assert all("maxvio_global" in r for r in history)


def test_lr_schedule():
    tc = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, tc) == pytest.approx(1e-4)
    assert lr_at(9, tc) == pytest.approx(1e-3)
    assert lr_at(99, tc) == pytest.approx(1e-4)
    lrs = [lr_at(s, tc) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # cosine decays monotonically


def test_data_order_depends_on_seed_and_step_only(data):
    ds = data["train_data"]
    a = ds.sample(4, batch_generator(0, 7)).input_ids
    assert torch.equal(a, ds.sample(4, batch_generator(0, 7)).input_ids)
    assert not torch.equal(a, ds.sample(4, batch_generator(0, 8)).input_ids)
    assert not torch.equal(a, ds.sample(4, batch_generator(1, 7)).input_ids)


@pytest.mark.parametrize("mode", ["loss_free_seq", "aux_loss"])
def test_resume_gives_the_same_run(mode, data, tmp_path):
    mc, tc = smoke(steps=10, balance=mode, eval_every=4)
    full_model, full = train(mc, tc, progress=False, **data)
    train(mc, tc, out_dir=tmp_path, progress=False, stop_at=4, **data)  # "interrupted" after step 4
    assert has_checkpoint(tmp_path) and json.loads((tmp_path / "history.json").read_text())[-1]["step"] == 4
    resumed_model, resumed = train(mc, tc, out_dir=tmp_path, progress=False, resume=True, **data)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    assert [r.get("val_loss") for r in resumed] == [r.get("val_loss") for r in full]
    a, b = full_model.state_dict(), resumed_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bias buffers included


def test_checkpoint_files(data, tmp_path):
    mc, tc = smoke(steps=2)
    trained, _ = train(mc, tc, out_dir=tmp_path, progress=False, **data)
    folder = tmp_path / "checkpoints" / "step-000002"
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "history.json", "model.safetensors", "train_config.json", "trainer_state.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoints", "config.json", "history.json", "model.safetensors", "train_config.json"]
    for name in ("config.json", "model.safetensors", "history.json"):  # the top shows the newest checkpoint
        assert (tmp_path / name).read_bytes() == (folder / name).read_bytes()
    state = torch.load(folder / "trainer_state.pt", weights_only=True)  # plain tensors and dicts only
    assert state["step"] == 2 and len(state["history"]) == 2 and "optimizer" in state
    model = T.DeepSeekV3(mc)
    step, history = load_checkpoint(tmp_path, model)
    assert step == 2 and history[-1]["step"] == 2
    # the weights are in the released layout: load_pretrained reads them, MTP at model.layers.{L}
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert f"model.layers.{mc.num_hidden_layers}.eh_proj.weight" in names
    assert not any(n.startswith("mtp.") for n in names)
    loaded = C.load_pretrained(tmp_path)
    a, b = trained.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # balancing biases included


def tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("target", ["weights", "state"])
def test_crash_during_save_keeps_the_previous_checkpoint(target, data, tmp_path, monkeypatch):
    mc, tc = smoke(steps=6, save_every=3)
    train(mc, tc, out_dir=tmp_path, progress=False, stop_at=3, **data)
    files_before = tree(tmp_path)

    def crash(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(C, "save_file", crash) if target == "weights" else monkeypatch.setattr(T.torch, "save", crash)
    with pytest.raises(OSError, match="simulated"):
        train(mc, tc, out_dir=tmp_path, progress=False, resume=True, **data)
    monkeypatch.undo()
    assert tree(tmp_path) == files_before  # no temporary file or folder left behind
    step, history = load_checkpoint(tmp_path, T.DeepSeekV3(mc))
    assert step == 3 and len(history) == 3
    # and the run still resumes from there to the end
    _, resumed = train(mc, tc, out_dir=tmp_path, progress=False, resume=True, **data)
    assert resumed[-1]["step"] == 6


def test_mismatched_checkpoint_pair_is_detected(data, tmp_path):
    mc, tc = smoke(steps=4)
    train(mc, tc, out_dir=tmp_path / "a", progress=False, stop_at=2, **data)
    train(mc, tc, out_dir=tmp_path / "b", progress=False, stop_at=3, **data)
    state_b = tmp_path / "b/checkpoints/step-000003/trainer_state.pt"
    state_b.replace(tmp_path / "a/checkpoints/step-000002/trainer_state.pt")
    with pytest.raises(RuntimeError, match=r"not the one trainer_state.pt \(step 3\) was saved with"):
        load_checkpoint(tmp_path / "a", T.DeepSeekV3(mc))


def test_resume_refuses_another_model_config(data, tmp_path):
    mc, tc = smoke(steps=2)
    train(mc, tc, out_dir=tmp_path, progress=False, **data)
    with pytest.raises(ValueError, match="changed config: hidden_size 32 -> 48"):
        train(mc.replace(hidden_size=48), tc, out_dir=tmp_path, progress=False, resume=True, **data)


@pytest.mark.parametrize("field,value,match", [
    ("balance", "switch", "use one of"), ("steps", 0, "positive integer"), ("gamma", 0.0, "must be positive"),
    ("min_lr_ratio", 2.0, r"\[0, 1\]"), ("block_size", 2, "at least 3"), ("seed", -1, "2\\*\\*31"),
])
def test_train_config_validation(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value})


def test_presets():
    mc, tc = preset("tiny-dsv3")
    n = sum(p.numel() for p in T.DeepSeekV3(mc).parameters())
    assert 1.1e6 < n < 1.5e6 and mc.hidden_size == 128 and mc.num_hidden_layers == 4 and mc.n_routed_experts == 8
    assert tc.balance == "loss_free_seq" and tc.gamma == 1e-3 and tc.seq_alpha == 1e-4 and tc.mtp_lambda == 0.3
    mc, tc = preset("balance")
    assert mc.num_nextn_predict_layers == 0 and mc.first_k_dense_replace == 0
    with pytest.raises(ValueError, match="choose one of"):
        preset("huge")


def test_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert T.main(["--preset", "smoke", "--steps", "3", "--out", str(out), "--no-progress"]) == 0
    assert "val loss" in capsys.readouterr().out and has_checkpoint(out)
    with pytest.raises(SystemExit):  # 5 steps instead of 3 changes the schedule: refused unless allowed
        T.main(["--preset", "smoke", "--steps", "5", "--out", str(out), "--resume", "--no-progress"])
    assert "changed config: steps 3 -> 5" in capsys.readouterr().err
    assert T.main(["--preset", "smoke", "--steps", "5", "--out", str(out), "--resume", "--allow-change", "steps",
                   "--no-progress"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [r["step"] for r in history] == [1, 2, 3, 4, 5]


def test_balance_benchmark_pieces():
    from dsv3_edu.bench import balance as B

    run = B.run_balance("loss_free", steps=3, eval_blocks_per_domain=1)
    json.dumps(run)  # JSON-ready
    assert len(run["maxvio_batch"]) == 3 and len(run["loss"]) == 3 and run["maxvio_global"] >= 0
    assert set(run["domain_loads"]) == {"prose", "arithmetic", "code", "csv"}
    dispatch = B.time_dispatch(tokens=64, loop_tokens=16, repeats=1)
    assert dispatch["speedup_vs_loop"] > 1 and dispatch["time_vs_dense"] > 0
    fake = {"runs": {m: run for m in B.MODES}, "gamma_sweep": {"0.001": run}, "dispatch": dispatch,
            "checks": {"x": True}}
    assert "loss_free_seq" in B.table(fake) and "[ok] x" in B.table(fake)
