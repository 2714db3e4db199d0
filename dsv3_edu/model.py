"""The whole model: embedding, dense then MoE decoder layers with MLA, final norm, head, and MTP modules.

Names follow the released checkpoint ([V3] arXiv 2412.19437, notebooks/REFERENCE.md section 6), so
``model.state_dict()`` keys are the checkpoint's keys, except that the MTP modules live in
``mtp.{k}`` here and at ``model.layers.{num_hidden_layers + k}`` in a checkpoint
(dsv3_edu.checkpoint renames them).

Letters: B batch, T positions, d hidden size, V vocabulary, D MTP depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import RMSNorm
from .mla import MLA, LatentCache
from .moe import MLP, MoE


class DecoderLayer(nn.Module):
    """Pre-norm block: h = x + MLA(norm(x)); out = h + FFN(norm(h)) ([V3] Figure 2).

    The FFN is a dense SwiGLU for the first ``first_k_dense_replace`` layers, DeepSeekMoE after.
    """

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MLA(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MoE(config) if config.is_moe_layer(layer_idx) else MLP(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, cache: LatentCache | None = None, attn_impl: str | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cache=cache, attn_impl=attn_impl)
        return x + self.mlp(self.post_attention_layernorm(x))


class SharedHead(nn.Module):
    """The MTP module's ``shared_head``: its own RMSNorm; the head matrix is the main model's."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class MTPModule(DecoderLayer):
    """MTP depth k ([V3] eqs 21-23): h'_i = M_k [RMSNorm(Emb(t_{i+k})); RMSNorm(h^{k-1}_i)], h^k = TRM_k(h').

    The order [enorm(emb); hnorm(h)] is the released checkpoint's (as vLLM loads it). Embedding and
    output head are NOT owned here: the main model passes its own, so they are the same parameters.
    A transformer block of its own (this class is a DecoderLayer), then ``shared_head.norm``.
    """

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.enorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.hnorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=False)  # M_k, d x 2d
        self.shared_head = SharedHead(config)

    def forward(  # type: ignore[override]
        self,
        h_prev: torch.Tensor,
        emb_next: torch.Tensor,
        cache: LatentCache | None = None,
        attn_impl: str | None = None,
    ) -> torch.Tensor:
        """h_prev: h^{k-1}_i (B, T, d); emb_next: Emb(t_{i+k}) (B, T, d). Returns h^k (B, T, d), before the norm."""
        x = self.eh_proj(torch.cat([self.enorm(emb_next), self.hnorm(h_prev)], dim=-1))  # (B, T, 2d) -> (B, T, d)
        return super().forward(x, cache=cache, attn_impl=attn_impl)


class Backbone(nn.Module):
    """``model.*`` in the checkpoint: embed_tokens, layers, norm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


@dataclass
class ModelOutput:
    """What ``DeepSeekV3.forward`` returns. ``mtp_logits[k-1]`` is depth k: (B, T-k, V), position i
    predicting token i+k+1. Losses are None without labels."""

    logits: torch.Tensor  # (B, T, V), position i predicts token i+1
    hidden_states: torch.Tensor  # h^0: the main model's final (normalized) hidden state, (B, T, d)
    mtp_logits: list[torch.Tensor] = field(default_factory=list)
    loss: torch.Tensor | None = None  # L_main + lambda / D * sum_k L_MTP^k
    main_loss: torch.Tensor | None = None
    mtp_losses: list[torch.Tensor] = field(default_factory=list)


class DeepSeekV3(nn.Module):
    """DeepSeek-V3 at any size: ``DeepSeekV3(ModelConfig.tiny())`` runs on a laptop."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        L = config.num_hidden_layers
        self.mtp = nn.ModuleList(MTPModule(config, L + k) for k in range(config.num_nextn_predict_layers))
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        # RMSNorm weights start at one and the balancing bias at zero (their own constructors).

    def save_pretrained(self, save_directory, **kwargs):
        """Write config.json and safetensors in the released layout (see dsv3_edu.checkpoint.save_pretrained)."""
        from .checkpoint import save_pretrained

        return save_pretrained(self, save_directory, **kwargs)

    @classmethod
    def from_pretrained(cls, directory, **kwargs) -> DeepSeekV3:
        """Load a checkpoint folder (see dsv3_edu.checkpoint.load_pretrained)."""
        from .checkpoint import load_pretrained

        return load_pretrained(directory, **kwargs)

    def new_cache(self) -> LatentCache:
        """An empty latent cache for every main layer and every MTP module."""
        return LatentCache(self.config.num_hidden_layers + len(self.mtp))

    def _check_ids(self, input_ids: torch.Tensor) -> None:
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(
                f"input_ids must be a torch.Tensor of token ids, shape (batch, positions); got a "
                f"{type(input_ids).__name__}. Wrap it: torch.tensor([ids]) for one sequence."
            )
        if input_ids.dtype not in (torch.long, torch.int32):
            raise TypeError(f"input_ids must be integer token ids (torch.long), got {input_ids.dtype}")
        if input_ids.dim() != 2:
            fix = " Add the batch dimension: input_ids[None]." if input_ids.dim() == 1 else ""
            raise ValueError(f"input_ids must be (batch, positions), got shape {tuple(input_ids.shape)}.{fix}")
        if input_ids.numel() == 0:
            raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}: give at least one sequence of at least "
                             "one token")
        low, high = torch.stack(torch.aminmax(input_ids)).tolist()  # one device sync for both bounds
        if low < 0 or high >= self.config.vocab_size:
            raise ValueError(
                f"input_ids has ids outside [0, {self.config.vocab_size}): min {low}, max {high}. "
                "Use the tokenizer that matches config.vocab_size."
            )

    def _check_labels(self, input_ids: torch.Tensor, labels: torch.Tensor) -> list[int]:
        """Labels must be ids in [0, V) or -100 (ignored), with something left to learn from. Returns the number
        of counted targets of the main loss and of each MTP depth (one device sync for every check)."""
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor like input_ids, got a {type(labels).__name__}")
        if labels.dtype not in (torch.long, torch.int32):
            raise TypeError(f"labels must be integer token ids (torch.long, -100 where ignored), got {labels.dtype}")
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels {tuple(labels.shape)} must have the shape of input_ids "
                             f"{tuple(input_ids.shape)} (the model shifts them)")
        if labels.shape[1] < 2:
            raise ValueError(f"labels of {labels.shape[1]} position: position i is scored against token i+1, so a "
                             "loss needs at least 2 positions. Pass labels=None to get the logits only.")
        counted = labels != -100
        bad = counted & ((labels < 0) | (labels >= self.config.vocab_size))
        stats = [bad.sum()] + [counted[:, k + 1:].sum() for k in range(len(self.mtp) + 1)]
        n_bad, *counts = torch.stack(stats).tolist()
        if n_bad:
            wrong = labels[bad]
            raise ValueError(
                f"labels has {n_bad} id(s) outside [0, {self.config.vocab_size}) (min {int(wrong.min())}, max "
                f"{int(wrong.max())}); use token ids of this vocabulary, or -100 where no loss is wanted"
            )
        if counts[0] == 0:
            raise ValueError(
                "every label after the first position is -100 (ignored): the loss has no target to average over. "
                "Label at least one position, or pass labels=None to get the logits only."
            )
        return counts

    def backbone(
        self, input_ids: torch.Tensor, cache: LatentCache | None = None, attn_impl: str | None = None
    ) -> torch.Tensor:
        """Embedding and the main decoder layers; returns h^0 = the final RMSNorm's output (B, T, d)."""
        self._check_ids(input_ids)
        h = self.model.embed_tokens(input_ids)  # (B, T, d)
        for layer in self.model.layers:
            h = layer(h, cache=cache, attn_impl=attn_impl)
        return self.model.norm(h)

    def mtp_forward(
        self,
        depth: int,
        h_prev: torch.Tensor,
        next_ids: torch.Tensor,
        cache: LatentCache | None = None,
        attn_impl: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One MTP depth (1-based): combine h^{depth-1}_i with Emb(t_{i+depth}); return (h^depth, logits).

        ``next_ids`` are the tokens t_{i+depth}, aligned with ``h_prev`` position by position.
        """
        if not 1 <= depth <= len(self.mtp):
            raise ValueError(f"depth={depth}: this model has MTP depths 1..{len(self.mtp)}")
        if next_ids.shape != h_prev.shape[:2]:
            raise ValueError(f"next_ids {tuple(next_ids.shape)} must align with h_prev {tuple(h_prev.shape[:2])}")
        module = self.mtp[depth - 1]
        h = module(h_prev, self.model.embed_tokens(next_ids), cache=cache, attn_impl=attn_impl)
        return h, self.lm_head(module.shared_head.norm(h))  # the main model's head: shared ([V3] eq 24)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        cache: LatentCache | None = None,
        mtp: bool | None = None,
        mtp_lambda: float = 0.3,
        attn_impl: str | None = None,
    ) -> ModelOutput:
        """input_ids (B, T). ``labels`` follow the Hugging Face convention (usually the input ids
        themselves, -100 where ignored): the model shifts them. ``mtp`` runs the MTP modules
        (default: when there is no cache). Loss = L_main + (mtp_lambda / D) * sum_k L_MTP^k ([V3] eq 25).
        """
        counts = None if labels is None else self._check_labels(input_ids, labels)
        h0 = self.backbone(input_ids, cache=cache, attn_impl=attn_impl)
        out = ModelOutput(logits=self.lm_head(h0), hidden_states=h0)
        if mtp is None:
            mtp = cache is None
        if mtp:
            h = h0
            for k in range(1, len(self.mtp) + 1):
                # Depth k at position i sees h^{k-1}_i and t_{i+k}; it exists for i < T - k.
                if input_ids.shape[1] <= k:  # too short a sequence for this depth: no positions
                    out.mtp_logits.append(out.logits[:, :0])
                    continue
                h, logits = self.mtp_forward(k, h[:, :-1], input_ids[:, k:], attn_impl=attn_impl)
                out.mtp_logits.append(logits)  # (B, T-k, V): position i predicts t_{i+k+1}
        if labels is not None:
            labels = labels.long()
            out.main_loss = _cross_entropy(out.logits[:, :-1], labels[:, 1:])
            # A depth whose targets are all ignored contributes 0 (not the NaN of a mean over nothing).
            out.mtp_losses = [_cross_entropy(lg[:, :-1], labels[:, k + 1:]) if counts[k] else lg.sum() * 0.0
                              for k, lg in enumerate(out.mtp_logits, 1)]
            out.loss = out.main_loss
            if out.mtp_losses:
                out.loss = out.main_loss + mtp_lambda / len(out.mtp_losses) * sum(out.mtp_losses)
        return out


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose target is not -100 (fp32)."""
    if targets.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)
