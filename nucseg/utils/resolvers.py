"""OmegaConf resolvers the configs use; registered by the entry points before Hydra composes."""

from __future__ import annotations

import hashlib
import re

from omegaconf import OmegaConf

MAX_DIRNAME_CHARS = 120


def short_dirname(name: str, max_chars: int = MAX_DIRNAME_CHARS) -> str:
    """A directory name made from ``name`` that is safe to type back into a command line.

    A sweep's run directory is named by its overrides. Characters that Hydra's override grammar
    or a shell would read specially (``=``, ``,``, ``/``, quotes, brackets, spaces...) become
    ``-``, so ``python evaluate.py run_dir=logs/multiruns/<time>/0_model-unet`` works unquoted.
    A long command line would exceed the file system's 255-byte limit for a name: past
    ``max_chars`` the name is cut and a hash of the whole keeps it distinct.
    """
    name = re.sub(r"[^A-Za-z0-9._+-]", "-", name)
    if len(name) <= max_chars:
        return name
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
    return f"{name[: max_chars - 9]}-{digest}"


def register_resolvers() -> None:
    """Register ``${short_dirname:...}`` once (idempotent)."""
    if not OmegaConf.has_resolver("short_dirname"):
        OmegaConf.register_new_resolver("short_dirname", short_dirname)
