"""Philox4x32-10 and cuRAND's Box-Muller (`practice/webui/rng_philox.py`): the web UI's "NV" noise source."""

import math

import numpy as np
import pytest
import torch

from diffusion_notes.practice.webui.rng_philox import (
    TWO_POW32_INV,
    TWO_POW32_INV_2PI,
    PhiloxGenerator,
    box_muller,
    philox4x32,
    seed_key,
)

# Random123's published known-answer vectors, tests/kat_vectors of github.com/DEShawResearch/random123
# (commit 9545ff6, the "philox4x32" lines): rounds, counter c0..c3, key k0 k1, expected output words.
KAT = [
    (7, "00000000 00000000 00000000 00000000", "00000000 00000000", "5f6fb709 0d893f64 4f121f81 4f730a48"),
    (7, "ffffffff ffffffff ffffffff ffffffff", "ffffffff ffffffff", "5207ddc2 45165e59 4d8ee751 8c52f662"),
    (7, "243f6a88 85a308d3 13198a2e 03707344", "a4093822 299f31d0", "4dfccaba 190a87f0 c47362ba b6b5242a"),
    (10, "00000000 00000000 00000000 00000000", "00000000 00000000", "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    (10, "ffffffff ffffffff ffffffff ffffffff", "ffffffff ffffffff", "408f276d 41c83b0e a20bc7c6 6d5451fd"),
    (10, "243f6a88 85a308d3 13198a2e 03707344", "a4093822 299f31d0", "d16cfe09 94fdcceb 5001e420 24126ea1"),
]

# torch.manual_seed(0); torch.randn(3, 4, device="cuda"), as the docstring of the web UI's
# modules/rng_philox.py gives it (its "Expected output" of Generator(seed=0).randn((3, 4))).
CUDA_SEED0_3x4 = [[-0.92466259, -0.42534415, -2.6438457, 0.14518388],
                  [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
                  [-1.07454231, -0.36314407, -1.67105067, 2.26550497]]


def words(text):
    return np.array([[int(w, 16)] for w in text.split()], dtype=np.uint32)  # (k, 1)


@pytest.mark.parametrize("rounds, counter, key, expected", KAT)
def test_philox4x32_known_answers(rounds, counter, key, expected):
    """Random123's kat_vectors for philox4x32 (R = 7 and 10); the web UI's rng_philox.philox4_32 computes the same."""
    out = philox4x32(words(counter), words(key), rounds)  # (4, 1)
    assert [f"{int(w):08x}" for w in out[:, 0]] == expected.split()


def test_many_counters_at_once_equal_one_at_a_time():
    """The vectorised rounds (4, N) give each column its own Philox output, as rng_philox.philox4_32 does."""
    counters = np.concatenate([words(c) for _, c, _, _ in KAT[3:]], axis=1)  # (4, 3)
    keys = np.concatenate([words(k) for _, _, k, _ in KAT[3:]], axis=1)  # (2, 3)
    out = philox4x32(counters, keys)
    assert [[f"{int(w):08x}" for w in out[:, j]] for j in range(3)] == [e.split() for *_, e in KAT[3:]]


def test_seed_is_the_key_low_word_first():
    """rng_philox.Generator.randn fills a uint64 key with the seed and views it as two uint32: low, high."""
    assert seed_key(0x0123456789ABCDEF, 2).tolist() == [[0x89ABCDEF] * 2, [0x01234567] * 2]
    for bad in (-1, 2**64, 1.5, True):
        with pytest.raises(ValueError, match="Philox seed"):
            seed_key(bad, 1)


def test_first_normal_of_seed_0_worked_by_hand():
    """rng_philox.box_muller on the first counter of seed 0, which is Random123's all-zero vector (6627e8d5, e169c58d).

    u = (x + 1/2) 2^-32 and v = 2 pi (y + 1/2) 2^-32 with cuRAND's float32 constants, z = sqrt(-2 ln u) sin v.
    """
    x, y = 0x6627E8D5, 0xE169C58D
    assert TWO_POW32_INV == float(np.float32(2.0**-32))
    u = x * TWO_POW32_INV + TWO_POW32_INV / 2  # 0.399046...
    v = y * TWO_POW32_INV_2PI + TWO_POW32_INV_2PI / 2  # 5.53247...
    z = math.sqrt(-2 * math.log(u)) * math.sin(v)
    assert abs(u - 0.3990464707) < 1e-9 and abs(v - 5.5324717241) < 1e-9
    assert box_muller(np.array([x], np.uint32), np.array([y], np.uint32))[0] == np.float32(z)
    assert PhiloxGenerator(0).randn((1,))[0] == np.float32(z)
    assert abs(z - CUDA_SEED0_3x4[0][0]) < 1e-6  # what the GPU gave


def test_seed_0_draws_what_cuda_draws():
    """rng_philox.Generator(0).randn((3, 4)) against the CUDA numbers its docstring gives: within 1e-6.

    (The CPU copy rounds v with cuRAND's float32 constant for 2 pi 2^-32; the GPU's float32 sine
    differs from the float64 one in the seventh digit.)
    """
    np.testing.assert_allclose(PhiloxGenerator(0).randn((3, 4)), CUDA_SEED0_3x4, atol=1e-6, rtol=0)


def test_each_draw_moves_the_offset_by_one():
    """rng_philox.Generator.randn: counter (offset, 0, i, 0), offset + 1 after each call; words 0 and 1 kept."""
    g = PhiloxGenerator(31337)
    first, second = g.randn((2, 3)), g.randn((6,))
    counter = np.zeros((4, 6), np.uint32)
    counter[2] = np.arange(6)
    for offset, draw in ((0, first), (1, second)):
        counter[0] = offset
        out = philox4x32(counter, seed_key(31337, 6))
        assert np.array_equal(draw.reshape(-1), box_muller(out[0], out[1]))
    assert g.offset == 2 and not np.array_equal(first.reshape(-1), second)
    assert draw.dtype == np.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: compares with torch's own GPU generator")
@pytest.mark.parametrize("seed", [0, 1, 31337, 2**32 - 1 + 31337])
@pytest.mark.parametrize("shape", [(4, 8, 8), (3, 4), (4, 64, 64)])
def test_nv_source_equals_torch_randn_on_cuda(seed, shape):
    """The web UI's rng_philox.Generator: "same outputs as torch.randn(..., device='cuda') on CPU"; three draws."""
    generator = torch.Generator("cuda").manual_seed(seed)
    philox = PhiloxGenerator(seed)
    for _ in range(3):
        cuda = torch.randn(shape, generator=generator, device="cuda").cpu()
        torch.testing.assert_close(torch.from_numpy(philox.randn(shape)), cuda, atol=1e-5, rtol=1e-5)
