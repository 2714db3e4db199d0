"""evaluate_same_targets (main model vs MTP depth k on the same tokens) and the per-domain
specialization measures of lesson 06, each against a loop written out here."""

import math

import pytest
import torch

from dsv3_edu.balance import domain_specialization, relative_domain_loads
from dsv3_edu.config import ModelConfig
from dsv3_edu.data import BlockDataset
from dsv3_edu.evaluation import evaluate_same_targets
from dsv3_edu.model import DeepSeekV3

torch.set_num_threads(1)


def test_same_targets_equal_a_token_by_token_loop():
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.tiny(num_nextn_predict_layers=2)).eval()
    data = BlockDataset("validation", block_size=12)
    got = evaluate_same_targets(model, data, batch_size=3, blocks_per_domain=1)
    assert [r["k"] for r in got] == [1, 2]
    for k in (1, 2):
        n = main_nll = mtp_nll = main_right = mtp_right = 0.0
        n_all = nll_all = 0.0
        for batch in data.eval_batches(3, 1):
            with torch.no_grad():
                out = model(batch.input_ids)
            for b, ids in enumerate(batch.input_ids.tolist()):
                T = len(ids)
                for j in range(1, T):  # every target of the main model
                    p = out.logits[b, j - 1].log_softmax(-1)
                    n_all += 1
                    nll_all -= p[ids[j]].item()
                for j in range(k + 1, T):  # target t_j: main at j-1, depth k at j-k-1
                    p_main = out.logits[b, j - 1].log_softmax(-1)
                    p_mtp = out.mtp_logits[k - 1][b, j - k - 1].log_softmax(-1)
                    n += 1
                    main_nll -= p_main[ids[j]].item()
                    mtp_nll -= p_mtp[ids[j]].item()
                    main_right += int(p_main.argmax()) == ids[j]
                    mtp_right += int(p_mtp.argmax()) == ids[j]
        r = got[k - 1]
        assert r["targets"] == n
        assert r["main_loss"] == pytest.approx(main_nll / n, rel=1e-5)
        assert r["mtp_loss"] == pytest.approx(mtp_nll / n, rel=1e-5)
        assert r["main_acc"] == pytest.approx(main_right / n)
        assert r["mtp_acc"] == pytest.approx(mtp_right / n)
        assert r["main_loss_all"] == pytest.approx(nll_all / n_all, rel=1e-5)
    assert got[1]["targets"] < got[0]["targets"]  # depth 2 skips one more early target per block


def test_same_targets_needs_mtp():
    model = DeepSeekV3(ModelConfig.tiny(num_nextn_predict_layers=0))
    with pytest.raises(ValueError, match="needs a model with MTP modules"):
        evaluate_same_targets(model, BlockDataset("validation", block_size=12), blocks_per_domain=1)


RUN = {"domain_loads": {
    # 3 experts, one layer. Expert 0 is busy on all text alike; expert 2 specializes in "code".
    "prose": [[60, 30, 10]],
    "code": [[60, 10, 30]],
}}


def test_relative_loads_by_global_share_divide_out_global_imbalance():
    fair, domains = relative_domain_loads(RUN, 0)
    assert domains == ["prose", "code"]
    torch.testing.assert_close(fair[:, 0], torch.tensor([1.8, 0.9, 0.3], dtype=torch.float64))
    spec, _ = relative_domain_loads(RUN, 0, by="global")
    # overall shares: 120/200, 40/200, 40/200; in prose: 60/100, 30/100, 10/100
    torch.testing.assert_close(spec[:, 0], torch.tensor([1.0, 1.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(spec[:, 1], torch.tensor([1.0, 0.5, 1.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="by must be"):
        relative_domain_loads(RUN, 0, by="mean")


def test_domain_specialization_is_half_the_l1_distance():
    tv, domains = domain_specialization(RUN, 0)
    # prose: |0.6-0.6| + |0.3-0.2| + |0.1-0.2| = 0.2, halved
    torch.testing.assert_close(tv, torch.tensor([0.1, 0.1], dtype=torch.float64))
    same = {"domain_loads": {"a": [[50, 30, 20]], "b": [[5, 3, 2]]}}
    assert math.isclose(float(domain_specialization(same, 0)[0].max()), 0.0, abs_tol=1e-12)
