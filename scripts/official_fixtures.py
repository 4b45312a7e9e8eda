"""Run the authors' NNrelief code (adekhovich/NNrelief) and save what it produced as relief's test fixtures.

    git --git-dir=<bare clone of adekhovich/NNrelief> archive 13a3f84 | tar -x -C /tmp/nnrelief-official
    python scripts/official_fixtures.py --official /tmp/nnrelief-official \
        --commit 13a3f84b40b9f9ff43171c3c67c19ed03d197727 --out tests/fixtures/official

Their code is imported from ``--official`` and never copied: only its outputs are written, one ``<case>.pt`` per
network (see tests/fixtures/official/NOTE.md). Each case trains the authors' model with their own training function,
draws a pruning set, runs their pruning functions in the order their ``*_pruning`` entry points call them, and
saves, in relief's parameter names:
- ``weights``: the trained weights (float32) and BatchNorm statistics, as relief's model loads them;
- ``images``: the pruning set as uint8; the authors' code saw ``images.float() / 255``. The LeNets share theirs
  (the same draw, seed 0), in ``fashion-mnist-pruning-set.pt`` with its indices into the training set;
- ``passes``: per pruning pass, the masks their code ended with, bit-packed (:func:`pack`), plus for the conv
  networks the masks after their conv pass and the features their FC pass was scored on;
- ``shortcut_masks`` (ResNet): their per-channel masks on the residual shortcuts, which are not model parameters.

The shims below change nothing in their algorithm: a Fashion-MNIST dataset where their code loads MNIST, smaller
VGG and ResNet inputs (a VGG layout entry and a first FC layer sized to it), and num_workers=0.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
VGG_LAYOUT = [8, 8, "M", 16, 16, "M", 32, 32, "M", 64, "M"]  # VGG-like's shape, small: 16x16 inputs end at 1x1
STAND_IN_SIDE = 16


def pack(mask: torch.Tensor) -> dict:
    """A boolean mask as bits (numpy's packbits, C order) with its shape."""
    bits = np.packbits(mask.detach().cpu().numpy().astype(bool).reshape(-1))
    return {"shape": tuple(mask.shape), "bits": torch.from_numpy(bits)}


def unpack(packed: dict) -> torch.Tensor:
    count = int(np.prod(packed["shape"]))
    bits = np.unpackbits(packed["bits"].numpy(), count=count).astype(bool)
    return torch.from_numpy(bits).reshape(packed["shape"])


def _bool(mask: torch.Tensor) -> torch.Tensor:
    values = mask.detach().cpu()
    if not bool(((values == 0) | (values == 1)).all()):
        raise ValueError("an official mask holds values other than 0 and 1")
    return values != 0


# ---- the authors' code --------------------------------------------------------------------------------------------

def load_official(folder: Path):
    sys.path.insert(0, str(folder))
    import dataloaders
    import lenet_prune
    import models
    import resnet_prune
    import train
    import utils
    import vgg_prune

    return {"models": models, "train": train, "utils": utils, "dataloaders": dataloaders, "lenet": lenet_prune,
            "vgg": vgg_prune, "resnet": resnet_prune}


def fashion_mnist(root: Path):
    """torchvision's FashionMNIST from Debian's files (their get_dataset downloads MNIST)."""
    import torchvision

    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for archive in FASHION_MNIST.glob("*.gz"):
        target = raw / archive.name[:-3]
        if not target.exists():
            with gzip.open(archive) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
    transform = torchvision.transforms.ToTensor()  # as their get_dataset("mnist")
    return (torchvision.datasets.FashionMNIST(root, train=True, transform=transform, download=False),
            torchvision.datasets.FashionMNIST(root, train=False, transform=transform, download=False))


def stand_in(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated 3-channel images: a fixed random template per class plus noise, as uint8; and their labels."""
    generator = torch.Generator().manual_seed(seed)
    templates = torch.rand(10, 3, STAND_IN_SIDE, STAND_IN_SIDE, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    noise = torch.rand(count, 3, STAND_IN_SIDE, STAND_IN_SIDE, generator=generator)
    images = (0.6 * templates[labels] + 0.4 * noise).mul(255).round().to(torch.uint8)
    return images, labels


def train_one_epoch(official, net, model_name: str, loader, test_loader) -> float:
    """One epoch with their training function (Adam, lr 1e-3, weight decay 5e-4, as their defaults); test accuracy."""
    train = official["train"]
    step = {"lenet": train.train_lenet, "vgg": train.train_vgg, "resnet": train.train_resnet}[model_name]
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=5e-4)
    net, _, _ = step(loader, net, nn.CrossEntropyLoss(), optimizer, torch.device("cpu"))
    return 100 * official["utils"].accuracy(net, test_loader, torch.device("cpu"))


# ---- name maps: theirs -> relief's ---------------------------------------------------------------------------------

def lenet_weights(net) -> dict:
    state = net.state_dict()
    return {key.replace("feature_extractor.", "features."): value.clone() for key, value in state.items()}


def layer_masks(layers: nn.Module, kind: type, masks: list, prefix: str) -> dict:
    """Their masks of ``layers``' ``kind`` layers (weight, bias, weight, bias, ... in order), in relief's names."""
    found = {}
    for index, layer in enumerate(name for name, module in layers.named_children() if isinstance(module, kind)):
        found[f"{prefix}.{layer}.weight"] = _bool(masks[2 * index])
        found[f"{prefix}.{layer}.bias"] = _bool(masks[2 * index + 1])
    return found


def lenet_masks(net) -> dict:
    features = (layer_masks(net.feature_extractor, nn.Conv2d, net.feature_extractor_masks, "features")
                if hasattr(net, "feature_extractor_masks") else {})
    return {**features, **layer_masks(net.classifier, nn.Linear, net.classifier_masks, "classifier")}


def vgg_masks(net) -> dict:
    return {**layer_masks(net.features, nn.Conv2d, net.features_masks, "features"),
            **layer_masks(net.classifier, nn.Linear, net.classifier_masks, "classifier")}


def resnet_weights(net) -> dict:
    return {key.replace("linear.", "fc."): value.clone() for key, value in net.state_dict().items()}


def resnet_masks(net) -> tuple[dict, dict]:
    masks = {"conv1.weight": _bool(net.conv1_masks)}
    shortcuts = {}
    for stage, blocks in enumerate(net.layers_masks, start=1):
        for block, (conv1, conv2, shortcut) in enumerate(blocks):
            masks[f"layer{stage}.{block}.conv1.weight"] = _bool(conv1)
            masks[f"layer{stage}.{block}.conv2.weight"] = _bool(conv2)
            shortcuts[f"layer{stage}.{block}.shortcut"] = _bool(shortcut)
    masks["fc.weight"], masks["fc.bias"] = _bool(net.linear_masks[0]), _bool(net.linear_masks[1])
    return masks, shortcuts


def packed(masks: dict) -> dict:
    return {name: pack(mask) for name, mask in masks.items()}


# ---- the cases -----------------------------------------------------------------------------------------------------

def lenet_case(official, model_name: str, data_root: Path, passes: int, seed: int) -> dict:
    train_set, test_set = fashion_mnist(data_root)
    loader = torch.utils.data.DataLoader(train_set, batch_size=120, num_workers=0)  # their load_dataset, no workers
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=120, num_workers=0)
    torch.manual_seed(seed)
    net = official["utils"].init_model(model_name, torch.device("cpu"), 10)
    accuracy = train_one_epoch(official, net, "lenet", loader, test_loader)
    np.random.seed(seed)  # their get_pruning_examples(..., prune_size=1000, seed=seed), keeping the indices
    indices = np.random.permutation(train_set.data.shape[0])[:1000]
    images = train_set.data[indices].unsqueeze(1)
    x = images.float() / 255
    theirs = official["dataloaders"].get_pruning_examples(train_set, torch.device("cpu"), "mnist", 1000, seed)
    assert torch.equal(theirs, x), "the pruning set differs from their get_pruning_examples"
    if model_name == "lenet300-100":
        x = x.reshape(-1, 28 * 28)  # as their iterative_pruning does for this model
    weights = lenet_weights(net)
    results = []
    for _ in range(passes):
        net.eval()
        net = official["lenet"].lenet_pruning(net, alpha_conv=0.9, alpha_fc=0.95, x_batch=x, device=torch.device("cpu"))
        net._apply_mask()  # as their iterative_pruning does after each pass
        results.append({"masks": packed(lenet_masks(net))})
    return {"model": model_name, "weights": weights, "images": images, "indices": torch.from_numpy(indices),
            "alpha_conv": 0.9, "alpha_fc": 0.95, "test_accuracy_pct": accuracy, "passes": results}


def stand_in_loaders(seed: int):
    images, labels = stand_in(2400, seed)
    x = images.float() / 255
    train = torch.utils.data.TensorDataset(x[:2000], labels[:2000])
    test = torch.utils.data.TensorDataset(x[2000:], labels[2000:])
    return (torch.utils.data.DataLoader(train, batch_size=120), torch.utils.data.DataLoader(test, batch_size=120),
            images[2000:2250].clone())  # a copy: a view would save all 2400 images


def vgg_case(official, seed: int) -> dict:
    models = official["models"]
    models.cfg["vgg-like-small"] = VGG_LAYOUT  # their VGG class reads its layout from this table
    torch.manual_seed(seed)
    net = models.VGG("vgg-like-small", num_classes=10, device=torch.device("cpu"))
    net.classifier[1] = nn.Linear(VGG_LAYOUT[-2], 512)  # their VGG-like head expects 512 features: size it to 64
    models._weights_init(net.classifier[1])
    net.classifier_masks[0] = torch.ones(512, VGG_LAYOUT[-2])
    loader, test_loader, images = stand_in_loaders(seed)
    accuracy = train_one_epoch(official, net, "vgg", loader, test_loader)
    x = images.float() / 255
    weights = {key: value.clone() for key, value in net.state_dict().items()}
    prune = official["vgg"]
    reference = copy.deepcopy(net)
    net.eval()
    net = prune.vgg_conv_pruning(net, 0.95, x, torch.device("cpu"))  # vgg_pruning's body, step by step
    after_conv = vgg_masks(net)
    features = net.features(x).view(x.shape[0], -1)
    net = prune.vgg_fc_pruning(net, 0.95, features, torch.device("cpu"))
    net = prune.vgg_backward_pruning(net)
    reference.eval()
    reference = prune.vgg_pruning(reference, 0.95, 0.95, x, torch.device("cpu"))
    final = vgg_masks(net)
    assert all(torch.equal(final[k], v) for k, v in vgg_masks(reference).items()), "vgg_pruning differs"
    return {"model": "vgg", "layout": VGG_LAYOUT, "weights": weights, "images": images, "alpha_conv": 0.95,
            "alpha_fc": 0.95, "test_accuracy_pct": accuracy,
            "passes": [{"masks": packed(final), "after_conv": packed(after_conv), "fc_inputs": features.detach()}]}


def resnet_case(official, seed: int) -> dict:
    torch.manual_seed(seed)
    net = official["models"].resnet20(10, torch.device("cpu"))
    loader, test_loader, images = stand_in_loaders(seed)
    accuracy = train_one_epoch(official, net, "resnet", loader, test_loader)
    x = images.float() / 255
    weights = resnet_weights(net)
    prune = official["resnet"]
    reference = copy.deepcopy(net)
    net.eval()
    net = prune.resnet_conv_pruning(net, 0.95, x, 0, torch.device("cpu"))  # resnet_pruning's body, step by step
    after_conv, shortcuts_after_conv = resnet_masks(net)
    features = net.features(x)
    net = prune.resnet_fc_pruning(net, 0.99, features, 0, torch.device("cpu"))
    net = prune.resnet_backward_pruning(net)
    reference.eval()
    reference = prune.resnet_pruning(reference, 0.95, 0.99, x, torch.device("cpu"))
    final, shortcuts = resnet_masks(net)
    theirs, their_shortcuts = resnet_masks(reference)
    assert all(torch.equal(final[k], v) for k, v in theirs.items()), "resnet_pruning differs"
    assert all(torch.equal(shortcuts[k], v) for k, v in their_shortcuts.items()), "resnet_pruning differs"
    return {"model": "resnet20", "weights": weights, "images": images, "alpha_conv": 0.95, "alpha_fc": 0.99,
            "test_accuracy_pct": accuracy,
            "passes": [{"masks": packed(final), "after_conv": packed(after_conv), "fc_inputs": features.detach(),
                        "shortcut_masks": packed(shortcuts),
                        "shortcut_masks_after_conv": packed(shortcuts_after_conv)}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, required=True, help="a checkout of adekhovich/NNrelief")
    parser.add_argument("--commit", required=True, help="the commit that checkout was made from (recorded)")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "official")
    parser.add_argument("--data", type=Path, default=Path("/tmp/official-fixtures-data"),
                        help="where Fashion-MNIST is decompressed for torchvision")
    parser.add_argument("--cases", nargs="+", default=["lenet5", "lenet300-100", "vgg", "resnet20"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    official = load_official(args.official.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    pruning_set = args.out / "fashion-mnist-pruning-set.pt"
    for case in args.cases:
        start = time.perf_counter()
        if case in ("lenet5", "lenet300-100"):
            result = lenet_case(official, case, args.data, passes=2, seed=args.seed)
        elif case == "vgg":
            result = vgg_case(official, args.seed)
        else:
            result = resnet_case(official, args.seed)
        result.update(official_commit=args.commit, seed=args.seed, torch=torch.__version__)
        if case.startswith("lenet"):
            shared = {"images": result.pop("images"), "indices": result.pop("indices")}
            if pruning_set.exists():
                saved = torch.load(pruning_set)
                assert all(torch.equal(saved[k], v) for k, v in shared.items()), "the LeNets drew other sets"
            else:
                torch.save(shared, pruning_set)
        torch.save(result, args.out / f"{case}.pt")
        print(f"{case}: test accuracy {result['test_accuracy_pct']:.2f} % after 1 epoch, "
              f"{len(result['passes'])} pass(es), {time.perf_counter() - start:.0f} s, "
              f"{(args.out / f'{case}.pt').stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
