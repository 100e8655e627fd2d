"""How much cheaper is a UNet step on 8x8x4 latents than on 32x32x3 pixels, at equal UNet width?

Measures, in one run on one CPU thread, with diffusion_notes.cost.latent_vs_pixel_cost: a training
step (forward + backward + AdamW) and a sampling step (one guided call at batch 2B, plus the
decoder's cost spread over a 25-step run for the latent model), and prints the fastest of its runs and ratios.

Target (the issue): the latent step at least 8x cheaper than the pixel step.

Run: python benchmarks/latent_vs_pixel.py [repeats] [--no-64]
"""

import sys
import time

import torch

from diffusion_notes.nn.unet import UNetConfig
from diffusion_notes.stable_diffusion.cost import latent_vs_pixel_cost, pixel_config, unet_flops

torch.set_num_threads(1)
TARGET = 8.0


def verdict(ratio: float) -> str:
    return f"{ratio:5.1f}x  {'holds' if ratio >= TARGET else 'FAILS'} (target >= {TARGET:g}x)"


def main(repeats: int = 3, big_batch: bool = True) -> None:
    start = time.perf_counter()
    config = UNetConfig()
    r = latent_vs_pixel_cost(config, batch_size=16, repeats=repeats)
    print(f"UNet channels {config.channels}, attention {config.attention}: latent {r['latent_parameters']:,.0f} "
          f"parameters, pixel {r['pixel_parameters']:,.0f}; decoder {r['decoder_parameters']:,.0f}")
    flops = unet_flops(config)["total"], unet_flops(pixel_config(config))["total"]
    print(f"one forward pass of one example: latent {flops[0] / 1e6:.1f} MFLOP, pixel {flops[1] / 1e6:.1f} MFLOP "
          f"({flops[1] / flops[0]:.1f}x)")
    print(f"batch 16, fastest of {repeats} runs, torch threads {torch.get_num_threads()}")
    print(f"{'':34s} {'latent (ms)':>12s} {'pixel (ms)':>11s}   pixel / latent")
    print(f"{'training step':34s} {1e3 * r['latent_train_s']:12.1f} {1e3 * r['pixel_train_s']:11.1f}   "
          f"{verdict(r['train_ratio'])}")
    print(f"{'  + encoding the batch on the fly':34s} {1e3 * (r['latent_train_s'] + r['encode_s']):12.1f} "
          f"{'':11s}   {r['train_ratio_with_encode']:5.1f}x")
    print(f"{'sampling step (guided, batch 32)':34s} {1e3 * r['latent_sample_s']:12.1f} "
          f"{1e3 * r['pixel_sample_s']:11.1f}   {r['sample_ratio']:5.1f}x")
    print(f"{'  + decoder / 25 steps':34s} {1e3 * r['latent_sample_with_decode_s']:12.1f} {'':11s}   "
          f"{verdict(r['sample_ratio_with_decode'])}")
    print(f"decoding 16 latents once: {1e3 * r['decode_s']:.1f} ms ({1e3 * r['decode_per_step_s']:.2f} ms per step "
          f"of a 25-step run); encoding 16 images: {1e3 * r['encode_s']:.1f} ms")
    if big_batch:
        r64 = latent_vs_pixel_cost(config, batch_size=64, repeats=max(1, repeats - 1), sampling=False)
        print(f"batch 64, training step: latent {1e3 * r64['latent_train_s']:.1f} ms, pixel "
              f"{1e3 * r64['pixel_train_s']:.1f} ms, {verdict(r64['train_ratio'])}")
    print(f"total benchmark time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(int(args[0]) if args else 3, "--no-64" not in sys.argv)
