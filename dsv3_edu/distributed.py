"""Beyond one machine: expert parallelism (EP) and data parallelism on ``torch.distributed`` (lesson 11).

Expert parallelism ([V3] 2.1.2, 3.2.2, 3.4): W ranks each hold E/W routed experts and a shard of the
tokens. Every rank routes its own tokens with the same :class:`~dsv3_edu.moe.Gate`, then

    dispatch: all_to_all_single of the token vectors, one row per (token, destination rank):
              a token whose K experts live on 2 ranks is sent twice, never K times
              (DeepSeek-V3's dispatch sends a token once per node, then forwards inside it);
    experts:  each rank runs its experts on the rows it received, weighted by the gate;
    combine:  all_to_all_single of the partial sums back the same way; the sender adds them up.

Shared experts run where the token lives. With the ranks standing for nodes (``n_group = W``,
``topk_group = M``) node-limited routing caps the destinations of a token at M, so the bytes a rank
sends in the dispatch are, for hidden size d and b bytes per value::

    bytes(s -> t) = b * d * #{tokens u of rank s : some expert of u lives on rank t}
    sum_t bytes(s -> t) <= b * d * N_s * min(K, M)          (N_s tokens on rank s)

and the combine sends the same bytes back (the transpose). :func:`dispatch_bytes` is that formula;
:class:`ExpertParallelMoE` measures the split sizes it really passes to ``all_to_all_single``.

Data parallelism: :func:`init_from_env` (``torchrun`` sets RANK, WORLD_SIZE, MASTER_ADDR/PORT),
:func:`shard_batch` (each rank's slice of the global batch), :func:`all_reduce_loads` (the expert
counts of the whole global batch, before the bias update's sign step, as V3 does) and :func:`is_main`
(only rank 0 writes and prints). ``dsv3_edu.train`` uses them under ``torchrun``.

Processes: :func:`spawn` starts W local processes with ``torch.multiprocessing`` (spawn start method,
a free port on 127.0.0.1, one thread each), runs a function of this package in each after joining the
process group (``gloo`` on CPU, ``nccl`` when every rank has a GPU) and returns what each returned:
the lesson and the tests run everything through :func:`run_expert_parallel` and :func:`run_data_parallel`.

Letters: W world size (ranks), E routed experts, E_loc = E / W per rank, K experts per token, M ranks
(nodes) a token may reach, N tokens, d hidden size.
"""

from __future__ import annotations

import datetime
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from .config import ModelConfig
from .moe import MLP, Gate, MoE

BYTES_FP32 = 4

# --------------------------------------------------------------------------------- world sizes


def check_world_size(world_size: int, n_routed_experts: int) -> int:
    """The number of ranks an expert-parallel layer of ``n_routed_experts`` can use, or a ValueError."""
    if isinstance(world_size, bool) or not isinstance(world_size, int):
        raise ValueError(f"world_size={world_size!r}: give a whole number of processes (ranks), e.g. 2 or 4")
    if world_size < 1:
        raise ValueError(f"world_size={world_size}: expert parallelism needs at least 1 rank")
    if world_size > n_routed_experts:
        raise ValueError(f"world_size={world_size} is more than the {n_routed_experts} routed experts: every rank "
                         f"must hold at least one expert; use at most {n_routed_experts} ranks")
    if n_routed_experts % world_size:
        fits = [w for w in range(1, n_routed_experts + 1) if n_routed_experts % w == 0]
        raise ValueError(f"n_routed_experts={n_routed_experts} is not divisible by world_size={world_size}: each "
                         f"rank holds E/W experts; use a world size in {fits}")
    return world_size


def ep_config(config: ModelConfig, world_size: int, max_ranks_per_token: int | None) -> ModelConfig:
    """The router of an EP layer with ranks standing for nodes: ``n_group = W`` and ``topk_group = M``.

    ``max_ranks_per_token=None`` routes without the limit (one group: plain top-K over all experts)."""
    check_world_size(world_size, config.n_routed_experts)
    if max_ranks_per_token is None:
        return config.replace(n_group=1, topk_group=1)
    M = max_ranks_per_token
    if isinstance(M, bool) or not isinstance(M, int) or not 1 <= M <= world_size:
        raise ValueError(f"max_ranks_per_token (M)={M!r}: a token may reach 1 to {world_size} ranks")
    if M * (config.n_routed_experts // world_size) < config.num_experts_per_tok:
        raise ValueError(f"M={M} ranks hold only {M * (config.n_routed_experts // world_size)} experts, fewer than "
                         f"the K={config.num_experts_per_tok} a token needs: raise M or use fewer ranks")
    if world_size > 1 and config.n_routed_experts // world_size < 2:
        raise ValueError(f"with the node limit each rank needs at least 2 experts (a group's score is the sum of "
                         f"its top-2); {config.n_routed_experts} experts over {world_size} ranks leave 1")
    return config.replace(n_group=world_size, topk_group=M)


# --------------------------------------------------------------------------- the formulas


def destination_ranks(topk_idx: torch.Tensor, experts_per_rank: int, world_size: int) -> torch.Tensor:
    """(N, K) expert ids -> (N, W) bool: does the token have at least one expert on rank t?"""
    dest = topk_idx // experts_per_rank  # (N, K) the rank of each chosen expert
    return torch.zeros(topk_idx.shape[0], world_size, dtype=torch.bool, device=topk_idx.device).scatter_(1, dest, True)


def dispatch_bytes(topk_idx: torch.Tensor, world_size: int, hidden_size: int, experts_per_rank: int | None = None,
                   bytes_per_value: int = BYTES_FP32) -> torch.Tensor:
    """The formula: (W, W) bytes rank s sends rank t in the dispatch, tokens split into W equal shards.

    ``topk_idx`` (N, K) is the routing of all N tokens in rank order (rank s holds the s-th shard of
    ``torch.tensor_split``). Each token is counted once per destination rank, whatever the number of its
    experts there. The diagonal stays on its rank (no network); the combine sends the transpose back."""
    N, _ = topk_idx.shape
    if experts_per_rank is None:
        experts_per_rank = (int(topk_idx.max()) + 1 + world_size - 1) // world_size
    hit = destination_ranks(topk_idx, experts_per_rank, world_size)  # (N, W)
    rows = torch.stack([part.sum(0) for part in hit.tensor_split(world_size)])  # (W, W) tokens s -> t
    return rows.long() * hidden_size * bytes_per_value


def max_dispatch_bytes(n_tokens: int, top_k: int, world_size: int, hidden_size: int,
                       max_ranks_per_token: int | None = None, bytes_per_value: int = BYTES_FP32) -> int:
    """Upper bound of the bytes a rank holding ``n_tokens`` sends (all destinations, itself included):
    each token reaches at most min(K, M) ranks (min(K, W) without the limit)."""
    reach = min(top_k, world_size if max_ranks_per_token is None else max_ranks_per_token)
    return n_tokens * reach * hidden_size * bytes_per_value


def rank_loads(expert_loads: torch.Tensor, world_size: int) -> torch.Tensor:
    """(E,) token-expert pairs per expert -> (W,) per rank (rank t holds experts t*E/W ... (t+1)*E/W - 1)."""
    return expert_loads.reshape(world_size, -1).sum(1)


class Redundancy(NamedTuple):
    rank_loads_before: torch.Tensor  # (W,) token-expert pairs per rank, one copy of every expert
    rank_loads_after: torch.Tensor  # (W,) float: with the copies, each expert's load split evenly over them
    copies: list[tuple[int, int]]  # (expert, rank it was copied to), in the order they were placed
    max_before: float
    max_after: float


def simulate_redundancy(expert_loads: torch.Tensor, world_size: int, n_redundant: int) -> Redundancy:
    """Duplicate hot experts onto lightly loaded ranks ([V3] 3.4.1's redundant experts), on counts.

    Each rank has ceil(n_redundant / W) free slots (V3 at prefill: one extra expert per GPU). Greedy,
    ``n_redundant`` times: among every (expert, rank) pair where the rank has a free slot and no copy of
    the expert yet, place the copy that leaves the busiest rank least busy (ties: the smaller sum of
    squared rank loads, then the lower expert and rank ids). An expert's tokens are split evenly over its
    copies. It stops early when the best remaining copy would make the busiest rank busier (a copy
    forced onto the busiest rank), so ``copies`` may be shorter than ``n_redundant``. A simulation: no
    token moves, and a real system splits by token, not by fractions."""
    loads = torch.as_tensor(expert_loads, dtype=torch.float64).flatten()
    E = loads.numel()
    check_world_size(world_size, E)
    if isinstance(n_redundant, bool) or not isinstance(n_redundant, int) or n_redundant < 0:
        raise ValueError(f"n_redundant={n_redundant!r}: give the number of extra expert copies, 0 or more")
    if n_redundant > E * (world_size - 1):
        raise ValueError(f"n_redundant={n_redundant}: at most {E * (world_size - 1)} copies fit "
                         f"({E} experts, each on at most {world_size} ranks)")
    per = E // world_size
    holders = [{e // per} for e in range(E)]  # ranks that hold a copy of expert e
    slots = [-(-n_redundant // world_size)] * world_size
    copies: list[tuple[int, int]] = []

    def per_rank(holders: list[set[int]]) -> torch.Tensor:
        out = torch.zeros(world_size, dtype=torch.float64)
        for e in range(E):
            for r in holders[e]:
                out[r] += loads[e] / len(holders[e])
        return out

    for _ in range(n_redundant):
        best = None
        for e in range(E):
            if loads[e] == 0:
                continue
            for r in range(world_size):
                if slots[r] == 0 or r in holders[e]:
                    continue
                trial = per_rank(holders[:e] + [holders[e] | {r}] + holders[e + 1:])
                key = (round(float(trial.max()), 9), round(float((trial ** 2).sum()), 6), e, r)
                if best is None or key < best[0]:
                    best = (key, e, r)
        if best is None or best[0][0] > round(float(per_rank(holders).max()), 9):
            break
        _, e, r = best
        holders[e].add(r)
        slots[r] -= 1
        copies.append((e, r))
    before, after = rank_loads(loads, world_size), per_rank(holders)
    return Redundancy(before, after, copies, float(before.max()), float(after.max()))


# --------------------------------------------------------------------------- the EP layer


class ExpertParallelMoE(nn.Module):
    """A DeepSeekMoE layer split over the ranks of a process group: E/W routed experts per rank.

    ``forward(x)`` takes this rank's tokens (B, T, d) and returns their outputs, equal to
    ``MoE(config)(x)`` on one process with the same weights. After each forward, ``last_send_counts``
    (W,) holds the rows this rank sent to each rank in the dispatch, ``last_expert_loads`` (E_loc,) the
    token-expert pairs its experts computed and ``last_received`` the rows it received."""

    def __init__(self, config: ModelConfig, group: dist.ProcessGroup | None = None):
        super().__init__()
        if not dist.is_initialized():
            raise RuntimeError("ExpertParallelMoE needs a process group: call torch.distributed.init_process_group "
                               "first (or use dsv3_edu.distributed.run_expert_parallel, which does)")
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        check_world_size(self.world_size, config.n_routed_experts)
        self.config = config
        self.hidden_size = config.hidden_size
        self.experts_per_rank = config.n_routed_experts // self.world_size
        self.first_expert = self.rank * self.experts_per_rank
        self.gate = Gate(config)
        self.experts = nn.ModuleList(MLP(config.hidden_size, config.moe_intermediate_size)
                                     for _ in range(self.experts_per_rank))
        self.shared_experts = (MLP(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts)
                               if config.n_shared_experts > 0 else None)
        self.last_send_counts: torch.Tensor | None = None
        self.last_expert_loads: torch.Tensor | None = None
        self.last_received = 0

    @torch.no_grad()
    def load_from(self, moe: MoE) -> ExpertParallelMoE:
        """Copy the router, this rank's experts and the shared experts from a single-process ``MoE``."""
        state = moe.state_dict()
        mine = {"gate.weight": state["gate.weight"],
                "gate.e_score_correction_bias": state["gate.e_score_correction_bias"]}
        for j in range(self.experts_per_rank):
            for p in ("gate_proj", "up_proj", "down_proj"):
                mine[f"experts.{j}.{p}.weight"] = state[f"experts.{self.first_expert + j}.{p}.weight"]
        for key, value in state.items():
            if key.startswith("shared_experts."):
                mine[key] = value
        self.load_state_dict(mine)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"ExpertParallelMoE expects (B, T, {self.hidden_size}) hidden states, got "
                             f"{tuple(x.shape)}")
        B, T, d = x.shape
        W, E_loc = self.world_size, self.experts_per_rank
        tokens = x.reshape(B * T, d)  # (n, d) this rank's tokens
        topk_idx, topk_weight, _ = self.gate(tokens)  # (n, K), (n, K)

        # 1. Plan: one row per (token, destination rank), sorted by destination.
        hit = destination_ranks(topk_idx, E_loc, W)  # (n, W)
        dst_of_row, token_of_row = hit.T.nonzero(as_tuple=True)  # (P,), (P,) grouped by destination
        send_counts = hit.sum(0)  # (W,) rows for each rank
        gates = torch.zeros(tokens.shape[0], self.config.n_routed_experts, dtype=topk_weight.dtype,
                            device=tokens.device).scatter_(1, topk_idx, topk_weight)  # (n, E)
        row_gates = gates.view(-1, W, E_loc)[token_of_row, dst_of_row]  # (P, E_loc) for the destination's experts

        # 2. Exchange the counts first: every rank learns how many rows it will receive from each rank.
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts, group=self.group)
        send_split, recv_split = send_counts.tolist(), recv_counts.tolist()

        # 3. Dispatch: the token vectors and, beside them, their gate weights for the receiver's experts.
        recv_x = tokens.new_empty(sum(recv_split), d)
        dist.all_to_all_single(recv_x, tokens[token_of_row].contiguous(), recv_split, send_split, group=self.group)
        recv_g = row_gates.new_empty(sum(recv_split), E_loc)
        dist.all_to_all_single(recv_g, row_gates.contiguous(), recv_split, send_split, group=self.group)

        # 4. This rank's experts on the rows they were chosen for.
        y = torch.zeros_like(recv_x)  # (R, d) partial sums, one per received row
        loads = []
        for j, expert in enumerate(self.experts):
            rows = (recv_g[:, j] != 0).nonzero(as_tuple=True)[0]
            loads.append(rows.numel())
            if rows.numel():
                y.index_add_(0, rows, (expert(recv_x[rows]) * recv_g[rows, j, None]).to(y.dtype))

        # 5. Combine: the partial sums go back the way the rows came; the sender adds them per token.
        back = tokens.new_empty(sum(send_split), d)
        dist.all_to_all_single(back, y, send_split, recv_split, group=self.group)
        out = torch.zeros_like(tokens).index_add_(0, token_of_row, back)  # (n, d)
        if self.shared_experts is not None:
            out = out + self.shared_experts(tokens)  # local: never crosses the network
        self.last_send_counts = send_counts.cpu()
        self.last_expert_loads = torch.tensor(loads)
        self.last_received = int(sum(recv_split))
        return out.view(B, T, d)


# ------------------------------------------------------------------------------ processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_backend(world_size: int) -> str:
    """``nccl`` when CUDA has a GPU for every rank, else ``gloo`` (CPU)."""
    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world_size else "gloo"


def rank_device(backend: str | None = None) -> torch.device:
    """This rank's device: its own GPU under nccl (LOCAL_RANK or the global rank), else the CPU."""
    backend = backend or (dist.get_backend() if dist.is_initialized() else "gloo")
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank() if dist.is_initialized() else 0))
        return torch.device("cuda", local)
    return torch.device("cpu")


def _entry(rank: int, world_size: int, port: int, backend: str, result_dir: str, fn: Callable, args: tuple) -> None:
    # The ranks' own prints and library warnings go to a log file, not into the caller's notebook cell.
    log = os.open(Path(result_dir) / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120))
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(result_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable, world_size: int, *args: Any, backend: str | None = None) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` new local processes joined in one process group.

    ``fn`` must be a module-level function of an importable module (the spawn start method imports it
    afresh in each process; a function defined in a notebook cannot be). Each process uses one thread.
    Returns the list of what each rank returned (tensors, numbers, lists and dicts of them). A failure
    in any rank stops all of them and raises RuntimeError with that rank's traceback."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size!r}: give the number of processes, a whole number >= 1")
    if world_size > 64:
        raise ValueError(f"world_size={world_size}: start at most 64 local processes")
    if getattr(fn, "__module__", "__main__") == "__main__" or "<locals>" in getattr(fn, "__qualname__", ""):
        raise ValueError(f"{getattr(fn, '__qualname__', fn)!r} is not importable by a new process: define it at the "
                         "top level of a module (a function typed into a notebook cannot be spawned)")
    backend = backend or default_backend(world_size)
    with tempfile.TemporaryDirectory(prefix="dsv3-edu-ranks-") as tmp:
        try:
            mp.start_processes(_entry, args=(world_size, free_port(), backend, tmp, fn, args), nprocs=world_size,
                               join=True, start_method="spawn")
        except mp.ProcessRaisedException as err:
            raise RuntimeError(f"rank {err.error_index} of {world_size} failed:\n{err}") from None
        except mp.ProcessExitedException as err:
            raise RuntimeError(f"rank {err.error_index} of {world_size} died (exit code {err.exit_code}): out of "
                               f"memory, or killed. Its last output:\n{_tail(tmp, err.error_index)}") from None
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=True) for r in range(world_size)]


def _tail(folder: str, rank: int, chars: int = 2000) -> str:
    path = Path(folder) / f"rank{rank}.log"
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(none)"


# ------------------------------------------------------------------ expert parallelism, run


TOY = dict(hidden_size=32, moe_intermediate_size=16, n_routed_experts=16, num_experts_per_tok=4, n_shared_experts=1,
           n_group=1, topk_group=1)


def toy_config(world_size: int = 4, max_ranks_per_token: int | None = 2, **overrides: Any) -> ModelConfig:
    """The lesson's tiny MoE layer (16 experts, K=4, 1 shared, d=32 unless overridden), ranks as nodes."""
    return ep_config(ModelConfig.tiny(**{**TOY, **overrides}), world_size, max_ranks_per_token)


def toy_layer(world_size: int = 4, max_ranks_per_token: int | None = 2, n_tokens: int = 64, seed: int = 0,
              skew: float = 1.0, **overrides: Any) -> tuple[MoE, torch.Tensor]:
    """A seeded :func:`toy_config` layer and (1, n_tokens, d) tokens. ``skew`` adds a common direction to
    the tokens, so some experts are hotter than others (a trained model's loads are uneven too). The
    weights do not depend on ``world_size`` or M: only the routing rule does."""
    config = toy_config(world_size, max_ranks_per_token, **overrides)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    moe = MoE(config).eval()
    with torch.no_grad():
        moe.gate.weight.copy_(torch.randn(config.n_routed_experts, config.hidden_size, generator=g)
                              / config.hidden_size ** 0.5)
    direction = torch.randn(config.hidden_size, generator=g)
    x = torch.randn(1, n_tokens, config.hidden_size, generator=g) + skew * direction
    return moe, x


def _expert_parallel_rank(rank: int, world_size: int, cases: list[tuple[ModelConfig, dict, torch.Tensor]],
                          ) -> list[dict[str, Any]]:
    device = rank_device()
    results = []
    for config, state, x in cases:
        full = MoE(config)
        full.load_state_dict(state)
        layer = ExpertParallelMoE(config).load_from(full).to(device).eval()
        mine = x.tensor_split(world_size, dim=1)[rank].to(device)  # this rank's shard of the tokens (1, n_r, d)
        with torch.no_grad():
            out = layer(mine)
        results.append({"out": out.cpu(), "send_counts": layer.last_send_counts,
                        "expert_loads": layer.last_expert_loads, "received": layer.last_received,
                        "backend": dist.get_backend()})
    return results


class EPRun(NamedTuple):
    """What :func:`run_expert_parallel` measured, gathered from every rank."""

    output: torch.Tensor  # (1, N, d) the EP layer's output, shards put back in order
    reference: torch.Tensor  # (1, N, d) the single-process MoE on the same weights and tokens
    max_abs_diff: float
    bytes_sent: torch.Tensor  # (W, W) measured dispatch bytes, rank s (row) -> rank t (column)
    bytes_formula: torch.Tensor  # (W, W) dispatch_bytes() from the single-process routing
    bytes_bound: int  # sum over ranks of max_dispatch_bytes
    rank_loads: torch.Tensor  # (W,) token-expert pairs each rank's experts computed
    expert_loads: torch.Tensor  # (E,) the same per expert
    received: list[int]  # rows each rank received
    max_ranks_per_token: int | None  # M (None: routed without the node limit)
    backend: str


def _check_case(moe: MoE, x: torch.Tensor, world_size: int) -> ModelConfig:
    if not isinstance(moe, MoE):
        raise ValueError(f"expected a dsv3_edu.moe.MoE layer, got {type(moe).__name__}")
    config = _config_of(moe)
    check_world_size(world_size, config.n_routed_experts)
    if config.n_group not in (1, world_size):
        raise ValueError(f"the layer routes with n_group={config.n_group} groups but runs on {world_size} ranks: "
                         "with ranks as nodes use n_group = world size (dsv3_edu.distributed.ep_config), or 1 "
                         "for no node limit")
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[0] != 1 or x.shape[-1] != config.hidden_size:
        raise ValueError(f"x must be (1, N, {config.hidden_size}) tokens, got {tuple(getattr(x, 'shape', ()))}")
    if x.shape[1] < world_size:
        raise ValueError(f"{x.shape[1]} tokens cannot give each of {world_size} ranks a shard: use more tokens")
    return config


def run_expert_parallel_many(cases: list[tuple[MoE, torch.Tensor]], world_size: int, backend: str | None = None,
                             ) -> list[EPRun]:
    """:func:`run_expert_parallel` for several (layer, tokens) pairs in one set of processes (starting
    processes costs seconds; running a tiny layer costs milliseconds)."""
    configs = [_check_case(moe, x, world_size) for moe, x in cases]
    payload = [(config, {k: v.detach().cpu().clone() for k, v in moe.state_dict().items()}, x.detach().cpu())
               for config, (moe, x) in zip(configs, cases)]
    per_rank = spawn(_expert_parallel_rank, world_size, payload, backend=backend)
    runs = []
    for i, (config, (moe, x)) in enumerate(zip(configs, cases)):
        results = [r[i] for r in per_rank]
        out = torch.cat([r["out"] for r in results], dim=1)
        was_training = moe.training
        moe.eval()
        with torch.no_grad():
            ref = moe(x)
            topk_idx, _, _ = moe.gate(x.reshape(-1, config.hidden_size))
        moe.train(was_training)
        per = config.n_routed_experts // world_size
        d, element = config.hidden_size, x.element_size()
        measured = torch.stack([r["send_counts"].long() for r in results]) * d * element
        shards = [s.shape[1] for s in x.tensor_split(world_size, dim=1)]
        M = config.topk_group if config.n_group == world_size and world_size > 1 else None
        expert_loads = torch.cat([r["expert_loads"] for r in results])
        runs.append(EPRun(out, ref, float((out - ref).abs().max()), measured,
                          dispatch_bytes(topk_idx, world_size, d, per, element),
                          sum(max_dispatch_bytes(n, config.num_experts_per_tok, world_size, d, M, element)
                              for n in shards),
                          rank_loads(expert_loads, world_size), expert_loads, [r["received"] for r in results],
                          M, results[0]["backend"]))
    return runs


def run_expert_parallel(moe: MoE, x: torch.Tensor, world_size: int, backend: str | None = None) -> EPRun:
    """Spawn ``world_size`` processes, split ``moe``'s experts and the tokens ``x`` (1, N, d) over them, run
    the expert-parallel forward and compare it with ``moe(x)`` on one process."""
    return run_expert_parallel_many([(moe, x)], world_size, backend)[0]


def _config_of(moe: MoE) -> ModelConfig:
    config = getattr(moe, "config", None)
    if config is not None:
        return config
    g = moe.gate
    shared = moe.shared_experts
    inter = moe.experts[0].gate_proj.out_features
    return ModelConfig.tiny(hidden_size=moe.hidden_size, moe_intermediate_size=inter,
                            n_routed_experts=g.n_routed_experts, num_experts_per_tok=g.top_k, n_group=g.n_group,
                            topk_group=g.topk_group, routed_scaling_factor=g.routed_scaling_factor,
                            norm_topk_prob=g.norm_topk_prob,
                            n_shared_experts=0 if shared is None else shared.gate_proj.out_features // inter)


def off_diagonal(matrix: torch.Tensor) -> int:
    """Sum of a (W, W) byte matrix without its diagonal: what crosses between ranks."""
    return int(matrix.sum() - matrix.diagonal().sum())


# ---------------------------------------------------------------------- data parallelism


class DistContext(NamedTuple):
    rank: int
    world_size: int
    device: torch.device
    backend: str


def init_from_env(device: str = "auto") -> DistContext | None:
    """Join the process group ``torchrun`` describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT); None when not started by torchrun. Already initialized (``spawn``): use that group.

    The backend is ``nccl`` when the rank trains on CUDA, ``gloo`` otherwise."""
    if dist.is_initialized():
        backend = dist.get_backend()
        return DistContext(dist.get_rank(), dist.get_world_size(), rank_device(backend), backend)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    cuda = device == "cuda" or device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
    if cuda:
        local, per_node = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        if torch.cuda.device_count() < per_node:
            raise ValueError(f"{per_node} processes on this machine but {torch.cuda.device_count()} GPU(s): nccl "
                             "needs one GPU per process. Use --nproc_per_node at most the GPU count, or --device cpu")
        torch.cuda.set_device(local)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=300))
    return DistContext(dist.get_rank(), dist.get_world_size(), rank_device(backend), backend)


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and outside a process group): the one rank that writes files and prints."""
    return world()[0] == 0


def on_main_first(fn: Callable, *args: Any) -> Any:
    """``fn(*args)`` on rank 0 alone (checks and deletions of a run folder), its result or its exception
    then handed to every rank, so all ranks go on, or all stop with the same error. Outside a group: a call."""
    rank, size = world()
    if size == 1:
        return fn(*args)
    box: list[Any] = [None]
    if rank == 0:
        try:
            box = [("ok", fn(*args))]
        except Exception as err:  # every rank raises it below
            box = [("error", err)]
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value


def check_global_batch(global_batch: int, world_size: int) -> int:
    """Sequences per rank, or a ValueError when the global batch does not split evenly."""
    if global_batch % world_size:
        lower = global_batch - global_batch % world_size
        raise ValueError(f"the global batch of {global_batch} sequences does not split over {world_size} ranks: "
                         f"use a multiple of {world_size} (--batch-size {lower or world_size} or "
                         f"{lower + world_size}), or another number of processes")
    return global_batch // world_size


def shard_batch(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous slice of a global batch (B, ...): rows rank*B/W ... (rank+1)*B/W - 1."""
    per = check_global_batch(batch.shape[0], world_size)
    return batch[rank * per:(rank + 1) * per]


@torch.no_grad()
def all_reduce_loads(model: nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Sum every MoE layer's ``tokens_per_expert`` over the ranks: the load of the global batch.

    Call it before ``balance.update_bias``: then every rank takes the same sign step and the biases
    stay equal. Without it each rank steers by its own shard and the biases drift apart."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    if not layers:
        return
    counts = torch.stack([m.tokens_per_expert for m in layers])  # (L, E) one collective for all layers
    dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
    for m, c in zip(layers, counts):
        m.tokens_per_expert.copy_(c)


def _data_parallel_rank(rank: int, world_size: int, model_config: ModelConfig, runs: list[dict[str, Any]],
                        ) -> list[dict[str, Any]]:
    from .train import train  # train imports this module

    results = []
    for kwargs in runs:
        model, history = train(model_config, progress=False, **kwargs)
        results.append({"state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                        "history": history})
    return results


def run_data_parallel(model_config: ModelConfig, runs: list[dict[str, Any]], world_size: int = 2,
                      backend: str | None = None) -> list[list[dict[str, Any]]]:
    """Train data-parallel on ``world_size`` spawned processes, as ``torchrun`` would.

    ``runs`` is a list of keyword arguments for ``dsv3_edu.train.train`` (``train_config``, ``sync_loads``,
    ``out_dir``, ``resume``, ``stop_at``, ...), run one after the other in the same processes. Returns, per
    rank, per run, ``{"state": the model's state_dict, "history": its history}`` (rank 0's history also
    has the evaluations)."""
    if not runs or not all(isinstance(r, dict) for r in runs):
        raise ValueError("runs: give a list of keyword-argument dicts for dsv3_edu.train.train, one per run")
    for r in runs:
        if "train_config" not in r:
            raise ValueError("each run needs a train_config (dsv3_edu.train.TrainConfig)")
        check_global_batch(r["train_config"].batch_size, world_size)
    return spawn(_data_parallel_rank, world_size, model_config, runs, backend=backend)
