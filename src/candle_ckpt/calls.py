"""How CANDLE code calls ``restart``: every argument shape seen in real scripts.

``restart(model, verbose)`` is the spec's signature, but real code also calls
``restart(gParameters, model)`` (the module-level function's order, used on the method by
candle_lib's Keras example: the model lands where ``verbose`` goes) and
``restart(gParameters)`` after ``set_model`` (Uno: hyperparameters where the model
goes). The original ignored such an argument and loaded into the model given to
``set_model``; so do we, and say so. :func:`restart_call` is pure; :class:`RestartArgs`
(a mixin of the engine) logs what it ignored.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import CkptParamError

SHAPES = ("call restart(), restart(model), restart(gParameters, model) or "
          "restart(gParameters), with the model given here or to set_model(...) first")


@dataclass(frozen=True)
class RestartCall:
    """``restart``'s arguments, sorted out."""

    model: Any  # the model to attach, or None (restore into set_model's)
    verbose: Any
    ignored: str = ""  # what was passed as a model but is none, for the log
    warn: bool = False  # say it as a warning (not the hyperparameters: a likelier slip)


def restart_call(model: Any, verbose: Any, is_model: Callable[[Any], bool],
                 has_model: bool) -> RestartCall:
    """Sort out ``restart``'s arguments.

    Args:
        is_model: can the backend restore into this object?
        has_model: did ``set_model`` (or an earlier restart) name what to restore into?

    Raises:
        CkptParamError: the argument is neither a model nor hyperparameters and no
            model was given to ``set_model``, or two models are given.
    """
    if not is_flag(verbose):  # restart(gParameters, model)
        if model is not None and not is_params(model):
            raise CkptParamError(
                f"restart: verbose is a {type_name(verbose)} and the first argument a "
                f"{type_name(model)}; {SHAPES}")
        model, verbose = verbose, True
    if model is None or is_model(model):
        return RestartCall(model, verbose)
    if has_model:
        what = ("the hyperparameters (gParameters)" if is_params(model)
                else f"the {type_name(model)} given")
        return RestartCall(None, verbose, what, warn=not is_params(model))
    if is_params(model):
        return RestartCall(None, verbose)  # the backend says what to do with no model
    raise CkptParamError(
        f"restart: the argument is a {type_name(model)}, not a model, and set_model "
        f"named none; {SHAPES}")


def is_params(obj: Any) -> bool:
    """Hyperparameters as CANDLE code passes them: a dict or an argparse.Namespace."""
    return isinstance(obj, (Mapping, argparse.Namespace))


def is_flag(value: Any) -> bool:
    """Could ``value`` be restart's ``verbose`` (rather than a model passed there)?"""
    return value is None or isinstance(value, (bool, int, float, str)) or (
        getattr(value, "ndim", None) == 0)  # a numpy or torch scalar


def type_name(obj: Any) -> str:
    kind = type(obj)
    return kind.__qualname__ if kind.__module__ == "builtins" else (
        f"{kind.__module__}.{kind.__qualname__}")


class RestartArgs:
    """Mixin of :class:`~candle_ckpt.engine.CandleCkpt`: ``restart``'s arguments sorted
    out, and the hooks through which a backend's public class says what a model is."""

    _log: Any

    def _attach_model(self, model: Any) -> None:
        """Hook: ``restart(model)`` hands the model to the backend here."""

    def _is_model(self, obj: Any) -> bool:
        """Hook: can this backend restore into ``obj``? (The base engine has no model, so
        anything but hyperparameters goes to :meth:`_attach_model`, which ignores it.)"""
        return not is_params(obj)

    def _has_model(self) -> bool:
        """Hook: has ``set_model`` (or an earlier restart) named what to restore into?"""
        return True

    def _restart_args(self, model: Any, verbose: Any) -> tuple[Any, Any]:
        """``restart``'s arguments in any shape CANDLE code passes them (``calls.py``):
        (the model to attach or None, verbose)."""
        call = restart_call(model, verbose, self._is_model, self._has_model())
        if call.ignored:
            (self._log.warning if call.warn else self._log.debug)(
                f"restart: {call.ignored} is not a model; ignored, restoring into the model "
                "given to set_model")
        return call.model, call.verbose
