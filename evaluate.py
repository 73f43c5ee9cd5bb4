"""Evaluate a trained model on the test split and write metrics.json.

    python evaluate.py run_dir=logs/runs/2026-11-25_12-00-00_unet
    python evaluate.py ckpt_path=path/to/best.ckpt 'overrides=["module.inference.tta=d4"]'
"""

import hydra
from omegaconf import DictConfig

from nucseg.utils.resolvers import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float:
    from nucseg.evaluation import evaluate
    from nucseg.pipeline import optimized_metric

    return optimized_metric(evaluate(cfg))


if __name__ == "__main__":
    main()
