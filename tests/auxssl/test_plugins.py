"""Config names resolve through one registry per extension point, or to a user's own class by import path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from auxssl.config import ConfigError, load_config
from auxssl.errors import InputError
from auxssl.plugins import method_class, task_class
from auxssl.tasks import TASKS, RotationPrediction
from baselines import METHODS

USER_TASK = '''
import torch
from auxssl.tasks import ClassificationPretextTask


class FlipPrediction(ClassificationPretextTask):
    """Was the image flipped left-right? (a user's own task, outside auxssl)"""

    name = "flip"

    def __init__(self, weight: float = 0.1, **kwargs) -> None:
        super().__init__(2, weight, **kwargs)

    def make_inputs(self, images):
        labels = self.random_labels(len(images), images.device)
        flipped = torch.where(labels[:, None, None, None].bool(), images.flip(-1), images)
        return flipped, labels
'''


def test_registered_names_and_import_paths_resolve_to_classes(tmp_path: Path, monkeypatch) -> None:
    assert task_class("rotation") is TASKS["rotation"] is RotationPrediction
    assert method_class("byol") is METHODS["byol"]
    (tmp_path / "user_tasks.py").write_text(USER_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert task_class("user_tasks:FlipPrediction").__name__ == "FlipPrediction"
    with pytest.raises(InputError, match="did you mean 'rotation'"):
        task_class("rotaton")
    with pytest.raises(InputError, match="user_tasks has no Missing"):
        task_class("user_tasks:Missing")
    with pytest.raises(InputError, match="is not a PretextTask"):
        task_class("collections:OrderedDict")
    with pytest.raises(ConfigError, match=r"model.method='baselines:Batch' does not follow the SSLMethod protocol"):
        load_config(None, ["model.method=baselines:Batch"])


def test_a_task_defined_outside_auxssl_trains_from_a_yaml_config(tmp_path: Path) -> None:
    """``tasks: [{name: user_tasks:FlipPrediction}]`` with the module on PYTHONPATH: the run trains with the user's
    task and logs its terms under its own name."""
    (tmp_path / "user_tasks.py").write_text(USER_TASK)
    config = {"name": "flip", "output_dir": str(tmp_path / "runs"),
              "data": {"dataset": "digits", "image_size": 16, "batch_size": 32, "train_subset": 64, "num_workers": 0},
              "model": {"backbone": "resnet10", "width": 16, "method": "byol",
                        "method_args": {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32}},
              "tasks": [{"name": "user_tasks:FlipPrediction", "weight": 0.2}],
              "train": {"epochs": 1, "precision": "fp32", "progress": False, "log_every_steps": 1},
              "eval": {"every_epochs": 0}}
    (tmp_path / "flip.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "auxssl", "train", str(tmp_path / "flip.yaml")], capture_output=True,
                         text=True, timeout=300, env=env, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    from auxssl.eval.tracker import read_metrics

    record = read_metrics(tmp_path / "runs" / "flip", "train")[-1]
    assert {"loss/flip", "acc/flip"} <= set(record)
    assert record["loss"] == pytest.approx(record["loss/base"] + 0.2 * record["loss/flip"], rel=1e-5)
