"""torch's CPU `torch.randn`, written out: the noise the in-page Stable Diffusion draws
(src/diffusion_notes/stable_diffusion/web/sd_page.js).

Seed N in Chapter 13's page is `torch.Generator().manual_seed(N)` in Python: the page's
JavaScript (`TorchGenerator` in sd_page.js) runs the algorithm below, and this module is its
Python twin, so the tests (test_web_export.py, browser/test_page_model.py) can hold both
against torch. The algorithm, as torch draws a float32 tensor of n >= 16 elements on the CPU:

1. a Mersenne Twister, mt19937 (Matsumoto & Nishimura 1998), seeded by `init_genrand(seed)`:
   mt[0] = seed, mt[i] = 1812433253 (mt[i-1] ^ (mt[i-1] >> 30)) + i (mod 2^32);
2. n uniforms u = (r & (2^24 - 1)) 2^-24, one 32-bit output r each (torch's
   `uniform_real_distribution<float>`; `torch.rand` draws the same numbers);
3. torch's `normal_fill`: each block of 16 uniforms becomes 16 normals by Box-Muller on the pairs
   (i, i + 8), i < 8:  radius = sqrt(-2 log(1 - u_i)), theta = 2 pi u_{i+8},
   z_i = radius cos(theta), z_{i+8} = radius sin(theta);  when n is not a multiple of 16, 16
   fresh uniforms replace the last 16 values and that block is transformed again;
4. every operation rounded to float32, as torch's float kernels compute.

How exact: the generator's state and the uniforms are bit for bit torch's. The normals are within
about one float32 ulp (|difference| < 2e-6) of `torch.randn`'s, not bit for bit: torch takes log,
cos and sin from the CPU's kernels (vectorised approximations on x86-64 with AVX2, the C
library's `logf`, `cosf`, `sinf` on the portable path), which differ between machines in their
last bit; the twin and the page round the double-precision results instead. That is far below
what an image shows (the tests ask 2/255 per pixel of the final picture). Fewer than 16 elements
take another path in torch (not used here: a latent is 256 numbers).

Paper: Box & Muller 1958; Matsumoto & Nishimura 1998 (MT19937)
"""

from __future__ import annotations

import numpy as np

_N, _M = 624, 397
_MASK32 = 0xFFFFFFFF


class TorchCPUGenerator:
    """mt19937 as torch's CPU generator runs it: `TorchCPUGenerator(N)` is `torch.Generator().manual_seed(N)`."""

    def __init__(self, seed: int):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
            raise ValueError(f"seed must be an int in [0, 2**32 - 1], got {seed!r}")
        mt = [int(seed)]
        for i in range(1, _N):
            mt.append((1812433253 * (mt[-1] ^ (mt[-1] >> 30)) + i) & _MASK32)
        self.mt, self.index = mt, _N

    def _twist(self) -> None:
        mt = self.mt
        for k in range(_N):
            y = (mt[k] & 0x80000000) | (mt[(k + 1) % _N] & 0x7FFFFFFF)
            mt[k] = mt[(k + _M) % _N] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
        self.index = 0

    def next_uint32(self) -> int:
        """The next 32-bit output (tempered)."""
        if self.index >= _N:
            self._twist()
        y = self.mt[self.index]
        self.index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        return (y ^ (y >> 18)) & _MASK32

    def rand(self, n: int) -> np.ndarray:
        """n uniforms in [0, 1), (n,) float32: torch.rand(n, generator=g)."""
        return np.array([(self.next_uint32() & 0xFFFFFF) * 2.0**-24 for _ in range(n)], dtype=np.float32)

    def randn(self, n: int) -> np.ndarray:
        """n standard normals, (n,) float32: torch.randn(n, generator=g) for n >= 16 (see the module docstring)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 16:
            raise ValueError(f"n must be an int >= 16 (torch draws fewer another way), got {n!r}")
        z = self.rand(n)  # (n,)
        for j in range(0, n - 15, 16):
            z[j:j + 16] = box_muller_16(z[j:j + 16])
        if n % 16:
            z[n - 16:] = box_muller_16(self.rand(16))
        return z


def box_muller_16(u: np.ndarray) -> np.ndarray:
    r"""16 uniforms -> 16 normals, pairing u_i with u_{i+8}, each operation rounded to float32.

    $$r = \sqrt{-2\log(1 - u_i)}, \quad \theta = 2\pi u_{i+8}, \quad
      z_i = r\cos\theta, \quad z_{i+8} = r\sin\theta$$

    Paper: Box & Muller 1958
    """
    f32 = np.float32
    u1, u2 = f32(1) - u[:8], u[8:]  # (8,) each; 1 - u is exact in float32
    radius = np.sqrt((-2 * np.log(u1.astype(np.float64)).astype(f32)).astype(np.float64)).astype(f32)
    theta = (2.0 * np.pi * u2.astype(np.float64)).astype(f32)  # torch: 2.0f * pi<double> * u, stored as float
    cos = np.cos(theta.astype(np.float64)).astype(f32)
    sin = np.sin(theta.astype(np.float64)).astype(f32)
    return np.concatenate([radius * cos, radius * sin]).astype(f32)  # (16,)
