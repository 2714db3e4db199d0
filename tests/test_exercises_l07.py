"""Lesson 07 checkers: accept the solutions, explain the typical mistakes, never crash on a stub."""

import torch
import torch.nn.functional as F
from exercise_helpers import run

from dsv3_edu import DeepSeekV3, ModelConfig
from dsv3_edu.exercises import l07_mtp as ex


def test_mtp_indices(capsys):
    ok, out = run(capsys, ex.check_mtp_indices, ex.solution_mtp_indices)
    assert ok and "t_(i+k+1)" in out
    # tensors are accepted too
    ok, out = run(capsys, ex.check_mtp_indices,
                  lambda T, k: tuple(torch.tensor(x, dtype=torch.long) for x in ex.solution_mtp_indices(T, k)))
    assert ok
    leak = lambda T, k: (list(range(T - k - 1)), [i + k + 1 for i in range(T - k - 1)],
                         [i + k + 1 for i in range(T - k - 1)])
    ok, out = run(capsys, ex.check_mtp_indices, leak)
    assert not ok and "label leak" in out
    own_input = lambda T, k: (list(range(T - k - 1)), [i + k for i in range(T - k - 1)],
                              [i + k for i in range(T - k - 1)])
    ok, out = run(capsys, ex.check_mtp_indices, own_input)
    assert not ok and "label leak" in out  # fed == targets as well
    predict_fed = lambda T, k: (list(range(T - k)), [i + k - 1 for i in range(T - k)], [i + k for i in range(T - k)])
    ok, out = run(capsys, ex.check_mtp_indices, predict_fed)
    assert not ok and "the token depth k is fed" in out
    too_long = lambda T, k: (list(range(T - k)), [i + k for i in range(T - k)], [i + k + 1 for i in range(T - k)])
    ok, out = run(capsys, ex.check_mtp_indices, too_long)
    assert not ok and "target index 8 does not exist" in out and "T-k-2 = 5" in out
    no_k = lambda T, k: (list(range(T - k - 1)), [i + 1 for i in range(T - k - 1)],
                         [i + k + 1 for i in range(T - k - 1)])
    ok, out = run(capsys, ex.check_mtp_indices, no_k)
    assert not ok and "forget k" in out
    ok, out = run(capsys, ex.check_mtp_indices, lambda T, k: None)
    assert not ok and "forget `return`" in out
    ok, out = run(capsys, ex.check_mtp_indices, lambda T, k: [1, 2])
    assert not ok and "three sequences" in out


def test_depth_loss(capsys):
    ok, out = run(capsys, ex.check_depth_loss, ex.solution_depth_loss)
    assert ok and "labels[:, k+1:]" in out
    leak = lambda lg, lab, k: F.cross_entropy(lg[:, :-1].flatten(0, 1), lab[:, k:-1].flatten())
    ok, out = run(capsys, ex.check_depth_loss, leak)
    assert not ok and "label leak" in out and "k=1" in out
    main_shift = lambda lg, lab, k: F.cross_entropy(lg[:, :-1].flatten(0, 1), lab[:, 1 : lab.shape[1] - k].flatten())
    ok, out = run(capsys, ex.check_depth_loss, main_shift)
    assert not ok and "label leak" in out and "k=1" in out  # for k=1, labels[:, 1:] is the token depth 1 is fed
    ok, out = run(capsys, ex.check_depth_loss, lambda lg, lab, k: (ex.solution_depth_loss if k == 1 else main_shift)(
        lg, lab, k))
    assert not ok and "main model's shift" in out and "k=2" in out
    front = lambda lg, lab, k: F.cross_entropy(lg[:, 1:].flatten(0, 1), lab[:, k + 1 :].flatten())
    ok, out = run(capsys, ex.check_depth_loss, front)
    assert not ok and "first position instead of the last" in out
    total = lambda lg, lab, k: F.cross_entropy(lg[:, :-1].flatten(0, 1), lab[:, k + 1 :].flatten(), reduction="sum")
    ok, out = run(capsys, ex.check_depth_loss, total)
    assert not ok and "sum over positions" in out
    no_slice = lambda lg, lab, k: F.cross_entropy(lg.flatten(0, 1), lab[:, k + 1 :].flatten())
    ok, out = run(capsys, ex.check_depth_loss, no_slice)
    assert not ok and "raised ValueError" in out and "(B, T-k, V)" in out
    ok, out = run(capsys, ex.check_depth_loss, lambda lg, lab, k: torch.zeros(3))
    assert not ok and "one number" in out


def test_depth_loss_solution_matches_the_model():
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.tiny(num_nextn_predict_layers=2)).eval()
    ids = torch.randint(256, (2, 12))
    out = model(ids, labels=ids)
    for k in (1, 2):
        torch.testing.assert_close(ex.solution_depth_loss(out.mtp_logits[k - 1], ids, k), out.mtp_losses[k - 1])
    total = ex.solution_total_loss(out.main_loss, out.mtp_losses, 0.3)
    torch.testing.assert_close(total, out.loss)


def test_total_loss(capsys):
    ok, out = run(capsys, ex.check_total_loss, ex.solution_total_loss)
    assert ok and "2.4000" in out
    convex = lambda m, mtp, lam: (1 - lam) * m + lam * sum(mtp) / len(mtp) if mtp else m
    ok, out = run(capsys, ex.check_total_loss, convex)
    assert not ok and "(1-lambda) L_main" in out and "weight 1" in out
    no_d = lambda m, mtp, lam: m + lam * sum(mtp)
    ok, out = run(capsys, ex.check_total_loss, no_d)
    assert not ok and "divide by D=2" in out
    mtp_only = lambda m, mtp, lam: lam * sum(mtp) / len(mtp)
    ok, out = run(capsys, ex.check_total_loss, mtp_only)
    assert not ok and "add L_main" in out
    no_lambda = lambda m, mtp, lam: m + sum(mtp) / len(mtp)
    ok, out = run(capsys, ex.check_total_loss, no_lambda)
    assert not ok and "forgot lambda" in out
    crashes_without_mtp = lambda m, mtp, lam: m + lam / len(mtp) * sum(mtp)
    ok, out = run(capsys, ex.check_total_loss, crashes_without_mtp)
    assert not ok and "ZeroDivisionError" in out and "empty list" in out
    ok, out = run(capsys, ex.check_total_loss, lambda *a: "2.4")
    assert not ok and "one number" in out
