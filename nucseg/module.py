"""The LightningModule: one class for every architecture, loss and optimiser, all injected.

Training sees random crops; validation and test see whole images, predicted by the
sliding-window engine (:mod:`nucseg.inference`) with the same tiles, overlap and blending that
``predict.py`` uses, so validation metrics, test metrics and deployed predictions agree.

The module knows its training target (:mod:`nucseg.data.targets`): it turns logits into
probabilities the target's way (:meth:`SegmentationModule.probabilities`), scores pixels on
the foreground probability against the binary mask whatever the target, and turns one image's
probabilities into nucleus instances with the target's post-processing
(:mod:`nucseg.postprocess`), which the test scores with AJI and PQ against the true instances.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from nucseg.hardware import check_channels_last_on_cpu, resolve_channels_last
from nucseg.inference import sliding_window_predict
from nucseg.inference.settings import InferenceSettings
from nucseg.losses import CompositeLoss
from nucseg.metrics import PerImageMetrics, build_pixel_metrics
from nucseg.postprocess.tuning import aggregate_scores, instance_scores
from nucseg.postprocess.watershed import default_params, postprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TARGET_CHANNELS = {"binary": 1, "contour": 3, "distance": 2, "hv": 3}
# Instance metrics logged at test end, pooled over images and as the mean of per-image values.
LOGGED_INSTANCE_METRICS = ("aji", "aji_plus", "pq", "dq", "sq")


def target_probabilities(logits: torch.Tensor, target: str) -> torch.Tensor:
    """(B, C, H, W) probabilities of ``target``'s logits (see :meth:`SegmentationModule.probabilities`)."""
    if target == "binary":
        return torch.sigmoid(logits)
    if target == "contour":
        return torch.softmax(logits, dim=1)
    if target == "distance":
        return torch.cat([torch.sigmoid(logits[:, :1]), logits[:, 1:].clamp(0.0, 1.0)], dim=1)
    if target == "hv":
        return torch.cat([torch.sigmoid(logits[:, :1]), logits[:, 1:].clamp(-1.0, 1.0)], dim=1)
    raise ValueError(f"unknown target '{target}'; choose one of: {', '.join(TARGET_CHANNELS)}")


def target_foreground_probability(probabilities: torch.Tensor, target: str) -> torch.Tensor:
    """(B, 1, H, W) nucleus probability: channel 0, or ``1 - P(background)`` for ``contour``."""
    if target == "contour":
        return 1.0 - probabilities[:, :1]
    return probabilities[:, :1]


def loss_target(batch: Mapping[str, Any]) -> torch.Tensor:
    """The batch's ``target``; a batch without one (made by hand, binary) is scored on its ``mask``."""
    return batch["target"] if "target" in batch else batch["mask"]


class SegmentationModule(L.LightningModule):
    """Nucleus segmentation for one training target (binary, contour, distance or hv).

    Args:
        net: maps standardised (B, 3, H, W) images to (B, C, H, W) logits, C the target's
            channel count (1 binary, 3 contour, 2 distance, 3 hv).
        loss: a :class:`~nucseg.losses.CompositeLoss` (or any callable returning ``LossOutput``).
        optimizer: ``params -> Optimizer`` (a partial, e.g. from Hydra's ``_partial_: true``).
        scheduler: ``optimizer -> LRScheduler`` or ``None``; stepped per epoch.
        model_name: the name runs and tables use (``unet``, ``linknet34``...).
        inference: sliding-window options for validation, test and prediction
            (:class:`~nucseg.inference.settings.InferenceSettings` keys; the rest default).
        validation_inference: options that replace ``inference``'s during validation only, e.g.
            ``{"tta": "none"}``: validation picks the checkpoint and runs many times, so on a tight
            budget it is cheaper there; the test still uses ``inference``.
        threshold: foreground probability above which a pixel is called nucleus (pixel metrics).
        num_logged_images: validation images drawn to TensorBoard per epoch.
        channels_last: keep weights and inputs in NHWC memory order (``True``, ``False`` or
            ``"auto"``). The same arithmetic; the convolution kernels of oneDNN (CPU) and cuDNN
            (tensor cores) are faster on it: training on the 2-core CPU runs 1.2–1.4× faster in
            float32 and 2.3–3.4× with bf16 autocast (docs/measurements.md). On CPU, torch 2.14's
            oneDNN crashes in the backward pass of 1×1 stride-2 convolutions with 2–8 input
            channels in this layout: ``auto`` (:func:`nucseg.hardware.resolve_channels_last`,
            for the device this module will most likely run on) turns it on except for such
            networks, and :meth:`on_fit_start` refuses them with a clear error when it is
            forced on. The resolved choice is in ``channels_last_choice``.
        target: ``binary``, ``contour``, ``distance`` or ``hv``: what the logits mean (the data module's
            target must be the same; a run config without it is binary).
        postprocess: post-processing parameters replacing the target's defaults
            (:data:`nucseg.postprocess.DEFAULT_PARAMS`); tuning may replace them later
            (``postprocess_params``).
        val_instance_metrics: also post-process validation images and log ``val/aji`` (costs a
            watershed per validation image; the checkpoint metric stays pixel Dice).

    Attributes:
        test_records: after a test, one dict per test image: ``name``; pixel counts ``tp``,
            ``fp``, ``fn``, ``tn`` at ``threshold``; per-image ``dice``, ``iou``, ``accuracy``;
            and the instance metrics of :func:`nucseg.metrics.instance.instance_metrics`
            (``aji``, ``aji_plus``, ``pq``, ``dq``, ``sq``, ... and their raw sums).
    """

    def __init__(
        self,
        net: nn.Module,
        loss: CompositeLoss,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        model_name: str = "model",
        inference: Mapping[str, Any] | None = None,
        validation_inference: Mapping[str, Any] | None = None,
        threshold: float = 0.5,
        num_logged_images: int = 2,
        channels_last: bool | str = False,
        target: str = "binary",
        postprocess: Mapping[str, Any] | None = None,
        val_instance_metrics: bool = False,
    ) -> None:
        super().__init__()
        if target not in TARGET_CHANNELS:
            raise ValueError(f"SegmentationModule: unknown target '{target}'; choose one of: {', '.join(TARGET_CHANNELS)}")
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"])
        self.channels_last_choice = resolve_channels_last(channels_last, net, "cuda" if torch.cuda.is_available() else "cpu")
        self.channels_last = bool(self.channels_last_choice.used)
        self.net = net.to(memory_format=torch.channels_last) if self.channels_last else net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.model_name = model_name
        self.inference_settings = InferenceSettings.from_mapping(inference)
        self.validation_inference_settings = self.inference_settings.updated(validation_inference)
        self.threshold = threshold
        self.num_logged_images = num_logged_images
        self.target = target
        self.postprocess_params: dict[str, Any] = {**default_params(target), **dict(postprocess or {})}
        self.val_instance_metrics = val_instance_metrics
        self.test_records: list[dict[str, Any]] = []
        self._val_records: list[dict[str, Any]] = []
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        metrics = build_pixel_metrics(threshold)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.test_per_image = PerImageMetrics(threshold)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, H, W) for images (B, 3, H, W) in [0, 1]."""
        standardised = (images - self.image_mean) / self.image_std
        if self.channels_last:
            standardised = standardised.contiguous(memory_format=torch.channels_last)
        return self.net(standardised)

    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Whole-image logits by sliding windows, with this module's inference settings."""
        return sliding_window_predict(images, self, **self.inference_settings.kwargs())

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) probabilities: sigmoid (binary), softmax over background / interior /
        boundary (contour), sigmoid foreground and the distance clamped to [0, 1] (distance), or
        sigmoid foreground and the horizontal/vertical maps clamped to [-1, 1] (hv)."""
        return target_probabilities(logits, self.target)

    def foreground_probability(self, probabilities: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) nucleus probability: channel 0 (binary, distance, hv), ``1 - P(background)`` (contour)."""
        return target_foreground_probability(probabilities, self.target)

    def instances(self, probabilities: torch.Tensor | np.ndarray) -> np.ndarray:
        """(H, W) int32 instance labels of ONE image's (C, H, W) probabilities, by the configured
        post-processing (:func:`nucseg.postprocess.postprocess` with ``postprocess_params``)."""
        if isinstance(probabilities, torch.Tensor):
            probabilities = probabilities.detach().float().cpu().numpy()
        return postprocess(probabilities, self.target, **self.postprocess_params)

    def on_fit_start(self) -> None:
        if self.channels_last and self.device.type == "cpu":
            check_channels_last_on_cpu(self.net)

    # -- steps ---------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images, masks = batch["image"], batch["mask"]
        logits = self(images)
        loss = self.loss(logits, loss_target(batch))
        batch_size = images.shape[0]
        self.log("train/loss_step", loss.total, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)
        self.log("train/loss", loss.total, on_step=False, on_epoch=True, batch_size=batch_size)
        for name, value in loss.terms.items():
            self.log(f"train/loss_{name}", value, on_step=False, on_epoch=True, batch_size=batch_size)
        foreground = self.foreground_probability(self.probabilities(logits.detach()))
        self.train_metrics.update(foreground, masks.int())
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=batch_size)
        return loss.total

    def _evaluate_whole_images(self, batch: dict[str, Any], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and probabilities (B, C, H, W) of whole images; logs the loss."""
        images = batch["image"]
        options = self.validation_inference_settings if stage == "val" else self.inference_settings
        logits = sliding_window_predict(images, self, **options.kwargs())
        loss = self.loss(logits, loss_target(batch))
        self.log(f"{stage}/loss", loss.total, on_step=False, on_epoch=True, batch_size=images.shape[0])
        for name, value in loss.terms.items():
            self.log(f"{stage}/loss_{name}", value, on_step=False, on_epoch=True, batch_size=images.shape[0])
        return logits, self.probabilities(logits.float())

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits, probabilities = self._evaluate_whole_images(batch, "val")
        foreground = self.foreground_probability(probabilities)
        self.val_metrics.update(foreground, batch["mask"].int())
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True, batch_size=logits.shape[0])
        if self.val_instance_metrics and "instance_labels" in batch:
            for index in range(len(probabilities)):
                self._val_records.append(self._instance_record(probabilities[index], batch["instance_labels"][index]))
        if batch_idx < self.num_logged_images:
            self._log_example(batch, foreground, batch_idx)

    def on_validation_epoch_start(self) -> None:
        self._val_records = []

    def on_validation_epoch_end(self) -> None:
        if self.val_instance_metrics and self._val_records:
            self.log("val/aji", float(aggregate_scores(self._val_records)["aji"]))
        self._val_records = []

    def on_test_epoch_start(self) -> None:
        self.test_records = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # Outside the trainer's autocast: the test scores exactly what evaluate.py and predict.py
        # compute from the checkpoint (their own sliding-window precision), not a bf16 variant.
        with torch.autocast(device_type=self.device.type, enabled=False):
            logits, probabilities = self._evaluate_whole_images(batch, "test")
        foreground = self.foreground_probability(probabilities)
        self.test_metrics.update(foreground, batch["mask"].int())
        self.log_dict(self.test_metrics, on_step=False, on_epoch=True, batch_size=logits.shape[0])
        self.test_per_image.update(foreground, batch["mask"])
        names = batch.get("name") or [f"image_{batch_idx}_{index}" for index in range(len(logits))]
        for index, name in enumerate(names):
            record = {"name": str(name), **self._pixel_record(foreground[index], batch["mask"][index])}
            if "instance_labels" in batch:
                record.update(self._instance_record(probabilities[index], batch["instance_labels"][index]))
            self.test_records.append(record)

    def on_test_epoch_end(self) -> None:
        for name, value in self.test_per_image.compute().items():
            self.log(f"test/{name}", value)
        self.test_per_image.reset()
        scored = [record for record in self.test_records if "aji" in record]
        if scored:
            aggregated = aggregate_scores(scored)
            for metric in LOGGED_INSTANCE_METRICS:
                for key in (metric, f"{metric}_per_image"):
                    if key in aggregated:
                        self.log(f"test/{key}", float(aggregated[key]))

    def _pixel_record(self, foreground: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        """Pixel counts at ``threshold`` and the image's Dice, IoU and accuracy (0 when undefined).

        A pixel is nucleus when its probability is ``> threshold``, torchmetrics' rule, so these
        counts summed over images give exactly the pooled metrics of ``test_metrics``."""
        predicted = foreground > self.threshold
        truth = mask > 0.5
        tp = int((predicted & truth).sum())
        fp = int((predicted & ~truth).sum())
        fn = int((~predicted & truth).sum())
        tn = int((~predicted & ~truth).sum())
        return {
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
            "dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
            "iou": tp / (tp + fp + fn) if tp + fp + fn else 0.0,
            "accuracy": (tp + tn) / (tp + fp + fn + tn),
        }

    def _instance_record(self, probabilities: torch.Tensor, instance_labels: torch.Tensor) -> dict[str, Any]:
        """Instance metrics of one image: its post-processed prediction against the true instances."""
        true_labels = instance_labels.detach().reshape(instance_labels.shape[-2:]).cpu().numpy()
        return dict(instance_scores(true_labels, self.instances(probabilities)))

    # -- logging -------------------------------------------------------------------------------
    def _log_example(self, batch: dict[str, Any], probabilities: torch.Tensor, index: int) -> None:
        """input | ground truth | prediction, side by side, to TensorBoard (``probabilities``: the
        (B, 1, H, W) foreground probability)."""
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image") or self.trainer.sanity_checking:
            return
        image = batch["image"][0].float().cpu()
        truth = batch["mask"][0].float().cpu().expand(3, -1, -1)
        predicted = (probabilities[0] > self.threshold).float().cpu().expand(3, -1, -1)
        separator = torch.ones(3, image.shape[1], 4)
        panel = torch.cat([image, separator, truth, separator, predicted], dim=2)
        stride = max(1, panel.shape[1] // 512)  # keep event files small for 1000 px images
        experiment.add_image(f"val/examples/{index}", panel[:, ::stride, ::stride], self.global_step)

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError("SegmentationModule needs an optimizer factory to train")
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

