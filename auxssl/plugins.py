"""Names in configs → classes: auxssl's registries (`auxssl.tasks.TASKS`, `baselines.METHODS`) or a user's own
class by import path, ``module:Class`` (``tasks: [{name: mypkg.tasks:FlipPrediction}]``), so a task or a method
defined outside auxssl runs from a YAML config without editing auxssl."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping

from torch import nn

from auxssl.errors import InputError


def is_import_path(name: str) -> bool:
    return ":" in name


def load_class(path: str, key: str) -> type:
    """The class at ``path`` (``module:Qualified.Name``); ``key`` names the config entry in errors."""
    module_name, _, qualname = path.partition(":")
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as err:
        raise InputError(f"{key}={path!r}: cannot import {module_name} ({err}); is it on PYTHONPATH?") from None
    for part in qualname.split("."):
        if not hasattr(target, part):
            raise InputError(f"{key}={path!r}: {module_name} has no {qualname}")
        target = getattr(target, part)
    if not isinstance(target, type):
        raise InputError(f"{key}={path!r} is not a class")
    return target


def resolve(name: str, registry: Mapping[str, type], key: str) -> type:
    """A registered class by name, or a class by import path; one line naming the problem otherwise."""
    if name in registry:
        return registry[name]
    if not is_import_path(name):
        close = difflib.get_close_matches(name, list(registry), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(f"{key}={name!r} is not one of {', '.join(registry)} nor an import path module:Class{hint}")
    return load_class(name, key)


def task_class(name: str, key: str = "tasks[].name") -> type[nn.Module]:
    """The pretext-task class a config names (`auxssl.tasks.TASKS` or ``module:Class``)."""
    from auxssl.tasks import TASKS

    cls = resolve(name, TASKS, key)
    missing = [m for m in ("build", "forward") if not hasattr(cls, m)]  # name and weight may be set per instance
    if not issubclass(cls, nn.Module) or missing:
        raise InputError(f"{key}={name!r} is not a PretextTask nn.Module"
                         + (f" (missing {', '.join(missing)})" if missing else ""))
    return cls


def method_class(name: str, key: str = "model.method") -> type[nn.Module]:
    """The base-method class a config names (`baselines.METHODS` or ``module:Class``)."""
    from baselines import METHODS

    cls = resolve(name, METHODS, key)
    missing = [m for m in ("forward", "param_groups", "momentum_pairs") if not hasattr(cls, m)]
    if not issubclass(cls, nn.Module) or missing:
        raise InputError(f"{key}={name!r} does not follow the SSLMethod protocol"
                         + (f" (missing {', '.join(missing)})" if missing else ""))
    return cls
