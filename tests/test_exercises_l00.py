"""Lesson 00 checkers: accept the solutions and explain the typical mistakes."""

from dsv3_edu.exercises import l00_welcome as ex


def run(capsys, checker, arg):
    assert checker(arg) is None  # prints only: nothing for a notebook cell to echo
    out = capsys.readouterr().out
    return out.startswith("Correct"), out


def test_active_fraction(capsys):
    want = ex.solution_active_fraction()
    assert round(want, 4) == 0.056
    ok, out = run(capsys, ex.check_active_fraction, want)
    assert ok and out.startswith("Correct")
    assert run(capsys, ex.check_active_fraction, 37.55 / 671.03)[0]
    for answer, message in ((None, "Not done yet"), (8 / 256, "ROUTED experts"), (100 * want, "percentage"),
                            (1 / want, "Upside down"), (0.1, "Not quite"), ("5%", "not str")):
        ok, out = run(capsys, ex.check_active_fraction, answer)
        assert not ok and message in out, answer


def test_moe_layer_params(capsys):
    ok, out = run(capsys, ex.check_moe_layer_params, ex.solution_moe_layer_params)
    assert ok and "11,320,164,352" in out

    def no_router(c):
        return (c.n_routed_experts + c.n_shared_experts) * 3 * c.hidden_size * c.moe_intermediate_size

    def two_matrices(c):
        return (c.n_routed_experts + c.n_shared_experts) * 2 * c.hidden_size * c.moe_intermediate_size + \
            c.n_routed_experts * c.hidden_size

    def with_bias(c):
        return ex.solution_moe_layer_params(c) + c.n_routed_experts

    def active_only(c):
        return (c.num_experts_per_tok + c.n_shared_experts) * 3 * c.hidden_size * c.moe_intermediate_size + \
            c.n_routed_experts * c.hidden_size

    def no_shared(c):
        return c.n_routed_experts * (3 * c.hidden_size * c.moe_intermediate_size + c.hidden_size)

    def stub(c):
        raise NotImplementedError

    for fn, message in ((no_router, "router is missing"), (two_matrices, "three matrices"),
                        (with_bias, "buffer"), (active_only, "ACTIVE part"), (no_shared, "shared expert"),
                        (stub, "Not done yet"), (lambda c: 1 / 0, "ZeroDivisionError"), (lambda c: 1.5, "an int")):
        ok, out = run(capsys, ex.check_moe_layer_params, fn)
        assert not ok and message in out, fn
