"""Samplers for whole-image evaluation under data parallelism.

Lightning gives every rank a :class:`~torch.utils.data.DistributedSampler` unless a loader has
one of its own. That sampler pads the last round with repeated items so that all ranks run the
same number of batches; for whole-image validation and test a repeated image is counted twice
by the pooled metrics. Evaluation needs no such padding (no gradients are synchronised), so the
evaluation loaders get Lightning's :class:`UnrepeatedDistributedSampler` instead: rank ``r`` of
``w`` sees images ``r, r + w, r + 2w, ...``, each image exactly once across ranks, and the
metric states are summed across ranks when they are computed.
"""

from __future__ import annotations

from collections.abc import Sized

from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Sampler


def evaluation_sampler(dataset: Sized, world_size: int, rank: int) -> Sampler[int] | None:
    """Each item once across ``world_size`` ranks, in order; ``None`` for one process.

    ``None`` leaves the loader's own sequential sampler, exactly the single-process order.

    Args:
        dataset: the evaluation data set (whole images).
        world_size: number of processes (``trainer.world_size``).
        rank: this process's global rank (``trainer.global_rank``).

    Returns:
        An :class:`UnrepeatedDistributedSampler`, or ``None`` when ``world_size`` is 1.

    Raises:
        ValueError: more ranks than images (a rank without a batch would stall the others),
            or a rank outside ``[0, world_size)``.
    """
    if world_size <= 1:
        return None
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    if len(dataset) < world_size:
        raise ValueError(
            f"{len(dataset)} evaluation images cannot be split over {world_size} processes without repeating one; "
            "use fewer devices or more validation/test images"
        )
    return UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
