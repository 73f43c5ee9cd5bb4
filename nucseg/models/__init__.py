"""Segmentation networks by name: ``build_model("unet", width=32)``.

Importing this package registers the built-in networks: ``unet``, ``resunet``, ``linknet34``, ``smp``.
"""

from nucseg.models import resunet, smp_models, unet  # noqa: F401 - registration side effect
from nucseg.models.registry import available_models, build_model, count_parameters, register_model
from nucseg.models.smp_models import PretrainedWeightsError

__all__ = ["PretrainedWeightsError", "available_models", "build_model", "count_parameters", "register_model"]
