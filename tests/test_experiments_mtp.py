"""The MTP experiments: mtp_lambda (lesson 07 reads data/mtp_lambda/ until it moves) and mtp (the runner's)."""

import json

import pytest
import torch

from dsv3_edu import DeepSeekV3, ModelConfig, load_pretrained
from dsv3_edu.data import BlockDataset
from dsv3_edu.experiments import mtp
from dsv3_edu.experiments import mtp_lambda as exp
from dsv3_edu.train import TrainConfig, train


def test_quick_run_writes_results_and_the_depth2_model(tmp_path, capsys):
    assert exp.main(["--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "3 runs in" in printed and "D=2 lambda=0.3" in printed
    results = json.loads((tmp_path / exp.RESULTS_FILE).read_text())
    assert results["quick"] is True and results["train_config"]["steps"] == exp.QUICK["steps"]
    assert [r["name"] for r in results["runs"]] == ["D1_lambda0_seed0", "D1_lambda0.3_seed0", "D2_lambda0.3_seed0"]
    for run in results["runs"]:
        final = run["final"]
        assert len(final["mtp_loss"]) == len(final["mtp_acc"]) == len(final["agree"]) == run["depth"]
        assert set(final["domains"]) == {"prose", "arithmetic", "code", "csv"}
        assert len(run["curve"]["main_loss"]) == exp.QUICK["steps"]
        assert run["val_curve"]["step"] == [3, 6]
        assert 0 < final["main_loss"] < 10 and 0 <= final["mtp_acc"][0] <= 1
    assert [(row["depth"], row["mtp_lambda"]) for row in results["summary"]] == [(1, 0.0), (1, 0.3), (2, 0.3)]
    model = load_pretrained(tmp_path / exp.model_dir_name(2, 0.3))
    assert len(model.mtp) == 2 and model.config.hidden_size == exp.MODEL["hidden_size"]


def test_shipped_results_support_the_lesson():
    results = exp.load_results()
    assert results["quick"] is False and results["lambdas"] == [0.0, 0.1, 0.3, 1.0]
    assert len(results["runs"]) == 2 * 4 + 1
    by = {(r["depth"], r["mtp_lambda"], r["seed"]): r["final"] for r in results["runs"]}
    for seed in results["seeds"]:
        assert by[(1, 0.0, seed)]["mtp_acc"][0] < 0.05  # an untrained MTP module drafts noise
        assert all(by[(1, lam, seed)]["mtp_acc"][0] > 0.5 for lam in (0.1, 0.3, 1.0))
        assert by[(1, 1.0, seed)]["main_loss"] > by[(1, 0.0, seed)]["main_loss"] + 0.05  # lambda=1 costs
    assert (exp.OUT_DIR / exp.model_dir_name(2, 0.3) / "config.json").exists()


# ----------------------------------------------------- dsv3_edu.experiments.mtp (the runner's experiment)
# (mtp_lambda above stays until lesson 07 reads data/experiments/mtp.json instead of data/mtp_lambda/.)

MTP_QUICK = mtp.settings(quick=True)


def test_mtp_arms_share_the_main_weights_of_the_model_without_mtp():
    main = mtp.build_model(0, mtp.MODEL, seed=3).state_dict()
    for depth in (1, 2):
        net = mtp.build_model(depth, mtp.MODEL, seed=3)
        assert len(net.mtp) == depth
        for name, tensor in net.state_dict().items():
            if not name.startswith("mtp."):
                assert torch.equal(tensor, main[name]), name


def test_lambda0_trains_exactly_the_model_without_mtp():
    value, extra = mtp.run("lambda0", 0, MTP_QUICK, None)
    cfg = TrainConfig(**{**MTP_QUICK["train"], "mtp_lambda": 0.0, "seed": 0, "device": "cpu"})
    _, history = train(ModelConfig.tiny(**{**MTP_QUICK["model"], "num_nextn_predict_layers": 0}), cfg,
                       progress=False)
    assert value == history[-1]["val_main_loss"]
    assert extra["mtp_acc"][0] < 0.05  # the untrained module drafts noise


def test_same_target_metrics_agree_with_evaluate_mtp_and_a_direct_computation():  # through the experiment
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.tiny(num_nextn_predict_layers=2))
    data = BlockDataset("validation", block_size=32)
    same = mtp.same_targets(model, data, batch_size=4, blocks_per_domain=1)
    old = exp.evaluate_mtp(model, data, batch_size=4, blocks_per_domain=1)
    assert model.training
    for key in ("mtp_loss", "mtp_acc", "agree"):  # the same draft, target and main-model positions
        assert same[key] == pytest.approx(old[key], rel=1e-5)
    batch = next(iter(data.eval_batches(4, 1))).input_ids
    model.eval()
    with torch.no_grad():
        logits = model(batch).logits
    for k in (1, 2):  # the main model scored on targets t_{k+1} .. t_{T-1} only
        main = logits[:, k:-1]
        loss = torch.nn.functional.cross_entropy(main.reshape(-1, main.shape[-1]), batch[:, k + 1 :].reshape(-1))
        assert same["main_loss_same"][k - 1] == pytest.approx(float(loss), rel=1e-5)
        acc = (main.argmax(-1) == batch[:, k + 1 :]).float().mean()
        assert same["main_acc_same"][k - 1] == pytest.approx(float(acc))
        assert same["n_targets"][k - 1] == 4 * (32 - k - 1)


def test_mtp_quick_run_every_arm_and_determinism():
    results = {arm: mtp.run(arm, 0, MTP_QUICK, None) for arm in mtp.ARMS}
    for arm, (value, extra) in results.items():
        depth = mtp.ARMS[arm]["depth"]
        assert 0 < value < 10
        assert len(extra["mtp_loss"]) == len(extra["main_loss_same"]) == len(extra["agree"]) == depth
    assert mtp.run("lambda0.3", 0, MTP_QUICK, None) == results["lambda0.3"]
