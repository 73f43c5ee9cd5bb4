"""Evaluate a trained model and write <run>/evaluations/<split>[_<overrides>].json.

    python evaluate.py logs/runs/2026-11-25_12-00-00_unet          # or run_dir=...
    python evaluate.py logs/runs/<run> split=val                   # the run's validation images
    python evaluate.py ckpt_path=path/to/best.ckpt 'overrides=["module.inference.tta=d4"]'
    python evaluate.py logs/runs/<run> data.root=/other/data tune_postprocess=true   # the data moved
    python evaluate.py logs/runs/<run> data.annotation_rule=centre # any data setting, as in train.py

Exit status: 0 done, 2 a problem with the input (one line, no traceback), 1 a bug.
"""

import sys
from pathlib import Path

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


def positional_run_dir(argv: list[str]) -> list[str]:
    """``evaluate.py RUN_DIR ...`` → ``evaluate.py run_dir=RUN_DIR ...`` (a plain existing path)."""
    return [f"run_dir={arg}" if "=" not in arg and not arg.startswith("-") and Path(arg).exists() else arg for arg in argv]


def data_settings_as_in_train(argv: list[str]) -> list[str]:
    """``data.KEY=VALUE`` → ``++data.KEY=VALUE``: conf/eval.yaml lists only ``data.root``, yet any
    data setting of the run is changed as in ``train.py`` (no ``+`` to remember)."""
    return [f"++{arg}" if arg.startswith("data.") and "=" in arg else arg for arg in argv]


if __name__ == "__main__":
    sys.argv[1:] = data_settings_as_in_train(positional_run_dir(sys.argv[1:]))
    exit_with_status(main)
