"""Evaluators (kNN, linear / MLP probes, semi-supervised fine-tuning), convergence tracking and reports."""

from auxssl.eval.features import extract_features
from auxssl.eval.knn import KNNProtocol, knn_evaluate, knn_scores, topk_accuracy
from auxssl.eval.linear import (
    OnlineLinearProbe,
    ProbeConfig,
    linear_probe,
    linear_probe_augmented,
    mlp_probe,
    train_probe,
)
from auxssl.eval.report import write_report
from auxssl.eval.semisup import SemiSupervisedConfig, finetune_semisupervised
from auxssl.eval.tracker import MetricsLog, RunInfo, TrainClock, read_metrics, read_run_info, write_run_info

__all__ = [
    "KNNProtocol",
    "MetricsLog",
    "OnlineLinearProbe",
    "ProbeConfig",
    "RunInfo",
    "SemiSupervisedConfig",
    "TrainClock",
    "extract_features",
    "finetune_semisupervised",
    "knn_evaluate",
    "knn_scores",
    "linear_probe",
    "linear_probe_augmented",
    "mlp_probe",
    "read_metrics",
    "read_run_info",
    "topk_accuracy",
    "train_probe",
    "write_report",
    "write_run_info",
]
