"""Held-out evaluation: each evaluator against the model's own losses or a direct computation, eval_mode."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dsv3_edu import DeepSeekV3, ModelConfig, eval_mode, generate, load_pretrained
from dsv3_edu.data import BlockDataset, ByteTokenizer, documents, load_corpus
from dsv3_edu.evaluation import ANSWER_PATTERNS, evaluate, evaluate_mtp, greedy_answers_right, teacher_forced_agreement

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "tiny-dsv3"


def test_eval_mode_restores_the_mode_even_after_an_error():
    model = torch.nn.Linear(2, 2)
    with eval_mode(model) as m:
        assert m is model and not model.training
    assert model.training
    model.eval()
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("inside")
    assert not model.training
    model.train()
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("inside")
    assert model.training


def test_evaluate_matches_the_model_losses():
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.tiny(num_nextn_predict_layers=1))
    data = BlockDataset("validation", block_size=32)
    report = evaluate(model, data, batch_size=4, blocks_per_domain=1, mtp_lambda=0.5)  # one block per domain
    assert model.training  # mode restored
    batch = next(iter(data.eval_batches(4, 1)))
    model.eval()
    with torch.no_grad():
        out = model(batch.input_ids, labels=batch.input_ids)
    # every block has the same length, so the mean of per-block means is the mean over all tokens
    assert report["val_main_loss"] == pytest.approx(float(out.main_loss), rel=1e-5)
    assert report["val_mtp_loss"] == pytest.approx(float(out.mtp_losses[0]), rel=1e-5)
    assert report["val_loss"] == pytest.approx(float(out.main_loss) + 0.5 * float(out.mtp_losses[0]), rel=1e-5)
    for row, domain in enumerate(batch.domains):
        acc = (out.logits[row, :-1].argmax(-1) == batch.input_ids[row, 1:]).float().mean()
        assert report["domains"][domain]["acc"] == pytest.approx(float(acc))
    assert 0 <= report["maxvio_global"] and len(report["maxvio_global_layers"]) == len(report["layer_names"])


def test_evaluate_mtp_matches_the_model_losses():
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.tiny(num_nextn_predict_layers=2))
    data = BlockDataset("validation", block_size=32)
    metrics = evaluate_mtp(model, data, batch_size=4, blocks_per_domain=1)  # one batch: one block per domain
    assert model.training  # mode restored
    batch = next(iter(data.eval_batches(4, 1))).input_ids
    model.eval()
    with torch.no_grad():
        out = model(batch, labels=batch)
    assert metrics["main_loss"] == pytest.approx(float(out.main_loss), rel=1e-5)
    for k in (1, 2):
        assert metrics["mtp_loss"][k - 1] == pytest.approx(float(out.mtp_losses[k - 1]), rel=1e-5)
        pred = out.mtp_logits[k - 1][:, :-1].argmax(-1)
        acc = (pred == batch[:, k + 1 :]).float().mean()
        agree = (pred == out.logits[:, k:-1].argmax(-1)).float().mean()
        assert metrics["mtp_acc"][k - 1] == pytest.approx(float(acc))
        assert metrics["agree"][k - 1] == pytest.approx(float(agree))


def test_teacher_forced_agreement_counts_matching_argmaxes():
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.tiny(num_nextn_predict_layers=1))
    agree = teacher_forced_agreement(model, blocks_per_domain=1, block_size=32)
    assert list(agree) == ["prose", "arithmetic", "code", "csv"] and model.training
    batch = next(iter(BlockDataset("validation", block_size=32).eval_batches(4, 1)))
    with torch.no_grad(), eval_mode(model):
        out = model(batch.input_ids)
    for row, domain in enumerate(batch.domains):
        main, draft = out.logits[row, 1:].argmax(-1), out.mtp_logits[0][row].argmax(-1)
        assert agree[domain] == float((main == draft).float().mean())


class NextTokenOracle(torch.nn.Module):
    """Predicts the true next token, except the digit "1" right after "=" (it says "2")."""

    def forward(self, ids, mtp=False):
        nxt = torch.roll(ids, -1, dims=1)
        wrong = (ids == ord("=")) & (nxt == ord("1"))
        nxt = torch.where(wrong, torch.full_like(nxt, ord("2")), nxt)
        return SimpleNamespace(logits=torch.nn.functional.one_hot(nxt, 260).float())


def test_greedy_answers_right_reads_teacher_forced_predictions():
    texts = ["sums:\n2+2=4\n7+8=15\n", "sums:\n1+1=2\n3+3=6", "99+1=100\n"]
    pattern = ANSWER_PATTERNS["sums a+b"]
    oracle = NextTokenOracle()
    # 2+2=4 right; 7+8=15 wrong (the "1"); 1+1=2 right; 3+3=6 has no newline: not asked; 99+1=100 wrong
    assert greedy_answers_right(oracle, texts, pattern) == [True, False, True, False]
    assert greedy_answers_right(oracle, texts, pattern, batch_size=1) == [True, False, True, False]
    with pytest.raises(ValueError, match="named group"):
        greedy_answers_right(oracle, texts, re.compile(r"\d+"))


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").exists(), reason="the shipped model is not there yet")
def test_greedy_answers_right_equals_generation_on_the_shipped_model():
    model = load_pretrained(SHIPPED)
    tok = ByteTokenizer()
    docs = [d for d in documents(load_corpus("validation")["csv"]) if d.startswith("item,")][:2]
    pattern = ANSWER_PATTERNS["csv total = price x qty"]
    by_generation = []
    for doc in docs:
        for m in pattern.finditer(doc):
            ids = torch.tensor([tok.encode(doc[: m.start("ans")])])
            said = tok.decode(generate(model, ids, 5, eos_token_id=ord("\n"))[0, ids.shape[1]:]).rstrip("\n")
            by_generation.append(said == m.group("ans"))
    assert greedy_answers_right(model, docs, pattern) == by_generation
    assert len(by_generation) > 5 and any(by_generation)
