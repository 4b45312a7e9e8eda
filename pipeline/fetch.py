"""Stage: fetch and verify one dataset (from the configured mirrors, then its official ones), or decode the study's
own ImageFolder dataset once."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import jobs
from relief.checkpoints import write_json
from relief.data import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out", required=True, type=Path, help="where to write the dataset's folder and sizes")
    args = parser.parse_args()
    settings = jobs.runtime()
    data = settings["data"]
    loaded = load(args.dataset, data["root"], mirrors=data["mirrors"], download=data["download"],
                  val_size=data["val_size"], spec=jobs.own_dataset(args.dataset, settings))
    write_json({
        "dataset": args.dataset,
        "root": str(Path(data["root"]).expanduser().resolve()),
        "mirrors": data["mirrors"],
        "images": {"train": len(loaded.train.labels), "val": len(loaded.val.labels), "test": len(loaded.test.labels)},
        "num_classes": loaded.num_classes,
        "input_shape": list(loaded.input_shape),
    }, args.out)


if __name__ == "__main__":
    main()
