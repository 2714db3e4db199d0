"""Held-out evaluation: loss, next-token and per-depth MTP accuracy, teacher-forced draft agreement.

One loop (:func:`per_domain_sums`) runs the model over validation batches in eval mode and adds up
per-sequence numbers by domain; each evaluator says what to add up:

- :func:`evaluate`: the training objective on held-out text, accuracy and expert loads (the trainer's
  validation; ``dsv3_edu.train.evaluate`` is this function);
- :func:`evaluate_mtp`: the main model and every MTP depth, token-weighted (lesson 07's experiment);
- :func:`teacher_forced_agreement`: how often depth 1's draft equals the main model's next prediction
  (lesson 08: the acceptance rate drafts would have on this text);
- :func:`acceptance_runs` and :func:`pool`: speculative decoding from held-out prompts, its acceptance rate
  and tokens per forward (lesson 08);
- :func:`score_sums`: the sums ``a+b=c`` of a generated text, checked (lesson 09);
- :func:`greedy_answers_right`: would greedy decoding write each answer in a text (lesson 09), from one
  teacher-forced forward per text (``ANSWER_PATTERNS``: the held-out questions with one right answer);
- :func:`evaluate_same_targets`: each MTP depth against the main model on the same target tokens (lessons
  07 and 09).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F

from .balance import LoadTracker, moe_layers
from .data import DOMAINS, BlockDataset, ByteTokenizer, documents, load_corpus
from .generate import generate, speculative_generate
from .layers import eval_mode
from .model import DeepSeekV3

SUM_PATTERN = re.compile(r"(?m)^(\d+)\+(\d+)=(\d+)$")  # a whole line "a+b=c"
PerSequence = Callable[[Any, torch.Tensor], dict[str, Any]]


@torch.no_grad()
def per_domain_sums(model: DeepSeekV3, batches: Iterable, per_sequence: PerSequence,
                    tracker: LoadTracker | None = None) -> dict[str, dict[str, float]]:
    """domain -> {key: sum over that domain's sequences of ``per_sequence(out, ids)[key][b]``}.

    ``batches`` yields :class:`dsv3_edu.data.Batch` (``input_ids``, ``domains``); the model runs in eval
    mode (restored after) on its own device; ``tracker`` (a LoadTracker) counts expert loads by domain.
    Domains appear in the order the batches first show them.
    """
    device = next(model.parameters()).device
    sums: dict[str, dict[str, float]] = {}
    with eval_mode(model):
        for batch in batches:
            ids = batch.input_ids.to(device)  # (B, T)
            out = model(ids)
            if tracker is not None:
                tracker.update(batch.domains)
            per_seq = per_sequence(out, ids)
            for b, domain in enumerate(batch.domains):
                s = sums.setdefault(domain, {})
                for key, values in per_seq.items():
                    s[key] = s.get(key, 0.0) + float(values[b])
    return sums


@torch.no_grad()
def evaluate(
    model: DeepSeekV3, dataset: BlockDataset, batch_size: int = 16, blocks_per_domain: int | None = 16,
    mtp_lambda: float = 0.3,
) -> dict[str, Any]:
    """Validation loss, next-token and MTP-draft accuracy per domain, and global expert loads (eval mode).

    Returns ``val_loss`` (the training objective without balancing terms), ``val_main_loss``,
    ``maxvio_global`` (mean over MoE layers of [LF] eq 4 on the loads of the whole set),
    ``maxvio_global_layers``, ``domain_loads`` {domain: (L, E) lists} and ``domains`` {domain: {loss, acc,
    mtp_loss, mtp_acc}}: per-sequence means, averaged over sequences. The model's train/eval mode is restored.
    """
    tracker = LoadTracker(model) if moe_layers(model) else None

    def per_sequence(out, ids: torch.Tensor) -> dict[str, Any]:
        B = ids.shape[0]
        main = F.cross_entropy(out.logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none").mean(1)
        correct = (out.logits[:, :-1].argmax(-1) == ids[:, 1:]).float().mean(1)  # (B,)
        mtp = [F.cross_entropy(lg[:, :-1].float().transpose(1, 2), ids[:, k + 1:], reduction="none").mean(1)
               for k, lg in enumerate(out.mtp_logits, 1)]
        mtp_correct = ((out.mtp_logits[0][:, :-1].argmax(-1) == ids[:, 2:]).float().mean(1)
                       if out.mtp_logits else None)
        return {
            "n": [1] * B, "loss": main, "acc": correct,
            "mtp_loss": [sum(float(m[i]) for m in mtp) / len(mtp) for i in range(B)] if mtp else [0.0] * B,
            "mtp_acc": mtp_correct if mtp else [0.0] * B,
        }

    sums = per_domain_sums(model, dataset.eval_batches(batch_size, blocks_per_domain), per_sequence, tracker)
    n = sum(s["n"] for s in sums.values())
    domains = {d: {k: s[k] / s["n"] for k in ("loss", "acc", "mtp_loss", "mtp_acc")} for d, s in sums.items()}
    main_loss = sum(s["loss"] for s in sums.values()) / n
    mtp_loss = sum(s["mtp_loss"] for s in sums.values()) / n
    D = len(model.mtp)
    result: dict[str, Any] = {
        "val_loss": main_loss + (mtp_lambda * mtp_loss if D else 0.0),
        "val_main_loss": main_loss,
        "val_mtp_loss": mtp_loss if D else None,
        "domains": domains,
    }
    if tracker is not None:
        per_layer = tracker.max_violation()
        result["maxvio_global"] = float(per_layer.mean())
        result["maxvio_global_layers"] = [float(v) for v in per_layer]
        result["domain_loads"] = {d: tracker.domain_loads[d].tolist() for d in DOMAINS if d in tracker.domain_loads}
        result["layer_names"] = tracker.names
    return result


@torch.no_grad()
def evaluate_mtp(
    model: DeepSeekV3, dataset: BlockDataset, batch_size: int = 16, blocks_per_domain: int | None = 16,
) -> dict[str, Any]:
    """Validation metrics of the main model and of every MTP depth, pooled over tokens and per domain.

    Depth k at position i predicts t_{i+k+1} (``mtp_logits[k-1][:, i]``). Per depth: ``mtp_loss``
    (cross-entropy), ``mtp_acc`` (its argmax is t_{i+k+1}: the draft is right) and ``agree`` (its argmax
    equals the main model's argmax at position i+k, which predicts the same token from the same tokens
    t_0..t_{i+k}: with greedy decoding, the rate at which the main model would accept the draft).
    Returns ``main_loss``, ``main_acc``, lists ``mtp_loss``, ``mtp_acc``, ``agree`` (index k-1) and
    ``domains`` {domain: the same keys}. The model's train/eval mode is restored.
    """
    D = len(model.mtp)

    def per_sequence(out, ids: torch.Tensor) -> dict[str, Any]:
        main_logits = out.logits[:, :-1].float()  # (B, T-1, V): position i predicts ids[i+1]
        main_pred = main_logits.argmax(-1)  # (B, T-1)
        per_seq = {
            "main_loss": F.cross_entropy(main_logits.transpose(1, 2), ids[:, 1:], reduction="none").sum(1),
            "main_acc": (main_pred == ids[:, 1:]).float().sum(1),
            "main_n": torch.full((ids.shape[0],), float(ids.shape[1] - 1)),
        }
        for k, logits in enumerate(out.mtp_logits, 1):
            logits = logits[:, :-1].float()  # (B, T-k-1, V): position i predicts ids[i+k+1]
            target = ids[:, k + 1 :]
            pred = logits.argmax(-1)
            per_seq[f"mtp_loss{k}"] = F.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(1)
            per_seq[f"mtp_acc{k}"] = (pred == target).float().sum(1)
            per_seq[f"agree{k}"] = (pred == main_pred[:, k:]).float().sum(1)  # main at i+k
            per_seq[f"mtp_n{k}"] = torch.full((ids.shape[0],), float(target.shape[1]))
        return per_seq

    sums = per_domain_sums(model, dataset.eval_batches(batch_size, blocks_per_domain), per_sequence)

    def metrics(s: dict[str, float]) -> dict[str, Any]:
        return {
            "main_loss": s["main_loss"] / s["main_n"],
            "main_acc": s["main_acc"] / s["main_n"],
            "mtp_loss": [s[f"mtp_loss{k}"] / s[f"mtp_n{k}"] for k in range(1, D + 1)],
            "mtp_acc": [s[f"mtp_acc{k}"] / s[f"mtp_n{k}"] for k in range(1, D + 1)],
            "agree": [s[f"agree{k}"] / s[f"mtp_n{k}"] for k in range(1, D + 1)],
        }

    total: dict[str, float] = {}
    for s in sums.values():
        for key, value in s.items():
            total[key] = total.get(key, 0.0) + value
    result = metrics(total)
    result["domains"] = {d: metrics(sums[d]) for d in DOMAINS if d in sums}
    return result


@torch.no_grad()
def evaluate_same_targets(
    model: DeepSeekV3, dataset: BlockDataset, batch_size: int = 16, blocks_per_domain: int | None = 16,
) -> list[dict[str, Any]]:
    """Each MTP depth against the main model on the same target tokens (eval mode, pooled over tokens).

    In a block t_0..t_{T-1}, depth k at position i predicts t_{i+k+1} from t_0..t_{i+k}, the same tokens
    the main model has at position i+k when it predicts the same t_{i+k+1}. So for every target t_j,
    j = k+1..T-1, this compares depth k at position j-k-1 with the main model at position j-1. The
    per-depth averages of ``evaluate`` cover different targets: the main model's include t_1..t_k, the
    earliest and hardest (least context), which depth k never predicts.

    Returns one dict per depth k (in order): ``k``, ``targets`` (how many tokens were scored),
    ``main_loss``/``main_acc`` and ``mtp_loss``/``mtp_acc`` on those targets, ``agree`` (how often the
    depth-k draft equals the main model's argmax there: the acceptance rate teacher-forced), and
    ``main_loss_all``/``main_acc_all``, the main model on every target t_1..t_{T-1} of the same blocks.
    """
    if not model.mtp:
        raise ValueError("evaluate_same_targets needs a model with MTP modules (num_nextn_predict_layers >= 1)")
    device = next(model.parameters()).device
    D = len(model.mtp)
    keys = ("main_loss", "main_acc", "mtp_loss", "mtp_acc", "agree")
    sums = {key: torch.zeros(D, dtype=torch.float64) for key in ("n", *keys)}
    all_sums = torch.zeros(3, dtype=torch.float64)  # n, loss, correct of the main model on every target
    ce = F.cross_entropy
    with eval_mode(model):
        for batch in dataset.eval_batches(batch_size, blocks_per_domain):
            ids = batch.input_ids.to(device)  # (B, T)
            out = model(ids)
            main_logits = out.logits[:, :-1].float()  # (B, T-1, V): position j-1 predicts t_j
            main_nll = ce(main_logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
            main_choice = main_logits.argmax(-1)  # (B, T-1)
            main_right = (main_choice == ids[:, 1:]).double()  # (B, T-1)
            all_sums += torch.tensor([main_nll.numel(), main_nll.sum().item(), main_right.sum().item()],
                                     dtype=torch.float64)
            for k, logits in enumerate(out.mtp_logits, 1):
                logits = logits[:, :-1].float()  # (B, T-k-1, V): position j-k-1 predicts t_j, j = k+1..T-1
                target = ids[:, k + 1:]
                nll = ce(logits.transpose(1, 2), target, reduction="none")
                sums["n"][k - 1] += target.numel()
                sums["mtp_loss"][k - 1] += nll.sum().item()
                sums["mtp_acc"][k - 1] += (logits.argmax(-1) == target).sum().item()
                sums["agree"][k - 1] += (logits.argmax(-1) == main_choice[:, k:]).sum().item()
                sums["main_loss"][k - 1] += main_nll[:, k:].sum().item()  # main positions k..T-2: targets j >= k+1
                sums["main_acc"][k - 1] += main_right[:, k:].sum().item()
    n_all = float(all_sums[0])
    return [{"k": k, "targets": int(sums["n"][k - 1]),
             **{key: float(sums[key][k - 1] / sums["n"][k - 1]) for key in keys},
             "main_loss_all": float(all_sums[1]) / n_all, "main_acc_all": float(all_sums[2]) / n_all}
            for k in range(1, D + 1)]


@torch.no_grad()
def teacher_forced_agreement(model: DeepSeekV3, blocks_per_domain: int = 8, block_size: int = 128) -> dict[str, float]:
    """domain -> on held-out text, how often depth 1's argmax at position i (fed h^0_i and the TRUE t_{i+1})
    equals the main model's argmax at position i + 1. Both predict t_{i+2} from t_0..t_{i+1}: the acceptance
    rate drafts would have if the main model were decoding this very text. One forward per batch of blocks."""
    block_size = min(block_size, model.config.max_position_embeddings)
    data = BlockDataset("validation", block_size=block_size)

    def per_sequence(out, ids: torch.Tensor) -> dict[str, Any]:
        main = out.logits[:, 1:].argmax(-1)  # (B, T-1): position i+1 predicts t_{i+2}
        draft = out.mtp_logits[0].argmax(-1)  # (B, T-1): depth 1 at position i predicts t_{i+2}
        return {"hits": (main == draft).sum(1), "n": [main.shape[1]] * ids.shape[0]}

    sums = per_domain_sums(model, data.eval_batches(4 * blocks_per_domain, blocks_per_domain), per_sequence)
    return {d: sums[d]["hits"] / sums[d]["n"] for d in data.domains if d in sums and sums[d]["n"]}


@torch.no_grad()
def greedy_answers_right(model: DeepSeekV3, texts: list[str], pattern: re.Pattern,
                         batch_size: int = 64) -> list[bool]:
    """For every match of ``pattern`` in ``texts`` (its group "ans" the answer, followed by a newline): would
    greedy decoding from the text before the answer write exactly the answer and then the newline?

    Computed with one teacher-forced forward per text: greedy decoding writes the right answer if and only
    if, fed the right answer so far, the model's top choice is the next right token every time. Texts are
    padded on the right, which a causal model never sees from earlier positions.
    """
    if "ans" not in pattern.groupindex:
        raise ValueError("the pattern needs a named group (?P<ans>...) around the answer")
    tok = ByteTokenizer()
    right: list[bool] = []
    with eval_mode(model):
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            encoded = [tok.encode(t) for t in chunk]
            T = max(len(e) for e in encoded)
            ids = torch.tensor([e + [tok.eos_id] * (T - len(e)) for e in encoded])  # (B, T) right-padded
            top = model(ids, mtp=False).logits.argmax(-1)  # (B, T): position i -> token i+1
            for row, text in enumerate(chunk):
                for m in pattern.finditer(text):
                    a = len(text[: m.start("ans")].encode("utf-8"))  # first answer token
                    b = len(text[: m.end("ans")].encode("utf-8")) + 1  # one past the newline
                    if b > len(encoded[row]):
                        continue  # no newline after the answer in this text
                    right.append(bool((top[row, a - 1: b - 1] == ids[row, a:b]).all()))
    return right


def acceptance_runs(model: DeepSeekV3, per_domain: int = 2, new_tokens: int = 64, prompt_bytes: int = 32,
                    check_greedy: bool = True) -> list[dict]:
    """Speculative decoding from the starts of the first ``per_domain`` held-out documents of every domain.

    One dict per prompt: domain, drafts proposed and accepted, main forwards, new tokens, acceptance rate,
    tokens per forward, and (``check_greedy``) whether the output equals ``generate``'s token for token.
    """
    tok, corpus = ByteTokenizer(), load_corpus("validation")
    rows = []
    for domain in DOMAINS:
        for doc in documents(corpus[domain])[:per_domain]:
            ids = torch.tensor([tok.encode(doc, add_bos=True)[: 1 + prompt_bytes]])
            spec, stats = speculative_generate(model, ids, new_tokens)
            row = {"domain": domain, "drafts_proposed": stats.drafts_proposed,
                   "drafts_accepted": stats.drafts_accepted, "main_forwards": stats.main_forwards,
                   "new_tokens": stats.new_tokens, "acceptance_rate": stats.acceptance_rate,
                   "tokens_per_forward": stats.tokens_per_forward}
            if check_greedy:
                row["identical"] = bool(torch.equal(spec, generate(model, ids, new_tokens)))
            rows.append(row)
    return rows


def pool(rows: list[dict]) -> dict:
    """Pooled acceptance (accepted / proposed over all rows) and tokens per forward (tokens / forwards)."""
    proposed = sum(r["drafts_proposed"] for r in rows)
    return {"drafts_proposed": proposed, "drafts_accepted": sum(r["drafts_accepted"] for r in rows),
            "acceptance_rate": sum(r["drafts_accepted"] for r in rows) / proposed if proposed else 0.0,
            "tokens_per_forward": sum(r["new_tokens"] for r in rows) / sum(r["main_forwards"] for r in rows)}


def score_sums(text: str) -> tuple[int, int]:
    """(right, total) over the complete lines ``a+b=c`` of ``text``: is c really a + b?

    Only whole lines count (a line cut off by ``max_new_tokens`` is not a claim yet).
    """
    found = SUM_PATTERN.findall(text if text.endswith("\n") else text[: text.rfind("\n") + 1])
    return sum(int(a) + int(b) == int(c) for a, b, c in found), len(found)


# Questions with one right answer in the corpus's held-out text: the named group "ans" is the answer.
ANSWER_PATTERNS = {
    "sums a+b": re.compile(r"(?m)^\d+\+\d+=(?P<ans>\d+)$"),
    "differences a-b": re.compile(r"(?m)^\d+-\d+=(?P<ans>\d+)$"),
    "times tables a*b": re.compile(r"(?m)^\d+\*\d+=(?P<ans>\d+)$"),
    "csv total = price x qty": re.compile(r"(?m)^[a-z]+,\d+,\d+,(?P<ans>\d+)$"),
}
