"""The ``auxssl`` command line: ``auxssl report RUN_DIR…`` and ``auxssl eval CHECKPOINT``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _report(args: argparse.Namespace) -> int:
    from auxssl.eval.report import write_report

    out = Path(args.out) if args.out else Path(args.runs[0]) / "report"
    report = write_report(args.runs, out, title=args.title)
    print(f"report: {report.html}\nmarkdown: {report.markdown}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from auxssl.data.datasets import get_dataset
    from auxssl.eval.knn import KNNProtocol
    from auxssl.eval.linear import ProbeConfig
    from auxssl.eval.offline import evaluate_backbone, load_backbone
    from auxssl.eval.semisup import SemiSupervisedConfig, finetune_semisupervised

    backbone = load_backbone(args.checkpoint, args.backbone, args.cifar_stem).to(args.device)
    train = get_dataset(args.dataset, "train", args.root, args.download)
    test = get_dataset(args.dataset, "test", args.root, args.download)
    knn = KNNProtocol(args.k, args.temperature)
    linear = ProbeConfig(epochs=args.probe_epochs) if args.linear else None
    mlp = ProbeConfig(epochs=args.probe_epochs, hidden_dim=args.mlp_hidden) if args.mlp else None
    results: dict = evaluate_backbone(backbone, train, test, knn=knn, linear=linear, mlp=mlp, device=args.device)
    for fraction in args.semisup:
        out = finetune_semisupervised(backbone, train, test, SemiSupervisedConfig(fraction=fraction), args.device)
        results.update({k: v for k, v in out.items() if "/" in k})
    results["protocol"] = {"knn": knn.describe(), **({"linear": linear.describe()} if linear else {}),
                           **({"mlp": mlp.describe()} if mlp else {})}
    results["checkpoint"] = str(args.checkpoint)
    results["config"] = {"backbone": args.backbone, "cifar_stem": args.cifar_stem, "dataset": args.dataset,
                         "knn": asdict(knn)}
    text = json.dumps(results, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="auxssl", description="Auxiliary tasks for faster self-supervised learning.")
    commands = parser.add_subparsers(dest="command", required=True)

    report = commands.add_parser("report", help="Markdown + HTML convergence report of run directories")
    report.add_argument("runs", nargs="+", help="run directories, or folders holding them")
    report.add_argument("--out", help="output folder (default: <first run>/report)")
    report.add_argument("--title", default="auxssl convergence report")
    report.set_defaults(func=_report)

    ev = commands.add_parser("eval", help="offline kNN / linear / MLP / semi-supervised evaluation of a checkpoint")
    ev.add_argument("checkpoint", help="backbone state_dict (auxssl export) or training checkpoint")
    ev.add_argument("--backbone", default="resnet18")
    ev.add_argument("--cifar-stem", action=argparse.BooleanOptionalAction, default=True)
    ev.add_argument("--dataset", default="cifar10_jpg")
    ev.add_argument("--root", help="dataset root (folder datasets, torchvision datasets, archive path)")
    ev.add_argument("--download", action="store_true", help="allow torchvision to download the dataset")
    ev.add_argument("--k", type=int, default=200)
    ev.add_argument("--temperature", type=float, default=0.1)
    ev.add_argument("--linear", action="store_true", help="also train the standard linear probe")
    ev.add_argument("--mlp", action="store_true", help="also train the non-linear (MLP) probe")
    ev.add_argument("--mlp-hidden", type=int, default=1024)
    ev.add_argument("--probe-epochs", type=int, default=100)
    ev.add_argument("--semisup", type=float, nargs="*", default=[], metavar="FRACTION", help="e.g. 0.01 0.1")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--out", help="write the results JSON here too")
    ev.set_defaults(func=_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
