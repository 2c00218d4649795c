"""The ``auxssl`` command line: train, quickstart, eval, report, export."""

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
    size = args.image_size or _stored_size(train)
    results: dict = evaluate_backbone(backbone, train, test, knn=knn, linear=linear, mlp=mlp, device=args.device,
                                      image_size=size)
    results["protocol"] = {"data": f"features at {size} px; bank: {len(train)} training images; test: {len(test)} images",
                           "knn": knn.describe(), **({"linear": linear.describe()} if linear else {}),
                           **({"mlp": mlp.describe()} if mlp else {})}
    semisup = {}
    for fraction in args.semisup:
        out = finetune_semisupervised(backbone, train, test, SemiSupervisedConfig(fraction=fraction), args.device,
                                      image_size=size)
        results.update({k: v for k, v in out.items() if "/" in k})
        results["protocol"]["semisup"] = out["protocol"]
        semisup[f"{100 * fraction:g}pct"] = {"config": out["config"], "subset_indices": out["subset_indices"]}
    results["checkpoint"] = str(args.checkpoint)
    results["config"] = {"backbone": args.backbone, "cifar_stem": args.cifar_stem, "dataset": args.dataset,
                         "image_size": size, "knn": asdict(knn)}
    if semisup:
        results["semisup"] = semisup  # the labelled subsets, to reproduce or compare the fine-tuning
    text = json.dumps(results, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


def _stored_size(dataset) -> int:  # noqa: ANN001 - an ImageDataset
    """The side of the dataset's first image (evaluation at the stored size when no size is given)."""
    return max(dataset.load(0).size)


def _train(args: argparse.Namespace) -> int:
    from auxssl.config import load_config
    from auxssl.engine.trainer import train

    overrides = list(args.set or [])
    if args.name:
        overrides.append(f"name={args.name}")
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    config = load_config(args.config, overrides)
    final = train(config, resume=args.resume)
    print(json.dumps({"run_dir": str(config.run_dir), **final}))
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from auxssl.config import load_config
    from auxssl.engine.trainer import train
    from auxssl.eval.report import write_report

    out = Path(args.output_dir)
    runs = []
    for name, tasks in ((f"{args.method}", "[]"), (f"{args.method}_rotation", "[{name: rotation, weight: 0.1}]")):
        overrides = [
            f"name={name}", f"output_dir={out}", "data.dataset=digits", "data.image_size=16", "data.batch_size=128",
            "data.recipe=simclr", f"model.backbone={args.backbone}", f"model.method={args.method}", f"tasks={tasks}",
            f"train.epochs={args.epochs}", "train.log_every_steps=5", "optim.warmup_epochs=1", "optim.lr=0.3",
            "eval.every_epochs=1", f"train.checkpoint_every_epochs={args.epochs}", f"train.seed={args.seed}",
            f"train.progress={str(not args.quiet).lower()}",
        ]
        config = load_config(None, overrides + list(args.set or []))
        print(f"[quickstart] training {name} ({args.epochs} epochs on the offline digits dataset)", flush=True)
        final = train(config, resume=(config.run_dir / "run.json").exists())
        print(f"[quickstart] {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in final.items()), flush=True)
        runs.append(config.run_dir)
    report = write_report(runs, out / "report", title="auxssl quickstart: base method vs + rotation (digits)")
    print(f"[quickstart] report: {report.html.resolve()}\n[quickstart] markdown: {report.markdown.resolve()}")
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from auxssl.engine.checkpoint import find_last_checkpoint, load_checkpoint

    source = Path(args.source)
    path = find_last_checkpoint(source) if source.is_dir() else source
    if path is None or not path.is_file():
        raise FileNotFoundError(f"no checkpoint found at {source}")
    state = load_checkpoint(path)
    if "backbone" not in state:
        raise ValueError(f"{path} is not an auxssl training checkpoint (no 'backbone' entry)")
    torch.save(state["backbone"], args.out)
    model = state.get("config", {}).get("model", {})
    print(f"exported the backbone of {path} to {args.out}")
    if model:
        stem = ("m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False); m.maxpool = torch.nn.Identity(); "
                if model.get("cifar_stem") and model.get("backbone", "").startswith("resnet") else "")
        print(f"load it with: m = torchvision.models.{model['backbone']}(); {stem}m.fc = torch.nn.Identity(); "
              f"m.load_state_dict(torch.load({str(args.out)!r}))")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="auxssl", description="Auxiliary tasks for faster self-supervised learning.")
    commands = parser.add_subparsers(dest="command", required=True)

    tr = commands.add_parser("train", help="train one run from a YAML config")
    tr.add_argument("config", help="YAML config (see experiments/configs/)")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=5")
    tr.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    tr.add_argument("--name", help="run name (default: the config's)")
    tr.add_argument("--output-dir", help="parent folder of the run directory")
    tr.set_defaults(func=_train)

    qs = commands.add_parser("quickstart", help="offline demo: base method vs + rotation on digits, then the report")
    qs.add_argument("--method", default="simclr")
    qs.add_argument("--backbone", default="resnet10")
    qs.add_argument("--epochs", type=int, default=5)
    qs.add_argument("--seed", type=int, default=0)
    qs.add_argument("--output-dir", default="runs/quickstart")
    qs.add_argument("--set", action="append", metavar="KEY=VALUE", help="extra config overrides for both runs")
    qs.add_argument("--quiet", action="store_true", help="no progress bars")
    qs.set_defaults(func=_quickstart)

    ex = commands.add_parser("export", help="backbone weights as a plain state_dict for the torchvision model")
    ex.add_argument("source", help="run directory (its last checkpoint) or checkpoint file")
    ex.add_argument("--out", default="backbone.pt")
    ex.set_defaults(func=_export)

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
    ev.add_argument("--image-size", type=int, default=None,
                    help="resize images to this side before the backbone: use the training resolution "
                         "(data.image_size); default: the dataset's stored size")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--out", help="write the results JSON here too")
    ev.set_defaults(func=_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
