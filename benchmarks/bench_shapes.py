"""How fast is the Shapes dataset? Prints images per second for 50,000 images on one core.

Run: python benchmarks/bench_shapes.py [n]
"""

import sys
import time

import torch

from diffusion_notes.data.shapes import ShapesDataset, render

torch.set_num_threads(1)


def main(n: int = 50_000) -> None:
    dataset = ShapesDataset("train", length=n, seed=0)
    start = time.perf_counter()
    attributes = [dataset.attributes(i) for i in range(n)]
    sampled = time.perf_counter()
    images = render(attributes)  # (n, 3, 32, 32)
    drawn = time.perf_counter()
    captions = [dataset.caption(i, a) for i, a in enumerate(attributes)]
    captioned = time.perf_counter()
    print(f"{n} images {tuple(images.shape)}, {len(captions)} captions")
    print(f"  attributes: {sampled - start:6.2f} s")
    print(f"  render:     {drawn - sampled:6.2f} s")
    print(f"  images total (dataset.images path): {drawn - start:6.2f} s "
          f"= {n / (drawn - start):,.0f} images/s")
    print(f"  captions:   {captioned - drawn:6.2f} s")
    start = time.perf_counter()
    items = [dataset[i] for i in range(2_000)]
    per_item = (time.perf_counter() - start) / len(items)
    print(f"  __getitem__ one by one: {1 / per_item:,.0f} items/s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
