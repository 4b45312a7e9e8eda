"""The two ways relief computes a conv layer's "fro" scores, side by side, on the layer shapes of the paper's and
torchvision's models: from Gram matrices of the input patches (``_fro_sum_by_grams``) and from every kernel's own
output map (``_fro_sum_by_maps``). Prints each one's seconds for one batch of random inputs (median of --repeats
after a warm-up that also computes the Gram route's kernel products), their ratio, and the route relief chooses.
The Gram route of ViT-B/32's patch embedding holds 4.8 GB of kernel pair products: what the maps route avoids.

    python bench/fro_routes.py                   # under a minute on 2 cores
    python bench/fro_routes.py --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import add_threads_option, describe  # bench/machine.py, next to this file
from torch import nn

from relief.scores import ScoreAccumulator, takes_maps_route

LAYERS = {  # name -> (layer, input batch shape)
    "LeNet-5 conv1, 5x5 at 28x28": (nn.Conv2d(1, 6, 5), (1000, 1, 28, 28)),
    "LeNet-5 conv2, 5x5 at 12x12": (nn.Conv2d(6, 16, 5), (1000, 6, 12, 12)),
    "VGG 64->64, 3x3 at 32x32": (nn.Conv2d(64, 64, 3, padding=1), (250, 64, 32, 32)),
    "VGG 512->512, 3x3 at 4x4": (nn.Conv2d(512, 512, 3, padding=1), (250, 512, 4, 4)),
    "VGG 512->512, 3x3 at 2x2": (nn.Conv2d(512, 512, 3, padding=1), (250, 512, 2, 2)),
    "ResNet stem, 7x7/2 at 224x224": (nn.Conv2d(3, 64, 7, stride=2, padding=3), (32, 3, 224, 224)),
    "MobileNetV2 depthwise 32, 3x3 at 112x112": (nn.Conv2d(32, 32, 3, padding=1, groups=32), (64, 32, 112, 112)),
    "MobileNetV2 depthwise 960, 3x3 at 7x7": (nn.Conv2d(960, 960, 3, padding=1, groups=960), (250, 960, 7, 7)),
    "ViT-B/16 patches, 16x16/16 at 224x224": (nn.Conv2d(3, 768, 16, stride=16), (32, 3, 224, 224)),
    "ViT-B/32 patches, 32x32/32 at 224x224": (nn.Conv2d(3, 768, 32, stride=32), (32, 3, 224, 224)),
}
ROUTES = ("_fro_sum_by_grams", "_fro_sum_by_maps")


def seconds(layer: nn.Conv2d, x: torch.Tensor, route: str, repeats: int) -> float:
    accumulator = ScoreAccumulator(layer, "fro")
    run = getattr(accumulator, route)
    run(x[:2])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    add_threads_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {describe(args.threads)}; seconds for one batch, median of {args.repeats}")
    print(f"{'layer':44} {'batch':>6} {'grams s':>9} {'maps s':>9} {'maps/grams':>10}  chosen")
    torch.manual_seed(0)
    for name, (layer, shape) in LAYERS.items():
        x = torch.rand(shape)
        grams, maps = (seconds(layer, x, route, args.repeats) for route in ROUTES)
        chosen = "maps" if takes_maps_route(layer, shape[-2:]) else "grams"
        print(f"{name:44} {shape[0]:>6} {grams:>9.3f} {maps:>9.3f} {maps / grams:>9.2f}x  {chosen}",
              flush=True)


if __name__ == "__main__":
    main()
