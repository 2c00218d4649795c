"""Linear probes on every layer of the projector (FFCV-SSL's per-layer evaluation, Bordes et al. 2023): how much
of the class information survives each layer between the backbone and the SSL loss.

The projector is an MLP on the pooled backbone features, so its layers' outputs come from the backbone features
already extracted for the kNN: no image passes again. A *layer* ends after each hidden block's activation
(``Linear → BN → ReLU``) and at the projector's output; layer 0 is the backbone itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from auxssl.engine.checkpoint import load_checkpoint, resolve_checkpoint
from auxssl.errors import InputError
from auxssl.eval.linear import OnlineLinearProbe, ProbeConfig, linear_probe

#: How the per-layer probes are described in run.json and eval results (followed by the probe protocol).
PROJECTOR_PROTOCOL = ("linear probe on the backbone features (layer 0) and on each projector layer's output (after "
                      "every hidden block's ReLU, and the projector output), projector in eval mode; ")


def layer_ends(projector: nn.Sequential) -> list[int]:
    """How many of ``projector``'s children each layer takes: a layer ends after every child that is or ends in a
    ReLU (``Linear → BN → ReLU`` laid out flat, or grouped in one block per layer as FFCV-SSL builds its
    projector), and at the projector's end."""
    if not isinstance(projector, nn.Sequential):
        raise InputError(f"per-layer probes need an nn.Sequential projector, got {type(projector).__name__}")
    modules = list(projector)

    def ends_in_relu(module: nn.Module) -> bool:
        return isinstance(module, nn.ReLU) or (isinstance(module, nn.Sequential) and len(module) > 0
                                               and ends_in_relu(module[-1]))

    ends = [i + 1 for i, m in enumerate(modules) if ends_in_relu(m)]
    if not ends or ends[-1] != len(modules):
        ends.append(len(modules))
    return ends


def projector_layers(projector: nn.Sequential) -> list[nn.Sequential]:
    """The prefixes of ``projector`` that end at each layer (`layer_ends`)."""
    modules = list(projector)
    return [nn.Sequential(*modules[:end]) for end in layer_ends(projector)]


@torch.no_grad()
def layer_features(projector: nn.Sequential, features: Tensor, batch: int = 4096) -> list[Tensor]:
    """``[features, projector layer 1, …, projector output]`` of backbone ``features``, the projector in eval mode
    (running batch-norm statistics, as at evaluation); one pass through the projector, in chunks of ``batch``."""
    ends = set(layer_ends(projector))
    was_training = projector.training
    projector.eval()
    try:
        parts: list[list[Tensor]] = []
        for chunk in features.split(batch) if len(features) else [features]:
            outputs = [chunk]
            for i, module in enumerate(projector, start=1):
                chunk = module(chunk)
                if i in ends:
                    outputs.append(chunk)
            parts.append(outputs)
        return [torch.cat(layer) for layer in zip(*parts)]
    finally:
        projector.train(was_training)


def projector_probes(projector: nn.Sequential, train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                     config: ProbeConfig = ProbeConfig()) -> dict[str, float]:
    """``linear/layer<i>/top1`` (and top5) of the linear probe on each layer: 0 the backbone, the last the
    projector's output (the standard probe protocol, `ProbeConfig`)."""
    device = next(projector.parameters()).device
    trains = layer_features(projector, train_x.to(device))
    tests = layer_features(projector, test_x.to(device))
    results: dict[str, float] = {}
    for i, (train_i, test_i) in enumerate(zip(trains, tests)):
        for key, value in linear_probe(train_i, train_y, test_i, test_y, config).items():
            results[key.replace("linear/", f"linear/layer{i}/", 1)] = value
    return results


def layer_widths(projector: nn.Sequential) -> list[int]:
    """The output width of each projector layer (`projector_layers`): its last linear layer's."""
    widths = []
    for prefix in projector_layers(projector):
        linears = [m for m in prefix.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise InputError("per-layer probes need a projector made of nn.Linear layers")
        widths.append(linears[-1].out_features)
    return widths


class OnlineProjectorProbes(nn.Module):
    """Online linear probes on every projector layer: at each training step, one `OnlineLinearProbe` per layer
    learns from that layer's output on the detached online features of the first view. The layers are the ones
    FFCV-SSL probes online (its ``LinearsProbes``: after every projector block and at the output, from the
    detached representation); unlike FFCV-SSL, which re-runs the projector in train mode (batch statistics, and a
    second update of the running statistics per step), the projector runs here in eval mode (running statistics,
    no gradient, batch-norm statistics untouched, so training is the same with or without the probes), like the
    offline `projector_probes`. Layer 0, the backbone, is the run's ``online_linear`` probe; metrics
    ``online_linear/layer<i>/top1`` and ``…/loss`` for layers 1…L.

    The projector is borrowed, not owned: it is not part of this module's parameters or state dict."""

    name = "online_projector_layers"
    prefix = "online_linear/layer"

    def __init__(self, projector: nn.Sequential, num_classes: int, lr: float = 0.1, momentum: float = 0.9) -> None:
        super().__init__()
        self._projector = (projector,)  # a tuple: not registered as a submodule
        self.probes = nn.ModuleList(OnlineLinearProbe(width, num_classes, lr, momentum)
                                    for width in layer_widths(projector))

    def settings(self) -> dict[str, Any]:
        return {"layers": len(self.probes), **self.probes[0].settings(),
                "input": "each projector layer's output (eval mode) on detached pooled features"}

    def describe(self) -> str:
        return ("online linear probes on each projector layer's output (after every hidden block's ReLU, and the "
                "projector output; projector in eval mode) of the detached features of the training views; "
                + self.probes[0].describe().split("; ", 1)[1])

    def update(self, features: Tensor, labels: Tensor) -> dict[str, Tensor | int]:
        """One step of every layer's probe (`OnlineLinearProbe.update`); the labelled count under
        ``online_linear/labelled`` once."""
        outputs = layer_features(self._projector[0], features.detach().float())[1:]
        results: dict[str, Tensor | int] = {}
        for i, (probe, output) in enumerate(zip(self.probes, outputs), start=1):
            for key, value in probe.update(output, labels).items():
                results[key if key == "online_linear/labelled" else key.replace("online_linear/",
                                                                                 f"online_linear/layer{i}/", 1)] = value
        return results

    def checkpoint_state(self) -> list[dict[str, Any]]:
        return [probe.checkpoint_state() for probe in self.probes]

    def load_checkpoint_state(self, state: list[dict[str, Any]]) -> None:
        if len(state) != len(self.probes):
            raise ValueError(f"the checkpoint holds {len(state)} projector-layer probes, this projector has "
                             f"{len(self.probes)} layers")
        for probe, part in zip(self.probes, state):
            probe.load_checkpoint_state(part)


def load_projector(path: str | Path) -> nn.Sequential:
    """The online projector of a training checkpoint (or a run directory's last one), rebuilt from its config."""
    from auxssl.config import RunConfig, from_dict
    from auxssl.engine.build import build_model

    checkpoint = resolve_checkpoint(path)
    state = load_checkpoint(checkpoint)
    if "model" not in state or "config" not in state:
        raise InputError(f"{checkpoint} is not a training checkpoint (an exported backbone has no projector)")
    model = build_model(from_dict(RunConfig, state["config"]))
    model.load_state_dict(state["model"])
    projector = getattr(getattr(model, "base", model), "projector", None)
    if projector is None:
        raise InputError(f"{checkpoint}: the base method has no projector")
    return projector
