"""Train, test the best checkpoint, write metrics.json.

    python train.py                                   # U-Net on the built-in synthetic set
    python train.py -m model=unet,resunet,linknet34   # a sweep: one run directory per model
    python train.py data=monuseg data.root=../shared/data/monuseg trainer=gpu
"""

import hydra
from omegaconf import DictConfig

from nucseg.utils.resolvers import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Returns test Dice, the metric a Hydra sweeper optimises."""
    from nucseg.pipeline import optimized_metric, train  # after composition, so a wrong option fails at once

    return optimized_metric(train(cfg))


if __name__ == "__main__":
    main()
