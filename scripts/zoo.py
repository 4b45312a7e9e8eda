"""NNrelief on every classification model of torchvision: one pass with "fro" and one with "fro-mean", then compact.

For each model of ``torchvision.models.list_models(module=torchvision.models)``, built by relief as
``torchvision:<name>`` with 10 classes, on N seeded random images (torch.rand, seed 0), in eval mode. The input is
the model's smallest valid square input (``SMALLEST_INPUT``) but at least 32 x 32 and, for a ViT, 2 x 2 patches:
most CNNs run down to 1 x 1, where an untrained network's signal vanishes within a few layers and one pass removes
everything, which tests nothing. The weights are torchvision's initialisation, except that a layer initialised to all
zeros (ViT's classification head) gets PyTorch's default initialisation: with an all-zero output layer one pass
removes everything too. BatchNorm's running statistics are those of the N images (one forward in training mode), as
a trained model's match its data: with the initial statistics (mean 0, variance 1) the signal of an untrained deep
network (ShuffleNet's, with PyTorch's default initialisation) shrinks to ~1e-7 of the biases, and again one pass
keeps only biases.

- forward: one forward pass of the N images (seconds, median of 3);
- pass: ``nnrelief.prune(model, images, conv_norm=norm)`` with the default alphas (seconds, one run), and pass /
  forward;
- kept: remaining weights and biases of the prunable layers, % of all of them;
- compact: ``relief.compact`` of the masked model on the same images; its parameters as % of the dense model's;
- checks: the masked output is finite, compact's output equals the masked model's (relative error = max abs
  difference / max abs masked output, at most 1e-4, both in float64: untrained pruned networks can amplify float32
  rounding far, EfficientNetV2-S's outputs reach 1e17), and compact has no more parameters than the dense model.

Each model runs in its own subprocess, under a time cap; results go to docs/zoo.json (merged with earlier runs) and
the table between the zoo markers of README.md is rewritten from it.

    python scripts/zoo.py                           # every model (hours on 2 cores; run it under nice)
    python scripts/zoo.py --models resnet18 vit_b_16 --cap 600
    python scripts/zoo.py --table                   # only rewrite the README table from docs/zoo.json
    python scripts/zoo.py --search resnet18         # find a model's smallest input (1, 2, 3, ... until one works)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "zoo.json"
README = REPO / "README.md"
NORMS = ("fro", "fro-mean")
RELATIVE_TOLERANCE = 1e-4

# The smallest square input (side, pixels) each model runs on, found with --search (torchvision 0.29). ViT's is one
# patch: its image size is a constructor argument, and the patch size must divide it.
SMALLEST_INPUT = {
    "alexnet": 63, "googlenet": 15, "inception_v3": 75, "maxvit_t": 221, "squeezenet1_0": 21, "squeezenet1_1": 17,
    "vit_b_16": 16, "vit_b_32": 32, "vit_h_14": 14, "vit_l_16": 16, "vit_l_32": 32,
    **{f"convnext_{size}": 32 for size in ("tiny", "small", "base", "large")},
    **{f"densenet{depth}": 29 for depth in (121, 161, 169, 201)},
    **{f"swin_{v}{size}": 4 for v in ("", "v2_") for size in ("t", "s", "b")},
    **{f"vgg{depth}{bn}": 32 for depth in (11, 13, 16, 19) for bn in ("", "_bn")},
}
SMALLEST_DEFAULT = 1  # every other model (strided convolutions with padding run down to 1 x 1)

# The smallest model (fewest parameters) of each family: what CI runs (tests/test_zoo.py).
FAMILIES = {
    "alexnet": "alexnet", "convnext": "convnext_tiny", "densenet": "densenet121", "efficientnet": "efficientnet_b0",
    "efficientnet_v2": "efficientnet_v2_s", "googlenet": "googlenet", "inception": "inception_v3",
    "maxvit": "maxvit_t", "mnasnet": "mnasnet0_5", "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3": "mobilenet_v3_small", "regnet_x": "regnet_x_400mf", "regnet_y": "regnet_y_400mf",
    "resnet": "resnet18", "resnext": "resnext50_32x4d", "shufflenet": "shufflenet_v2_x0_5",
    "squeezenet": "squeezenet1_1", "swin": "swin_t", "swin_v2": "swin_v2_t", "vgg": "vgg11", "vit": "vit_b_16",
    "wide_resnet": "wide_resnet50_2",
}


MINIMUM_INPUT = 32


def smallest_input(name: str) -> int:
    return SMALLEST_INPUT.get(name, SMALLEST_DEFAULT)


def input_size(name: str) -> int:
    """The side of the square input the zoo uses: the smallest valid one, but at least 32 and 2 x 2 ViT patches."""
    if name.startswith("vit_"):
        return max(2 * smallest_input(name), MINIMUM_INPUT // smallest_input(name) * smallest_input(name))
    return max(smallest_input(name), MINIMUM_INPUT)


def _untrained_but_not_degenerate(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Draw all-zero layers afresh and set BatchNorm's running statistics from ``images`` (see the module doc)."""
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and not module.weight.any():
            module.reset_parameters()
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: after one batch, that batch's statistics
    model.train()
    with torch.no_grad():
        model(images)
    model.eval()


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def check(name: str, images: int = 8, norms=NORMS) -> dict:
    """Build torchvision:<name>, run one NNrelief pass per norm and compact; the measurements and the checks."""
    from relief import models, nnrelief
    from relief.compact import compact
    from relief.graph import prunable_keys
    from relief.masks import apply_masks

    size = input_size(name)
    torch.manual_seed(0)
    model = models.build(f"torchvision:{name}", 10, (3, size, size))
    x = torch.rand(images, 3, size, size)
    _untrained_but_not_degenerate(model, x)

    def forward():
        with torch.no_grad():
            model(x)

    forward()
    forward_s = statistics.median(_seconds(forward) for _ in range(3))
    dense_params = sum(p.numel() for p in model.parameters())
    prunable = prunable_keys(model)
    result = {"model": name, "input": [3, size, size], "smallest": smallest_input(name), "images": images,
              "forward_s": forward_s,
              "dense_params": dense_params, "norms": {}}
    for norm in norms:
        start = time.perf_counter()
        masks = nnrelief.prune(model, x, conv_norm=norm)
        pass_s = time.perf_counter() - start
        masked = apply_masks(copy.deepcopy(model), masks).eval()
        with torch.no_grad():
            finite = bool(torch.isfinite(masked(x)).all())
        start = time.perf_counter()
        small = compact(masked, masks, x)
        compact_s = time.perf_counter() - start
        with torch.no_grad():  # in float64: an untrained pruned network can amplify float32 rounding (1e17 outputs)
            expected, got = masked.double()(x.double()), small.double()(x.double())
        kept = sum(int(masks[k].sum()) for k in prunable) / sum(masks[k].numel() for k in prunable)
        difference, scale = (got - expected).abs().max().item(), expected.abs().max().item()
        error = difference / scale if scale > 0 else (0.0 if difference == 0 else float("inf"))
        result["norms"][norm] = {
            "pass_s": pass_s, "pass_over_forward": pass_s / forward_s, "compact_s": compact_s,
            "kept_pct": 100 * kept, "compact_params": sum(p.numel() for p in small.parameters()),
            "compact_params_pct": 100 * sum(p.numel() for p in small.parameters()) / dense_params,
            "masked_finite": finite, "relative_error": error,
        }
    result["load_average"] = os.getloadavg()[0]  # of the machine, at the end: other work slows every timing
    return result


def problems(result: dict) -> list[str]:
    """What a result fails of the three checks (empty: all hold)."""
    found = []
    for norm, run in result["norms"].items():
        if not run["masked_finite"]:
            found.append(f"{norm}: the masked output is not finite")
        if not run["relative_error"] <= RELATIVE_TOLERANCE:
            found.append(f"{norm}: compact changes the output (relative error {run['relative_error']:.2e})")
        if run["compact_params"] > result["dense_params"]:
            found.append(f"{norm}: compact has more parameters than the dense model")
    return found


def _refused(name: str, reason: str) -> dict:
    return {"model": name, "input": [3, input_size(name), input_size(name)], "smallest": smallest_input(name),
            "refused": reason}


def _run_one(name: str, images: int, cap: float) -> dict:
    """``check`` in a subprocess under a time cap; a failure or a timeout becomes the result's reason."""
    command = [sys.executable, __file__, "--one", name, "--images", str(images)]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=cap, env=environment)
    except subprocess.TimeoutExpired:
        return _refused(name, f"not run to the end: over the time cap of {cap:.0f} s")
    if done.returncode == -signal.SIGKILL:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        return _refused(name, "killed by SIGKILL, which the kernel's out-of-memory killer sends: the run needs more "
                              f"than this machine's {memory:.0f} GiB")
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return _refused(name, lines[-1] if lines else f"exit status {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _load() -> dict:
    return {r["model"]: r for r in json.loads(RESULTS.read_text())["models"]} if RESULTS.exists() else {}


def _save(results: dict, machine: str) -> None:
    import torchvision

    RESULTS.parent.mkdir(exist_ok=True)
    document = {"torch": torch.__version__, "torchvision": torchvision.__version__, "machine": machine,
                "models": [results[name] for name in sorted(results)]}
    RESULTS.write_text(json.dumps(document, indent=1) + "\n")


def table(document: dict) -> str:
    from relief.models.zoo import names

    missing = sorted(set(names()) - {result["model"] for result in document["models"]})
    lines = [
        "Smallest input: the side of the smallest square input the model runs on; input: the one used here. "
        f"{document['machine']}; torch {document['torch']}, torchvision {document['torchvision']}; "
        f"{len(document['models'])} models; load average: the machine's (1 minute) when the model finished (other "
        "work on the machine slows both timings). Pass / forward: one NNrelief pass over the N images against one "
        "forward pass of them. Kept: remaining weights and biases of the prunable layers, % of all. Compact: "
        "parameters of the compacted model, % of the dense model's (all parameters). Checks: finite masked output, "
        f"compact output within {RELATIVE_TOLERANCE:g} (relative), compact parameters <= dense.",
        "",
        "| model | smallest input | input | N | forward s | `fro` pass / forward | `fro` kept % | `fro` compact % "
        "| `fro-mean` pass / forward | `fro-mean` kept % | `fro-mean` compact % | load average | checks |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    if missing:
        lines[1:1] = ["", f"Not run yet ({len(missing)} of {len(names())} models; `python scripts/zoo.py --models "
                      f"...` adds them): {', '.join(missing)}."]
    for result in document["models"]:
        shape = "x".join(str(v) for v in result["input"])
        if "refused" in result:
            lines.append(f"| {result['model']} | {result['smallest']} | {shape} | | | | | | | | | | "
                         f"refused: {result['refused']} |")
            continue
        cells = []
        for norm in NORMS:
            run = result["norms"][norm]
            cells += [f"{run['pass_over_forward']:.1f}", f"{run['kept_pct']:.1f}", f"{run['compact_params_pct']:.1f}"]
        failed = problems(result)
        load = f"{result['load_average']:.1f}" if "load_average" in result else ""
        lines.append(f"| {result['model']} | {result['smallest']} | {shape} | {result['images']} | "
                     f"{result['forward_s']:.3f} | "
                     + " | ".join(cells) + f" | {load} | {'; '.join(failed) if failed else 'pass'} |")
    return "\n".join(lines)


def _write_table() -> None:
    document = json.loads(RESULTS.read_text())
    text = README.read_text()
    start, end = "<!-- zoo:start -->", "<!-- zoo:end -->"
    if start not in text:
        raise SystemExit(f"README.md has no {start} ... {end} section to write the table into")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    README.write_text(f"{before}{start}\n{table(document)}\n{end}{after}")


def search(name: str, largest: int = 512) -> int | None:
    """The smallest square side (1, 2, ...) at which torchvision:<name> builds and runs."""
    from relief import models

    for size in range(1, largest + 1):
        try:
            models.build(f"torchvision:{name}", 10, (3, size, size))
            return size
        except ValueError:
            continue
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", help="torchvision model names (default: every one)")
    parser.add_argument("--images", type=int, default=8, help="N, the random images of the pass (default 8)")
    parser.add_argument("--cap", type=float, default=1800, help="seconds per model before it is stopped")
    parser.add_argument("--table", action="store_true", help="only rewrite README's table from docs/zoo.json")
    parser.add_argument("--search", nargs="+", metavar="MODEL", help="print the smallest input of these models")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.one:
        print(json.dumps(check(args.one, args.images)))
        return
    if args.search:
        for name in args.search:
            print(name, search(name), flush=True)
        return
    if not args.table:
        sys.path.insert(0, str(REPO / "bench"))
        from machine import cpu_name

        from relief.models.zoo import names

        machine = f"{cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
        results = _load()
        for name in args.models or names():
            print(f"{name} ...", end=" ", flush=True)
            results[name] = _run_one(name, args.images, args.cap)
            result = results[name]
            print(result.get("refused") or "; ".join(problems(result)) or "pass",
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
            _save(results, machine)
    _write_table()


if __name__ == "__main__":
    main()
