"""Cost of one NNrelief scoring pass on CPU, relative to a plain forward pass of the same model.

For each model (LeNet-5 on 1x28x28, VGG-like on 3x32x32, and torchvision's ResNet-50, MobileNetV2 and ViT-B/16
on 3x224x224; 10 classes) and each conv norm ("fro", "fro-mean", "l1"), on N random images (torch.rand, seed 0; N =
1000 for the first two, 256 for the torchvision models, unless --n says otherwise), it measures:

- forward: one eval-mode forward over the N images under torch.no_grad(), in batches of 250;
- pass: one ``nnrelief.prune(model, images, conv_norm=norm)`` with the default alphas (it too forwards by 250);
- compact: ``compact(apply_masks(copy.deepcopy(model), masks), masks, images[:250])`` with the pass's masks;
- whole: the whole prune pass of a pruning run, pass then compact, timed together (one prune followed by one compact
  per timed run, the median of their sums);
- peak: the resident set size during the first pass, sampled from /proc/self/statm every 5 ms by a background
  thread, minus the RSS just before that pass (ru_maxrss is a lifetime peak, already raised by the forward).

Timings are medians over --repeats runs after one warm-up; the first pass and compact are the warm-up (and the
memory sample), and where that pass is slower than SLOW_PASS_S, pass, compact and whole are timed by that single run
alone. Each (model, norm) runs in a fresh subprocess (``scoring.py --one MODEL NORM`` prints JSON), so that the memory
figures do not mix. The targets, the same for pass/forward and whole/forward, are printed with whether each is met;
a missed target does not make the command fail.

    python bench/scoring.py                                  # LeNet-5 and VGG-like, a few minutes on 2 cores
    python bench/scoring.py --models resnet50 mobilenet_v2 vit_b_16 --repeats 1    # about an hour on 2 cores
    python bench/scoring.py --models lenet5 --norms l1 fro --n 500 --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch
from machine import add_threads_option, describe  # bench/machine.py, next to this file

from relief import nnrelief
from relief.compact import compact
from relief.masks import apply_masks
from relief.models import build

MODELS = {  # name -> (architecture for relief.models.build, input shape, default N)
    "lenet5": ("lenet5", (1, 28, 28), 1000),
    "vgg-like": ("vgg-like", (3, 32, 32), 1000),
    "resnet50": ("torchvision:resnet50", (3, 224, 224), 256),
    "mobilenet_v2": ("torchvision:mobilenet_v2", (3, 224, 224), 256),
    "vit_b_16": ("torchvision:vit_b_16", (3, 224, 224), 256),
}
DEFAULT_MODELS = ("lenet5", "vgg-like")
NORMS = ("fro", "fro-mean", "l1")
TARGETS = {"fro": 10.0, "fro-mean": 3.0, "l1": 3.0}  # pass/forward and whole/forward
BATCH = 250
SLOW_PASS_S = 30.0
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES


class PeakRss:
    """Within the block, samples the RSS every ``interval`` seconds; ``increase`` is the peak minus the RSS before."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.increase = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.increase = max(self.increase, _rss_bytes() - self.baseline)

    def __enter__(self) -> PeakRss:
        self.baseline = _rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.increase = max(self.increase, _rss_bytes() - self.baseline)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    return statistics.median(_seconds(fn) for _ in range(repeats))


def measure(model_name: str, norm: str, n: int, repeats: int) -> dict:
    """The measurements of one (model, norm), in seconds and MiB."""
    architecture, shape, default_n = MODELS[model_name]
    torch.manual_seed(0)
    model = build(architecture, 10, shape).eval()
    images = torch.rand(n or default_n, *shape)

    def forward():
        with torch.no_grad():
            for batch in images.split(BATCH):
                model(batch)

    def prune():
        return nnrelief.prune(model, images, conv_norm=norm)

    def compact_of(masks):
        return compact(apply_masks(copy.deepcopy(model), masks), masks, images[:BATCH])

    def whole() -> tuple[float, float]:
        """One prune + compact, one after the other as a pruning run does them: (pass s, compact s)."""
        start = time.perf_counter()
        masks = prune()
        pruned = time.perf_counter()
        compact_of(masks)
        return pruned - start, time.perf_counter() - pruned

    forward_s = _median_seconds(forward, repeats)
    with PeakRss() as rss:
        start = time.perf_counter()
        masks = prune()
        first_s = time.perf_counter() - start
    first_compact_s = _seconds(lambda: compact_of(masks))  # the warm-up of compact
    runs = [(first_s, first_compact_s)] if first_s > SLOW_PASS_S else [whole() for _ in range(repeats)]
    return {
        "forward_s": forward_s,
        "pass_s": statistics.median(pass_s for pass_s, _ in runs),
        "pass_runs": len(runs),
        "compact_s": statistics.median(compact_s for _, compact_s in runs),
        "whole_s": statistics.median(pass_s + compact_s for pass_s, compact_s in runs),
        "peak_mib": rss.increase / 2**20,
    }


def _report(args) -> None:
    print(
        f"# {describe(args.threads)}, "
        f"N={args.n or 'per model'} images, forward batches of {BATCH}, median of {args.repeats} after 1 warm-up, "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )
    print("# peak MiB: RSS sampled from /proc/self/statm every 5 ms during the first pass, minus the RSS before it")
    header = (
        "model",
        "N",
        "conv_norm",
        "forward s",
        "pass s",
        "pass/forward x",
        "compact s",
        "compact/forward x",
        "whole s",
        "whole/forward x",
        "target x",
        "pass met",
        "whole met",
        "peak MiB",
    )
    widths = [max(len(title), 9) for title in header]
    print("  ".join(title.rjust(width) for title, width in zip(header, widths)), flush=True)
    single = []
    for model_name in args.models:
        for norm in args.norms:
            command = [
                sys.executable,
                __file__,
                "--one",
                model_name,
                norm,
                "--n",
                str(args.n or 0),
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
            ]
            result = json.loads(subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout)
            ratio = result["pass_s"] / result["forward_s"]
            whole_ratio = result["whole_s"] / result["forward_s"]
            if result["pass_runs"] == 1:
                single.append(f"{model_name}/{norm}")
            row = (
                model_name,
                str(args.n or MODELS[model_name][2]),
                norm,
                f"{result['forward_s']:.3f}",
                f"{result['pass_s']:.3f}",
                f"{ratio:.2f}",
                f"{result['compact_s']:.3f}",
                f"{result['compact_s'] / result['forward_s']:.2f}",
                f"{result['whole_s']:.3f}",
                f"{whole_ratio:.2f}",
                f"<= {TARGETS[norm]:g}",
                "yes" if ratio <= TARGETS[norm] else "NO",
                "yes" if whole_ratio <= TARGETS[norm] else "NO",
                f"{result['peak_mib']:.1f}",
            )
            print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)), flush=True)
    if single:
        print(f"# pass slower than {SLOW_PASS_S:g} s, timed by its single (first) run: {', '.join(single)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=0, help="pruning images (default: 1000, or 256 for torchvision's)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(DEFAULT_MODELS))
    parser.add_argument("--norms", nargs="+", choices=NORMS, default=list(NORMS))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (default 3)")
    add_threads_option(parser)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "NORM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(*args.one, args.n, args.repeats)))
    else:
        _report(args)


if __name__ == "__main__":
    main()
