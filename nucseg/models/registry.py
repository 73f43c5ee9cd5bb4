"""A name → constructor registry, so ``model=linknet34`` is config and ``build_model("linknet34")`` is code."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

ModelFactory = Callable[..., nn.Module]
_MODEL_FACTORIES: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory`` under ``name``; a second registration of one name is a bug."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _MODEL_FACTORIES:
            raise ValueError(f"model '{name}' is already registered")
        _MODEL_FACTORIES[name] = factory
        return factory

    return decorator


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(_MODEL_FACTORIES)


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Build the network registered as ``name``.

    Every network maps (B, in_channels, H, W) to (B, classes, H, W) logits and has an integer
    attribute ``input_divisor``: H and W must be multiples of it.

    Raises:
        KeyError: ``name`` is not registered; the message lists the names that are.
    """
    try:
        factory = _MODEL_FACTORIES[name]
    except KeyError:
        raise KeyError(f"unknown model '{name}'; available: {', '.join(available_models())}") from None
    return factory(**kwargs)


def count_parameters(net: nn.Module) -> int:
    """Number of weights of ``net``: the ``params`` that metrics.json and the tables report."""
    return sum(parameter.numel() for parameter in net.parameters())
