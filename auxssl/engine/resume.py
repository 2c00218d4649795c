"""Resuming safely: a run continues only under the configuration it was started with (unless told otherwise)."""

from __future__ import annotations

from typing import Any

from auxssl.errors import UserError

#: Settings that do not change what a run computes, free to differ when resuming.
FREE_TO_CHANGE = ("name", "output_dir", "train.device", "train.progress", "data.num_workers", "logging.")


class ResumeMismatchError(UserError):
    """The configuration differs from the one the run was started with (``differences``: one line each)."""

    def __init__(self, message: str, differences: list[str]) -> None:
        super().__init__(message)
        self.differences = differences


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and not key.endswith("args"):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def config_differences(saved: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """``key: saved → requested`` for every setting that differs and matters (not in `FREE_TO_CHANGE`)."""
    old, new = flatten(saved), flatten(requested)
    lines = []
    for key in sorted(set(old) | set(new)):
        if key.startswith(FREE_TO_CHANGE) or old.get(key) == new.get(key):
            continue
        lines.append(f"{key}: {old.get(key, '(unset)')!r} → {new.get(key, '(unset)')!r}")
    return lines


def check_same_config(saved: dict[str, Any], requested: dict[str, Any], where: str, allow_change: bool) -> list[str]:
    """Refuse (`ResumeMismatchError`) when the settings differ, unless ``allow_change``; returns the differences."""
    differences = config_differences(saved, requested)
    if differences and not allow_change:
        raise ResumeMismatchError(
            f"{where} was started with other settings; continuing it would relabel its results. Differences: "
            + "; ".join(differences)
            + ". Use another run name or --output-dir for a new run, or --allow-config-change to continue anyway.",
            differences,
        )
    return differences
