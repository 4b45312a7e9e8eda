"""A small prune-retrain loop run as its own process, so that tests can kill it: python tests/loop_job.py OUT_DIR"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from synthetic import synthetic_dataset

from relief import models
from relief.loop import LoopConfig, run_loop
from relief.pruners import NNrelief
from relief.train import TrainConfig

SHAPE = (1, 12, 12)


def main(out_dir: str) -> None:
    run_loop(
        lambda: models.build("lenet300-100", 4, SHAPE),
        synthetic_dataset(train=3000, shape=SHAPE),
        NNrelief(alpha_fc=0.9),
        TrainConfig(epochs=2, lr=1e-3, batch_size=60),
        TrainConfig(epochs=4, lr=1e-3, batch_size=60, milestones=(2,)),
        LoopConfig(num_iters=3, rewind="init", prune_set_size=200),
        Path(out_dir),
        seed=7,
        progress=False,
    )


if __name__ == "__main__":
    main(sys.argv[1])
