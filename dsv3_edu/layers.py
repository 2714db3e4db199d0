"""Small building blocks shared by attention, MoE and the full model, and ``eval_mode``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm: ``weight * x / sqrt(mean(x^2) + eps)``.

    Computed in fp32 and cast back to the input dtype before the weight is applied,
    exactly as transformers' ``DeepseekV3RMSNorm`` does, so bf16 results match too.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``with eval_mode(model):`` eval mode (no expert-load counting, no bias update, no dropout) for the
    block, then the mode the model had before, even if the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
