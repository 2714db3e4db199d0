"""Generation with the latent cache, and speculative decoding with the MTP module ([V3] 5.4.3).

``generate``: prefill the prompt once, then one main-model forward per new token; each forward
feeds only the newest token and reads the cached [c^KV; k^R] of all earlier ones.

``speculative_generate``: the MTP module (depth 1) drafts the token after next, and the main model
checks the draft in the forward it runs anyway. With x_m the newest known token and d the draft for
x_{m+1}, one main forward over [x_m, d] (positions m, m+1) gives

    logits_m     -> the true x_{m+1} = argmax; the draft is accepted only if it equals it (trap 14)
    logits_{m+1} -> x_{m+2}, valid only when the draft was accepted (it was computed after d)

so a step yields 2 tokens when the draft is right and 1 when it is wrong, never a token the main
model would not have chosen: the output is greedy decoding's, token for token. On rejection the
cache entry written for d is removed with ``LatentCache.crop``. The MTP module keeps its own entries
in the same cache (layer index num_hidden_layers), fed with h^0 of accepted positions only:
depth 1 at position i sees h^0_i and Emb(x_{i+1}) and predicts x_{i+2} ([V3] eq 21).

Tokens per main forward = 1 + acceptance rate (one draft per step), the paper's 1.8x at 85-90 %.
Letters: B batch, T positions, V vocabulary.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field

import torch

from .model import DeepSeekV3


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """Eval mode (no expert-load counting, no dropout) for the duration, then the previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check_prompt(model: DeepSeekV3, input_ids: torch.Tensor, max_new_tokens: int,
                  eos_token_id: int | None = None) -> None:
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a (batch, positions) tensor of token ids, got a {type(input_ids).__name__}."
                        " Wrap it: torch.tensor([ids]) for one prompt.")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
        raise ValueError(f"input_ids must be a (batch, positions) tensor with at least one position, got "
                         f"{tuple(input_ids.shape)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: use an integer >= 0")
    limit = model.config.max_position_embeddings
    if input_ids.shape[1] + max_new_tokens > limit:
        raise ValueError(
            f"prompt ({input_ids.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
            f"max_position_embeddings={limit}"
        )
    vocab = model.config.vocab_size
    if eos_token_id is not None and (
        isinstance(eos_token_id, bool) or not isinstance(eos_token_id, int) or not 0 <= eos_token_id < vocab
    ):
        raise ValueError(f"eos_token_id={eos_token_id!r}: use a token id in [0, {vocab}) (the model could never "
                         "produce this one, so generation would never stop on it), or None")


def _check_sampling(temperature: float, top_k: int | None) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ValueError(f"temperature={temperature!r}: use 0 (greedy) or a positive finite number such as 0.8")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r}: use a whole number of at least 1 (keep the k likeliest tokens), "
                         "or None for no cut")


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits (B, V) -> next tokens (B,). Temperature 0 is greedy (argmax); else softmax(logits / T) over the top k."""
    _check_sampling(temperature, top_k)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: DeepSeekV3,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
    attn_impl: str | None = None,
) -> torch.Tensor:
    """Prompt (B, T) -> prompt + new tokens (B, T + n), n <= max_new_tokens.

    Greedy at temperature 0. With ``eos_token_id`` it stops once every row has produced it; rows that
    finished earlier are padded with it. The latent cache makes each step one token's forward.
    """
    _check_prompt(model, input_ids, max_new_tokens, eos_token_id)
    _check_sampling(temperature, top_k)
    if max_new_tokens == 0:
        return input_ids.clone()
    with _eval_mode(model):
        cache = model.new_cache()
        h = model.backbone(input_ids, cache=cache, attn_impl=attn_impl)  # (B, T, d): prefill
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        new: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            logits = model.lm_head(h[:, -1])  # (B, V)
            token = sample_next(logits, temperature, top_k, generator)  # (B,)
            if eos_token_id is not None:
                token = token.masked_fill(finished, eos_token_id)
                finished |= token == eos_token_id
            new.append(token)
            if step + 1 == max_new_tokens or (eos_token_id is not None and bool(finished.all())):
                break
            h = model.backbone(token[:, None], cache=cache, attn_impl=attn_impl)  # (B, 1, d)
    return torch.cat([input_ids, torch.stack(new, dim=1).to(input_ids.dtype)], dim=1)


@dataclass
class SpeculativeStats:
    """What one ``speculative_generate`` call did. ``sources[j]`` says who chose new token j: "main" (the main
    model's own argmax) or "draft" (an MTP draft the main model confirmed). ``trace`` has one entry per
    verification step when asked for."""

    new_tokens: int = 0
    main_forwards: int = 0  # the prefill plus one per verification step
    drafts_proposed: int = 0  # drafts the main model checked
    drafts_accepted: int = 0
    sources: list[str] = field(default_factory=list)
    trace: list[dict] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        return self.drafts_accepted / self.drafts_proposed if self.drafts_proposed else 0.0

    @property
    def tokens_per_forward(self) -> float:
        """New tokens per main-model forward (greedy decoding: exactly 1)."""
        return self.new_tokens / self.main_forwards if self.main_forwards else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(acceptance_rate=self.acceptance_rate, tokens_per_forward=self.tokens_per_forward)
        return out


@torch.no_grad()
def speculative_generate(
    model: DeepSeekV3,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    return_stats: bool = True,
    eos_token_id: int | None = None,
    trace: bool = False,
    attn_impl: str | None = None,
):
    """Greedy decoding sped up by MTP drafts: returns what ``generate(model, input_ids, max_new_tokens)``
    returns, (1, T + n), and with ``return_stats`` a :class:`SpeculativeStats` as well.

    Batch 1. One draft per step from MTP depth 1 (deeper modules are not used for drafting).
    ``trace=True`` records each verification step: the position, the fed tokens, the draft, the main
    model's choice there, whether the draft was accepted, and the tokens the step added.
    """
    _check_prompt(model, input_ids, max_new_tokens, eos_token_id)
    if input_ids.shape[0] != 1:
        raise ValueError(f"speculative_generate decodes one sequence (batch 1), got batch {input_ids.shape[0]}")
    if len(model.mtp) == 0:
        raise ValueError("this model has no MTP module (num_nextn_predict_layers=0): nothing can draft")
    stats = SpeculativeStats()
    n_prompt = input_ids.shape[1]
    out = input_ids[0].tolist()
    device = input_ids.device

    def ids(tokens: list[int]) -> torch.Tensor:
        return torch.tensor([tokens], dtype=torch.long, device=device)  # (1, T)

    def done() -> bool:
        return len(out) - n_prompt >= max_new_tokens or (eos_token_id is not None and eos_token_id in out[n_prompt:])

    with _eval_mode(model):
        if max_new_tokens > 0:
            cache = model.new_cache()  # main layers and the MTP module's own layer
            h = model.backbone(input_ids, cache=cache, attn_impl=attn_impl)  # (1, T, d): h^0 of the prompt
            out.append(int(model.lm_head(h[0, -1]).argmax()))  # x_T, the first new token
            stats.main_forwards, stats.sources = 1, ["main"]
            fresh_h, fresh_next = h, out[1:]  # positions the MTP module has not seen: h^0_i and x_{i+1}
        while not done():
            # Draft x_{m+1}: depth 1 at the newest position m-1 (sees h^0_{m-1} and x_m).
            _, mtp_logits = model.mtp_forward(1, fresh_h, ids(fresh_next), cache=cache, attn_impl=attn_impl)
            draft = int(mtp_logits[0, -1].argmax())
            m = len(out) - 1  # position of x_m, the newest known token (not yet in the main cache)
            # Verify: one main forward over [x_m, draft] at positions m, m+1.
            h = model.backbone(ids([out[-1], draft]), cache=cache, attn_impl=attn_impl)  # (1, 2, d)
            choice = model.lm_head(h[0]).argmax(dim=-1).tolist()  # main model's x_{m+1}, and x_{m+2} given draft
            stats.main_forwards += 1
            stats.drafts_proposed += 1
            if choice[0] == draft:  # accepted: both positions are verified, the second prediction is valid too
                stats.drafts_accepted += 1
                added, fresh_h = choice, h
                stats.sources += ["draft", "main"]
            else:  # rejected: keep the main model's x_{m+1}; forget the cache entry written for the draft
                cache.crop(m + 1)
                added, fresh_h = choice[:1], h[:, :1]
                stats.sources.append("main")
            fresh_next = added  # x_{m+1} (and x_{m+2}): what the MTP module combines with h^0_m (and h^0_{m+1})
            if trace:
                stats.trace.append({"position": m, "fed": [out[-1], draft], "draft": draft, "main": choice[0],
                                    "accepted": choice[0] == draft, "added": list(added)})
            out.extend(added)
    new = out[n_prompt:][:max_new_tokens]
    if eos_token_id is not None and eos_token_id in new:
        new = new[: new.index(eos_token_id) + 1]
    stats.new_tokens = len(new)
    stats.sources = stats.sources[: len(new)]
    result = torch.tensor([out[:n_prompt] + new], dtype=input_ids.dtype, device=device)
    return (result, stats) if return_stats else result
