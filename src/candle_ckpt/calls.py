"""How CANDLE code calls ``restart``: every argument shape seen in real scripts.

``restart(model, verbose)`` is the spec's signature, but real code also calls
``restart(gParameters, model)`` (the module-level function's order, used on the method by
candle_lib's Keras example: the model lands where ``verbose`` goes) and
``restart(gParameters)`` after ``set_model`` (Uno: hyperparameters where the model
goes). The original ignored such an argument and loaded into the model given to
``set_model``; so do we, and say so. Pure: the engine logs and attaches.
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
