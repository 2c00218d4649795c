"""Projection and prediction heads: MLPs with batch norm, as used by every joint-embedding method."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def mlp(dims: Sequence[int], last_norm: str | None = None, hidden_norm: bool = True) -> nn.Sequential:
    """A multi-layer perceptron ``dims[0] → dims[1] → … → dims[-1]``.

    Every hidden layer is ``Linear → BatchNorm1d → ReLU`` (``Linear → ReLU`` when ``hidden_norm`` is
    False); the last layer is a plain ``Linear``, followed by a batch norm when ``last_norm`` is
    ``"bn"`` (affine) or ``"bn_noaffine"`` (SimSiam's output BN). Linear layers followed by a batch norm
    carry no bias, which the norm would cancel.
    """
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least input and output sizes, got {list(dims)}")
    if last_norm not in (None, "bn", "bn_noaffine"):
        raise ValueError(f"last_norm must be None, 'bn' or 'bn_noaffine', got {last_norm!r}")
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-2], dims[1:-1]):
        layers.append(nn.Linear(d_in, d_out, bias=not hidden_norm))
        if hidden_norm:
            layers.append(nn.BatchNorm1d(d_out))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(dims[-2], dims[-1], bias=last_norm is None))
    if last_norm is not None:
        layers.append(nn.BatchNorm1d(dims[-1], affine=last_norm == "bn"))
    return nn.Sequential(*layers)
