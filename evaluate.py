"""Evaluate a trained model on the test split and write metrics.json.

    python evaluate.py run_dir=logs/runs/2026-11-25_12-00-00_unet
    python evaluate.py ckpt_path=path/to/best.ckpt 'overrides=["module.inference.tta=d4"]'

Exit status: 0 done, 2 a problem with the input (one line, no traceback), 1 a bug.
"""

import hydra
from omegaconf import DictConfig

from nucseg.cli import exit_with_status, run_task
from nucseg.utils.resolvers import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from nucseg.checkpoint import CheckpointError
    from nucseg.evaluation import evaluate

    def task() -> None:
        if not (cfg.get("ckpt_path") or cfg.get("run_dir")):
            raise CheckpointError("evaluate.py needs run_dir=<run directory> or ckpt_path=<checkpoint file>")
        evaluate(cfg)

    run_task(task)


if __name__ == "__main__":
    exit_with_status(main)
