"""What one MLA attention call costs: matmul FLOPs, bytes moved, and the time a roofline predicts.

Three ways to run MLA's attention against a context of S tokens (per layer; [V2] 2.1.2):

- "expanded": cache per-head K (D+R) and V (V) for every token, as ordinary MHA would;
- "naive": cache the latent [c^KV; k^R] and rebuild K and V from all of it on every call;
- "absorbed": cache the latent and attend in latent space: q~ = W^UK^T q^C, o = W^UV (sum_s p_s c_s).

For T new tokens against S positions (the T are the last T of the S), with P (query, key) pairs:

    expanded:  2 T H C (D+V)  +  2 H P (D+R+V)      expand the T new tokens, attend per head
    naive:     2 S H C (D+V)  +  2 H P (D+R+V)      expand all S tokens, attend per head
    absorbed:  2 T H C (D+V)  +  2 H P (2C+R)       absorb W^UK, W^UV; attend in the 576-wide latent

Only matrix products are counted (as ``torch.utils.flop_counter`` does); softmax is left out. Bytes of a
decode step (T = 1): the cache it reads, W^UK and W^UV (every path needs them: to expand the new token,
to re-expand the cache, or to absorb), and for "naive" the K and V it writes and reads back.

Used by lesson 04 (and its widget) and by ``python -m dsv3_edu.bench mla``'s roofline prediction.

Letters: B batch, T new tokens, S context, H heads, C = d_c, R = d_h^R, D = d_h (nope), V = v_head_dim.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .config import DATA_DIR, ModelConfig

PATHS = ("expanded", "naive", "absorbed")
BENCH_PATH = DATA_DIR / "bench_mla.json"


# ----------------------------------------------------------------------------------------- machines
@dataclass(frozen=True)
class Machine:
    """Peak memory bandwidth (bytes/s) and matmul speed (FLOP/s), and the bytes per cached value."""

    name: str
    bandwidth: float
    flops: float
    bytes_per_value: int

    @property
    def balance(self) -> float:
        """FLOPs the machine can do per byte it reads: kernels below this intensity wait on memory."""
        return self.flops / self.bandwidth


# NVIDIA's figures for an H800 SXM5 (the GPU DeepSeek-V3 was trained and served on), as FlashMLA's
# write-up quotes them: 3.35 TB/s of HBM3, 990 TFLOP/s of dense BF16 matmul.
H800 = Machine("H800 SXM5 (spec sheet, BF16)", bandwidth=3.35e12, flops=990e12, bytes_per_value=2)


def bench_machine(path: str | Path = BENCH_PATH) -> Machine:
    """The CPU that produced data/bench_mla.json: its measured bandwidth and matmul speed, FP32."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No benchmark results at {path}: run `python -m dsv3_edu.bench mla --json {path}`")
    r = json.loads(path.read_text())
    threads = r["settings"]["threads"]
    return Machine(
        f"this course's CPU (measured, FP32, {threads} thread{'s' if threads != 1 else ''})",
        bandwidth=r["memory_bandwidth_GBps"] * 1e9,
        flops=r["matmul_GFLOPs"] * 1e9,
        bytes_per_value=4,
    )


def machines() -> dict[str, Machine]:
    """The machines the explorer offers: "cpu" (data/bench_mla.json) and "h800" (spec sheet)."""
    return {"cpu": bench_machine(), "h800": H800}


# ----------------------------------------------------------------------------------------- counting
def _dims(config: ModelConfig) -> tuple[int, int, int, int, int]:
    return (config.num_attention_heads, config.kv_lora_rank, config.qk_nope_head_dim, config.qk_rope_head_dim,
            config.v_head_dim)


def check_path(path: str) -> None:
    """Raise a ValueError naming the paths unless ``path`` is one of PATHS."""
    if path not in PATHS:
        raise ValueError(f"path={path!r}: choose one of {', '.join(PATHS)}")


def query_key_pairs(T: int, S: int, causal: bool = True, block: int | None = None) -> int:
    """(query, key) pairs attention scores when T new queries are the last T of S positions.

    causal: query i (0-based among the T) sees S - T + i + 1 keys. ``block``: queries go in blocks of
    that many rows and each block is scored against every key up to its last row (masking after the
    product, as dsv3_edu.bench.mla's chunked prefill does), so a few masked pairs are computed too.
    """
    if not 1 <= T <= S:
        raise ValueError(f"T={T}, S={S}: the T new tokens are part of the S positions, so 1 <= T <= S")
    if not causal:
        return T * S
    if block is None:
        return T * (S - T) + T * (T + 1) // 2
    return sum((min(i + block, T) - i) * (S - T + min(i + block, T)) for i in range(0, T, block))


def attention_flops(
    config: ModelConfig, T: int, S: int, path: str, batch: int = 1, causal: bool = True, block: int | None = None
) -> int:
    """Matmul FLOPs of one MLA attention call (one layer): T new tokens against S positions (module docstring)."""
    check_path(path)
    H, C, D, R, V = _dims(config)
    pairs = query_key_pairs(T, S, causal, block)
    expanded_tokens = S if path == "naive" else T
    width = 2 * C + R if path == "absorbed" else D + R + V  # score + value width per (query, key) pair
    return batch * (2 * expanded_tokens * H * C * (D + V) + 2 * H * pairs * width)


def decode_step_bytes(
    config: ModelConfig, context: int, path: str, batch: int = 1, bytes_per_value: int = 2, new_token: bool = True
) -> dict[str, int]:
    """Bytes one decode step moves in one layer: ``cache`` read, ``weights`` (W^UK, W^UV) read,
    ``intermediate`` (naive: K and V written, then read back) and their ``total``.

    ``new_token=False`` leaves out the expanded path's expansion of the new token (and so its reading of
    W^UK, W^UV): only the attention over the cache, as dsv3_edu.bench.mla times that path.
    """
    check_path(path)
    H, C, D, R, V = _dims(config)
    kv_values = context * H * (D + R + V)  # per-head K and V of every position
    latent_values = context * (C + R)  # [c^KV; k^R] of every position
    reads_weights = new_token or path != "expanded"
    out = {
        "cache": batch * (kv_values if path == "expanded" else latent_values) * bytes_per_value,
        "weights": H * (D + V) * C * bytes_per_value if reads_weights else 0,  # once per step, shared by the batch
        "intermediate": 2 * batch * kv_values * bytes_per_value if path == "naive" else 0,
    }
    out["total"] = sum(out.values())
    return out


@dataclass(frozen=True)
class StepCost:
    """FLOPs and bytes of one decode step in one layer, and what a roofline makes of them."""

    path: str
    flops: int
    bytes: int

    @property
    def intensity(self) -> float:
        """Arithmetic intensity: FLOPs per byte moved."""
        return self.flops / self.bytes

    def seconds(self, machine: Machine) -> float:
        """Roofline time: the slower of moving the bytes and doing the FLOPs (a lower bound)."""
        return max(self.bytes / machine.bandwidth, self.flops / machine.flops)

    def bound(self, machine: Machine) -> str:
        return "memory" if self.intensity < machine.balance else "compute"


def decode_step_cost(
    config: ModelConfig, context: int, path: str, batch: int = 1, bytes_per_value: int = 2, new_token: bool = True
) -> StepCost:
    """One decode step (T = 1) against ``context`` positions, one layer (``new_token``: see decode_step_bytes)."""
    flops = attention_flops(config, 1, context, path, batch)
    if path == "expanded" and not new_token:
        H, C, D, _, V = _dims(config)
        flops -= 2 * batch * H * C * (D + V)
    return StepCost(path, flops, decode_step_bytes(config, context, path, batch, bytes_per_value, new_token)["total"])
