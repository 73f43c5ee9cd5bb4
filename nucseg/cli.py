"""Users' mistakes at the entry points: one clear line and exit status 2, never a stack trace.

Exit status of ``train.py`` and ``evaluate.py``: 0 done; 1 an unexpected error (a bug: the full
traceback is printed); 2 a problem with the input (data, a config value, a checkpoint), printed
as one line naming the file or value and the fix. Hydra's own errors (an unknown option, a
malformed override) happen before the task starts and are printed by Hydra as usual.

Hydra catches exceptions of the task function and prints their traceback itself, and it wraps
errors raised while instantiating a ``_target_``. So the task function is run through
:func:`run_task`, which finds the user error in the exception chain and reports it there. In a
single run it exits at once; in a multirun the job is marked failed, the other jobs go on, and
:func:`exit_with_status` exits with 2 after the sweep.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

EXIT_USER_ERROR = 2
T = TypeVar("T")
log = logging.getLogger("nucseg")
_failed_jobs: list[str] = []


def user_error_types() -> tuple[type[BaseException], ...]:
    """The project's error classes for input problems (imported late: the entry points stay light)."""
    from nucseg.callbacks import NonFiniteLossError
    from nucseg.checkpoint import CheckpointError
    from nucseg.data.annotations import AnnotationError
    from nucseg.data.monuseg import MonusegError
    from nucseg.data.stain import StainNormalizationError
    from nucseg.io.images import ImageReadError

    return (MonusegError, AnnotationError, ImageReadError, CheckpointError, StainNormalizationError, NonFiniteLossError)


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and its causes (``raise ... from``) and contexts, outermost first, without cycles."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def find_user_error(error: BaseException) -> BaseException | None:
    """The user error behind ``error``, or None when it is a bug.

    Besides the project's own classes, a ``ValueError`` raised by a constructor that Hydra
    instantiates from config is a bad config value (the constructors validate their arguments).
    """
    from hydra.errors import InstantiationException

    chain = _chain(error)
    known = user_error_types()
    for link in chain:
        if isinstance(link, known):
            return link
    for outer, inner in zip(chain, chain[1:], strict=False):
        if isinstance(outer, InstantiationException) and isinstance(inner, ValueError):
            return outer
    return None


def user_error_message(error: BaseException) -> str:
    """The message as the user should read it: the error's own lines, each prefixed ``error:``."""
    text = str(error).strip() or type(error).__name__
    return "\n".join(f"error: {line}" for line in text.splitlines())


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - outside Hydra: a single run
        return False


def run_task(task: Callable[[], T], failed_value: Any = float("nan")) -> T | Any:
    """Run an entry point's task; turn a user error into one message and exit status 2.

    Args:
        task: the work of the Hydra task function.
        failed_value: what a multirun job that stopped on a user error returns (a sweeper
            reads it as the job's metric).

    Returns:
        The task's result (or ``failed_value`` for a failed multirun job).

    Raises:
        SystemExit: status 2 on a user error in a single run.
        Exception: anything else, unchanged (Hydra prints its traceback; exit status 1).
    """
    try:
        return task()
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        message = user_error_message(user_error)
        log.error("%s", message)
        print(message, file=sys.stderr, flush=True)
        if _in_multirun():
            _failed_jobs.append(message.splitlines()[-1])
            return failed_value
        raise SystemExit(EXIT_USER_ERROR) from None


def exit_with_status(hydra_main: Callable[[], Any]) -> None:
    """Call a ``@hydra.main`` function; exit with 2 when multirun jobs stopped on user errors."""
    hydra_main()
    if _failed_jobs:
        print(f"error: {len(_failed_jobs)} run(s) of the sweep stopped on input problems (see above)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
