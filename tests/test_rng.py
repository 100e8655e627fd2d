"""rng.py: seeds per training step, and per-item draws that a data-parallel process slices."""

import pytest
import torch

from diffusion_notes.device import make_generator, randn
from diffusion_notes.rng import (
    _splitmix64,
    batch_shard,
    current_shard,
    per_item_rand,
    per_item_randint,
    per_item_randn,
    shard_rows,
    step_generator,
    step_seed,
)


def test_splitmix64_gives_the_reference_outputs():
    # Vigna's splitmix64.c from state 0: the first two outputs (the state advances by the golden gamma)
    assert _splitmix64(0) == 0xE220A8397B1DCDAF
    assert _splitmix64(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4


def test_step_seeds_are_fixed_63_bit_numbers_that_differ_by_seed_step_and_stream():
    # pinned: a resumed run must draw what the interrupted one would have, in any process and version
    assert step_seed(0, 0) == 1279368494785126216
    assert step_seed(1234, 5678, stream=2) == 755785920755526106
    seeds = {step_seed(s, t, k) for s in range(4) for t in range(100) for k in range(3)}
    assert len(seeds) == 4 * 100 * 3 and all(0 <= x < 2**63 for x in seeds)


def test_step_generator_is_a_cpu_generator_seeded_with_the_step_seed():
    g = step_generator(3, 7, stream=1)
    assert g.device == torch.device("cpu")
    seeded = torch.Generator().manual_seed(step_seed(3, 7, 1))
    assert torch.equal(torch.rand(5, generator=g), torch.rand(5, generator=seeded))


def test_outside_a_shard_the_per_item_draws_are_torch_s_own_calls():
    assert current_shard() is None
    assert torch.equal(per_item_rand(6, make_generator(1)), torch.rand(6, generator=make_generator(1)))
    assert torch.equal(per_item_randint(0, 50, 6, make_generator(1)),
                       torch.randint(0, 50, (6,), generator=make_generator(1)))
    got = per_item_randn((6, 3), make_generator(1), dtype=torch.float64)
    assert torch.equal(got, randn((6, 3), make_generator(1), dtype=torch.float64)) and got.dtype == torch.float64


def test_inside_a_shard_each_process_keeps_its_rows_of_the_global_draw():
    N = 24
    rows = [shard_rows(N, 3, r) for r in range(3)]
    assert [(s.start, s.stop) for s in rows] == [(0, 8), (8, 16), (16, 24)]
    whole = per_item_randn((N, 5), make_generator(2))  # (N, 5)
    parts = []
    for s in rows:
        with batch_shard(s.start, s.stop, s.total):
            parts.append(per_item_randn((s.size, 5), make_generator(2)))  # (N / 3, 5)
    assert torch.equal(torch.cat(parts), whole)


def test_a_shard_refuses_draws_for_another_batch_size_and_bad_bounds():
    with batch_shard(0, 4, 8), pytest.raises(ValueError, match=r"holds rows \[0, 4\)"):
        per_item_rand(8)
    with pytest.raises(ValueError, match="0 <= start < stop <= total"):
        with batch_shard(4, 4, 8):
            pass
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        shard_rows(10, 4, 0)
    with pytest.raises(ValueError, match="needs a batch dimension"):
        per_item_randn(())
