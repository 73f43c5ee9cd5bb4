"""Train, test the best checkpoint, write metrics.json.

    python train.py                                   # U-Net on the built-in synthetic set
    python train.py -m model=unet,resunet,linknet34   # a sweep: one run directory per model
    python train.py data=monuseg data.root=../shared/data/monuseg trainer=gpu
    python train.py hydra.run.dir=logs/runs/<run> resume=true     # continue a killed run

Exit status: 0 done, 2 a problem with the input (one line each, no traceback), 1 a bug.
"""

import hydra
from omegaconf import DictConfig

from nucseg.cli import exit_with_status, run_task
from nucseg.utils.resolvers import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Returns the best validation value of ``optimized_metric``, what a Hydra sweeper maximises."""
    from nucseg.pipeline import optimized_metric, train  # after composition, so a wrong option fails at once

    return run_task(lambda: optimized_metric(train(cfg)))


if __name__ == "__main__":
    exit_with_status(main)
