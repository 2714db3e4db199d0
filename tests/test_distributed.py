"""Expert parallelism over real processes (gloo): output = single-process MoE, bytes = formula; clear errors.

Starting processes costs seconds on 2 cores, so each spawn runs several cases at once.
"""

import pytest
import torch

from dsv3_edu import distributed as D
from dsv3_edu.bench import ep as bench_ep

torch.set_num_threads(1)


# ------------------------------------------------------------------------------ no processes


def test_dispatch_bytes_by_hand():
    # 4 tokens, 2 ranks of 2 experts; tokens 0, 1 live on rank 0, tokens 2, 3 on rank 1.
    idx = torch.tensor([[0, 1], [0, 2], [3, 2], [1, 3]])
    # token 0 -> {0}; token 1 -> {0, 1}; token 2 -> {1}; token 3 -> {0, 1}: counted once per rank, not per expert
    got = D.dispatch_bytes(idx, world_size=2, hidden_size=3, experts_per_rank=2)
    assert got.tolist() == [[2 * 12, 1 * 12], [1 * 12, 2 * 12]]
    assert D.off_diagonal(got) == 24
    assert D.max_dispatch_bytes(2, top_k=2, world_size=2, hidden_size=3) == 2 * 2 * 12
    assert D.max_dispatch_bytes(10, top_k=8, world_size=8, hidden_size=1, max_ranks_per_token=4) == 10 * 4 * 4


def test_redundancy_by_hand():
    loads = torch.tensor([10, 0, 1, 1])  # rank 0 holds experts 0, 1 (10 pairs); rank 1 holds 2, 3 (2 pairs)
    one = D.simulate_redundancy(loads, 2, 1)
    assert one.copies == [(0, 1)] and one.rank_loads_after.tolist() == [5.0, 7.0]
    assert (one.max_before, one.max_after) == (10.0, 7.0)
    two = D.simulate_redundancy(loads, 2, 2)  # one slot per rank: the second copy (expert 2) goes to rank 0
    assert two.copies == [(0, 1), (2, 0)] and two.rank_loads_after.tolist() == [5.5, 6.5]
    none = D.simulate_redundancy(loads, 2, 0)
    assert none.max_after == none.max_before == 10.0
    assert float(two.rank_loads_after.sum()) == float(loads.sum())  # copies split tokens, never add any
    with pytest.raises(ValueError, match="extra expert copies"):
        D.simulate_redundancy(loads, 2, -1)


@pytest.mark.parametrize("world_size, message", [
    (3, "not divisible by world_size=3"), (0, "at least 1 rank"), (32, "more than the 16 routed experts"),
    (2.0, "whole number"), (True, "whole number"),
])
def test_bad_world_sizes_are_explained(world_size, message):
    with pytest.raises(ValueError, match=message):
        D.check_world_size(world_size, 16)
    with pytest.raises(ValueError, match=message):
        D.toy_config(world_size, 1)


def test_node_limit_settings_are_checked():
    assert D.toy_config(4, 2).n_group == 4 and D.toy_config(4, 2).topk_group == 2
    assert D.toy_config(4, None).n_group == 1
    with pytest.raises(ValueError, match="a token may reach 1 to 4 ranks"):
        D.toy_config(4, 5)
    with pytest.raises(ValueError, match="fewer than the K=4"):
        D.toy_config(8, 1)  # 2 experts per rank, K = 4: one rank cannot hold them
    with pytest.raises(ValueError, match="at least 2 experts"):
        D.toy_config(16, 4, num_experts_per_tok=2)
    moe, x = D.toy_layer(4, 2)
    with pytest.raises(ValueError, match="n_group = world size"):
        D.run_expert_parallel(moe, x, 2)  # routed for 4 nodes, run on 2 ranks
    with pytest.raises(ValueError, match="cannot give each of 4 ranks"):
        D.run_expert_parallel(moe, x[:, :3], 4)


def test_spawn_refuses_what_a_new_process_cannot_import():
    with pytest.raises(ValueError, match="not importable"):
        D.spawn(lambda rank, world_size: rank, 2)
    with pytest.raises(ValueError, match="whole number"):
        D.spawn(D.world, 0)


def test_global_batch_split():
    batch = torch.arange(12).view(6, 2)
    assert D.shard_batch(batch, 1, 3).tolist() == [[4, 5], [6, 7]]
    assert torch.equal(torch.cat([D.shard_batch(batch, r, 2) for r in range(2)]), batch)
    with pytest.raises(ValueError, match="does not split over 4 ranks: use a multiple of 4"):
        D.shard_batch(batch, 0, 4)
    assert D.world() == (0, 1) and D.is_main()


def test_ep_layer_needs_a_process_group():
    with pytest.raises(RuntimeError, match="needs a process group"):
        D.ExpertParallelMoE(D.toy_config(2, 1))


# --------------------------------------------------------------------------------- processes


def _check_run(run, world_size, limit):
    assert run.max_abs_diff <= 1e-5, run.max_abs_diff
    torch.testing.assert_close(run.output, run.reference, rtol=0, atol=1e-5)
    assert torch.equal(run.bytes_sent, run.bytes_formula)  # measured split sizes = the formula
    assert int(run.bytes_sent.sum()) <= run.bytes_bound
    assert run.bytes_sent.shape == (world_size, world_size)
    K = 4
    assert int(run.rank_loads.sum()) == run.output.shape[1] * K  # every token-expert pair computed once
    assert run.max_ranks_per_token == limit


def test_expert_parallel_equals_single_process_on_2_ranks():
    cases = [D.toy_layer(2, 1, n_tokens=24, seed=3), D.toy_layer(2, None, n_tokens=24, seed=3)]
    limited, unlimited = D.run_expert_parallel_many(cases, 2)
    _check_run(limited, 2, 1)
    _check_run(unlimited, 2, None)
    # M = 1: all K experts of a token live on one rank, so each token is sent exactly once
    assert int(limited.bytes_sent.sum()) == 24 * 32 * 4 == limited.bytes_bound
    assert int(unlimited.bytes_sent.sum()) > int(limited.bytes_sent.sum())
    assert limited.backend == "gloo"


def test_expert_parallel_on_4_ranks_through_the_bench():
    results = bench_ep.run(world_size=4, max_ranks=2, n_tokens=64)
    assert results["max_abs_diff_vs_single_process"] <= 1e-5
    lim, unl = results["bytes_sent_node_limited"], results["bytes_sent_unlimited"]
    for b in (lim, unl):
        assert b["measured"] == b["formula"] and b["matrix"] == b["formula_matrix"]
        assert b["measured_including_own_rank"] <= b["bound_including_own_rank"]
        assert b["max_abs_diff"] <= 1e-5
    assert lim["measured"] < unl["measured"]
    assert lim["bound_including_own_rank"] == 64 * 2 * 32 * 4  # N * M * d * 4 bytes
    assert results["max_rank_load_after_redundancy"] < results["max_rank_load_before_redundancy"]
    assert sum(results["expert_loads"]) == 64 * 4


def test_bench_ep_checks_its_arguments_before_starting_processes(tmp_path, capsys):
    for argv, message in ((["--world-size", "3"], "not divisible by world_size=3"),
                          (["--json", str(tmp_path)], "is a folder"),
                          (["--world-size", "4", "--max-ranks", "9"], "a token may reach 1 to 4 ranks")):
        with pytest.raises(SystemExit):
            bench_ep.main(argv)
        assert message in capsys.readouterr().err



def test_a_failing_rank_is_reported_with_its_error():
    # check_world_size(rank=0, world_size=1) raises inside the spawned process: "at least 1 rank"
    with pytest.raises(RuntimeError, match="rank 0 of 1 failed(.|\n)*at least 1 rank"):
        D.spawn(D.check_world_size, 1)
