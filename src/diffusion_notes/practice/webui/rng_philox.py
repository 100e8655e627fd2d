r"""The noise `torch.randn(..., device="cuda")` draws, drawn on any device: Philox4x32-10 and Box-Muller.

    g = PhiloxGenerator(seed=0)
    g.randn((3, 4))   # the numbers torch.manual_seed(0); torch.randn(3, 4, device="cuda") gives: -0.9247, ...

On an NVIDIA GPU, torch draws normal numbers with cuRAND's Philox4x32-10, a counter-based generator:
each output is a pure function of a 128-bit counter and a 64-bit key, with no state carried from one
number to the next. Element i of a draw has the counter (offset, 0, i, 0) and the key is the seed;
each draw moves the offset on by one. Two of Philox's four 32-bit words become one normal number by
Box-Muller. The web UI's "NV" noise source computes the same thing with integer arithmetic on the
CPU, so a seed from a GPU user's infotext draws that user's noise on a laptop.

Notation (Salmon et al. 2011, Sec. 3.3): counter words c0..c3, key words k0, k1, multipliers M0, M1,
Weyl increments W0, W1; `mulhi`/`mullo` are the high and low 32 bits of a 64-bit product.
Paper: Salmon, Moraes, Dror & Shaw 2011, "Parallel random numbers: as easy as 1, 2, 3" (Random123)
"""

from __future__ import annotations

import numpy as np

M0, M1 = 0xD2511F53, 0xCD9E8D57  # Philox4x32's round multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85  # the key schedule's Weyl increments: golden ratio and sqrt(3) - 1, times 2^32
ROUNDS = 10  # Philox4x32-10: the variant cuRAND (and so torch on CUDA) uses
# the float32 constants of cuRAND's Box-Muller: 2^-32 and 2^-32 * 2 pi, each rounded to float32
TWO_POW32_INV = float(np.float32(2.3283064e-10))
TWO_POW32_INV_2PI = float(np.float32(2.3283064e-10 * 6.2831855))
_MASK32 = np.uint64(0xFFFFFFFF)


def mulhilo(a: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(mulhi, mullo): the high and low 32-bit words of the 64-bit product a * m, a of uint32, (N,) each."""
    product = a.astype(np.uint64) * np.uint64(m)  # (N,), exact: < 2^64
    return (product >> np.uint64(32)).astype(np.uint32), (product & _MASK32).astype(np.uint32)


def philox_round(counter: np.ndarray, key: np.ndarray) -> np.ndarray:
    r"""One Philox4x32 round, counter (4, N) uint32 and key (2, N) uint32 -> the new counter (4, N).

    $$(c_0, c_1, c_2, c_3) \mapsto (\mathrm{hi}(M_1 c_2) \oplus c_1 \oplus k_0,\ \mathrm{lo}(M_1 c_2),\
      \mathrm{hi}(M_0 c_0) \oplus c_3 \oplus k_1,\ \mathrm{lo}(M_0 c_0))$$

    Paper: Salmon et al. 2011, Sec. 3.3 (the Philox S-box and permutation for N = 4)
    """
    hi0, lo0 = mulhilo(counter[0], M0)
    hi1, lo1 = mulhilo(counter[2], M1)
    return np.stack([hi1 ^ counter[1] ^ key[0], lo1, hi0 ^ counter[3] ^ key[1], lo0])  # (4, N)


def philox4x32(counter: np.ndarray, key: np.ndarray, rounds: int = ROUNDS) -> np.ndarray:
    r"""Philox4x32-R: `rounds` rounds, the key bumped by the Weyl increments between rounds. (4, N) uint32.

    $$k^{(r+1)} = (k_0^{(r)} + W_0,\ k_1^{(r)} + W_1) \bmod 2^{32}$$

    Paper: Salmon et al. 2011, Sec. 3.3 (the key schedule)
    """
    counter, key = np.asarray(counter, dtype=np.uint32), np.asarray(key, dtype=np.uint32)
    for r in range(rounds):
        if r > 0:
            key = np.stack([key[0] + np.uint32(W0), key[1] + np.uint32(W1)])  # wraps mod 2^32
        counter = philox_round(counter, key)
    return counter


def box_muller(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r"""Two uint32 words -> one N(0, 1) number, as cuRAND's Box-Muller makes its first output. float32.

    $$u = (x + \tfrac12)\,2^{-32},\quad v = 2\pi\,(y + \tfrac12)\,2^{-32},\quad z = \sqrt{-2\ln u}\,\sin v$$

    The half keeps u in (0, 1), so the log is finite. The products are taken in float64 with cuRAND's
    float32 constants, then rounded to float32, as the web UI's CPU copy does; cuRAND's own float32
    `logf` and `sinf` can differ in the last bit or two.
    Paper: Box & Muller 1958
    """
    u = x.astype(np.float64) * TWO_POW32_INV + TWO_POW32_INV / 2  # (N,) in (0, 1)
    v = y.astype(np.float64) * TWO_POW32_INV_2PI + TWO_POW32_INV_2PI / 2  # (N,) in (0, 2 pi)
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


def seed_key(seed: int, n: int) -> np.ndarray:
    """A 64-bit seed as Philox's key, (k0, k1) = (low word, high word), repeated for n counters: (2, n)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
        raise ValueError(f"a Philox seed is an int in [0, 2^64 - 1], got {seed!r}")
    seed = int(seed)
    return np.tile(np.array([[seed & 0xFFFFFFFF], [seed >> 32]], dtype=np.uint32), (1, n))


class PhiloxGenerator:
    """Normal numbers as torch draws them on CUDA from `seed`; each `randn` call moves the offset on by one.

    A draw of n numbers uses the counters (offset, 0, i, 0), i = 0..n-1, and keeps words 0 and 1 of
    each output. This is torch's layout while every number has its own CUDA thread (a draw of up to
    about 2^18 numbers on current GPUs; a latent of 512x512 has 4 x 64 x 64 = 16,384).
    """

    def __init__(self, seed: int):
        seed_key(seed, 0)  # checks the seed
        self.seed = int(seed)
        self.offset = 0

    def randn(self, shape) -> np.ndarray:
        """N(0, 1) of `shape`, float32, then offset + 1."""
        n = int(np.prod(shape, dtype=np.int64))
        if n >= 2**32:
            raise ValueError(f"a Philox draw indexes its numbers with 32 bits, got {n} numbers")
        counter = np.zeros((4, n), dtype=np.uint32)  # (4, n)
        counter[0] = self.offset
        counter[2] = np.arange(n, dtype=np.uint32)
        self.offset += 1
        words = philox4x32(counter, seed_key(self.seed, n))  # (4, n)
        return box_muller(words[0], words[1]).reshape(shape)
