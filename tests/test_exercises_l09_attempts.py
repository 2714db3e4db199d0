"""Lesson 09: plausible wrong attempts, each with the words its diagnosis must contain."""

import pytest
import torch
from exercise_helpers import run

from dsv3_edu.exercises import l09_end_to_end as ex


def _cache(config, n, dtype, layers_extra=0, bytes_too=True):
    size = torch.empty((), dtype=dtype).element_size() if bytes_too else 1
    return n * (config.num_hidden_layers + layers_extra) * (config.kv_lora_rank + config.qk_rope_head_dim) * size


def _sample(logits, temperature, top_k, generator, multiply=False, use_top_k=True):
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float()
    if top_k is not None and use_top_k:
        kth = logits.topk(top_k, -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    logits = logits * temperature if multiply else logits / temperature
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


ATTEMPTS = [  # checker, attempt, words
    (ex.check_cache_bytes, lambda c, n, d: _cache(c, n, d, layers_extra=1), "MTP module's layer"),
    (ex.check_cache_bytes, lambda c, n, d: _cache(c, n, d, bytes_too=False), "number of VALUES"),
    (ex.check_busiest_experts, lambda t, d: t.loads.argmax(-1).tolist(), "over ALL domains"),
    (ex.check_busiest_experts, lambda t, d: t.domain_loads[d].argmin(-1).tolist(), "LEAST busy"),
    (ex.check_sample, lambda *a: _sample(*a, multiply=True), "divide the logits by the temperature"),
    (ex.check_sample, lambda *a: _sample(*a, use_top_k=False), "outside the top"),
]


@pytest.mark.parametrize("check,attempt,words", ATTEMPTS)
def test_wrong_attempts_get_the_right_diagnosis(capsys, check, attempt, words):
    ok, out = run(capsys, check, attempt)
    assert not ok and words in out, out
