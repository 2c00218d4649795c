"""The ``auxssl`` command line: train, quickstart, eval, report, export, configs.

Expected errors (a config, file, dataset or checkpoint that cannot be used) are printed in one line,
``auxssl: error: …``, with exit status 2; ``--debug`` shows their traceback. A pre-empted run (SIGTERM, SIGUSR1)
exits with status 75 after checkpointing. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from auxssl.errors import UserError

EXIT_USAGE = 2


def _report(args: argparse.Namespace) -> int:
    from auxssl.eval.report import write_report

    out = Path(args.out) if args.out else Path(args.runs[0]) / "report"
    report = write_report(args.runs, out, title=args.title)
    print(f"report: {report.html}\nmarkdown: {report.markdown}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from auxssl.data.datasets import get_dataset
    from auxssl.engine.build import random_subset
    from auxssl.engine.checkpoint import resolve_checkpoint
    from auxssl.engine.precision import resolve_device
    from auxssl.eval.evaluators import describe_evaluators, offline_evaluators
    from auxssl.eval.knn import KNNProtocol
    from auxssl.eval.linear import ProbeConfig, linear_probe_augmented
    from auxssl.eval.offline import evaluate_backbone, load_backbone
    from auxssl.eval.projector import load_projector
    from auxssl.eval.semisup import SemiSupervisedConfig, finetune_semisupervised

    bad_size = args.image_size is not None and args.image_size < 1
    if (args.k is not None and args.k < 1) or (args.temperature is not None and args.temperature <= 0) \
            or args.probe_epochs < 1 or bad_size:
        raise UserError("--k, --probe-epochs and --image-size must be positive and --temperature above 0")
    if any(not 0 < f < 1 for f in args.semisup):
        raise UserError(f"--semisup fractions must lie in (0, 1), got {args.semisup}")
    device = resolve_device(args.device)
    checkpoint = resolve_checkpoint(args.checkpoint)  # a run directory: its last checkpoint
    backbone, built = load_backbone(checkpoint, args.backbone, args.cifar_stem, args.width)
    backbone = backbone.to(device)
    # the run's own evaluation protocol unless told otherwise: its dataset (when none is named) and image size
    own = not (args.dataset or args.root) and built.get("dataset") is not None
    dataset = args.dataset or built.get("dataset") or "cifar10_jpg"
    root = built.get("root") if own else args.root
    train = get_dataset(dataset, "train", root, args.download)
    test = get_dataset(dataset, "test", root, args.download)
    if own:  # the run's fixed random bank and test subsets (the seed every run shares)
        train, test = random_subset(train, built.get("bank_subset")), random_subset(test, built.get("test_subset"))
    size = args.image_size or built.get("image_size") or _stored_size(train)
    size_source = "--image-size" if args.image_size else "the run's evaluation size" if built.get("image_size") else \
        "the dataset's stored size"
    # the run's kNN (k, T) unless told otherwise, so that its logged kNN and this one are the same measurement
    knn = KNNProtocol(args.k or built.get("knn_k") or KNNProtocol.k,
                      args.temperature or built.get("knn_temperature") or KNNProtocol.temperature)
    probe = ProbeConfig(epochs=args.probe_epochs)
    evaluators = offline_evaluators(
        knn, linear=probe if args.linear else None,
        mlp=ProbeConfig(epochs=args.probe_epochs, hidden_dim=args.mlp_hidden) if args.mlp else None,
        projector=load_projector(checkpoint).to(device) if args.projector_probes else None,
        projector_config=probe)
    results: dict = evaluate_backbone(backbone, train, test, evaluators=evaluators, device=device, image_size=size)
    if args.linear_augmented:
        results.update(linear_probe_augmented(backbone, train, test, probe, device,
                                              image_size=size))
    split = f" ({test.description})" if test.description else ""
    protocol = "the run's own dataset and subsets" if own else f"dataset {dataset}"
    results["protocol"] = {"data": f"features at {size} px ({size_source}); {protocol}; bank: {len(train)} training "
                                   f"images; test: {len(test)} images{split}",
                           **describe_evaluators(evaluators)[0],
                           **({"linear_aug": "linear layer on the frozen backbone, trained on fresh random-resized "
                                             "crops (0.08-1) and flips every epoch; "
                                             + probe.describe().split("; ", 1)[1]} if args.linear_augmented else {})}
    semisup = {}
    for fraction in args.semisup:
        out = finetune_semisupervised(backbone, train, test, SemiSupervisedConfig(fraction=fraction), device,
                                      image_size=size)
        results.update({k: v for k, v in out.items() if "/" in k})
        results["protocol"]["semisup"] = out["protocol"]
        semisup[f"{100 * fraction:g}pct"] = {"config": out["config"], "subset_indices": out["subset_indices"]}
    results["checkpoint"] = str(checkpoint)
    results["config"] = {**{k: built[k] for k in ("backbone", "cifar_stem", "width", "backbone_args")},
                         "dataset": dataset, "root": root, "image_size": size, "device": str(device),
                         "knn": asdict(knn)}
    if semisup:
        results["semisup"] = semisup  # the labelled subsets, to reproduce or compare the fine-tuning
    text = json.dumps(results, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


def _stored_size(dataset) -> int:
    """The side of the dataset's images when they share one size; images of several sizes need --image-size."""
    shared = dataset.uniform_size()
    if shared is None:
        raise UserError(f"the images of {dataset.name} differ in size and nothing says at which size the backbone "
                        "was trained: pass --image-size")
    return max(shared)


def _train(args: argparse.Namespace) -> int:
    from auxssl.config import load_config

    overrides = list(args.set or [])
    if args.name:
        overrides.append(f"name={args.name}")
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    config = load_config(args.config, overrides)
    if args.print_config:
        print(config_text(config), end="")
        return 0
    from auxssl.engine.distributed import shutdown_distributed
    from auxssl.engine.trainer import train

    completed = False
    try:
        final = train(config, resume=args.resume, init=args.init, allow_config_change=args.allow_config_change)
        completed = True
    finally:  # under torchrun: leave the process group cleanly, whatever ended the run
        shutdown_distributed(completed)
    print(json.dumps({"run_dir": str(config.run_dir), **final}))
    return 0


def config_text(config) -> str:
    import yaml

    from auxssl.config import to_dict

    return yaml.safe_dump(to_dict(config), sort_keys=False)


def _configs(args: argparse.Namespace) -> int:
    import yaml

    from auxssl.config import load_config, resolve_config_path, shipped_config, shipped_names

    if args.action == "show":
        if not args.name:
            raise UserError("auxssl configs show needs the NAME of a shipped config (auxssl configs lists them)")
        path, variant = resolve_config_path(args.name)
        if args.resolved or variant:  # a variant is its file plus overrides: show what they make
            print(config_text(load_config(args.name)), end="")
        else:
            print(f"# {path}\n{path.read_text()}", end="")
        return 0
    for name in shipped_names():
        path, variant = shipped_config(name)  # type: ignore[misc]
        text = path.read_text()
        first = text.splitlines()[0].lstrip("# ") if text.startswith("#") else ""
        note = f"= {path.stem} with {', '.join(v for v in variant if not v.startswith('name='))}" if variant else first
        print(f"{name:30s} {yaml.safe_load(text)['model']['method']:13s} {note}")
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from auxssl.config import load_config
    from auxssl.engine.resume import ResumeMismatchError
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
        print(f"[quickstart] training {name} ({args.epochs} epoch{'' if args.epochs == 1 else 's'} on the offline "
              "digits dataset)", flush=True)
        try:
            final = train(config, resume=(config.run_dir / "run.json").exists())
        except ResumeMismatchError as err:
            differences = "; ".join(err.differences)
            raise UserError(f"{config.run_dir} holds a quickstart run with other settings ({differences}); "
                            f"choose another --output-dir for a new one, or delete {config.run_dir}") from None
        print(f"[quickstart] {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in final.items()), flush=True)
        runs.append(config.run_dir)
    report = write_report(runs, out / "report", title="auxssl quickstart: base method vs + rotation (digits)")
    print(f"[quickstart] report: {report.html.resolve()}\n[quickstart] markdown: {report.markdown.resolve()}")
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from auxssl.engine.checkpoint import find_last_checkpoint, load_checkpoint
    from auxssl.eval.offline import SETTINGS_SUFFIX, trained_settings

    source = Path(args.source)
    path = find_last_checkpoint(source) if source.is_dir() else source
    if path is None or not path.is_file():
        raise FileNotFoundError(f"no checkpoint found at {source}")
    state = load_checkpoint(path)
    if not isinstance(state.get("backbone"), dict) or not isinstance(state.get("config"), dict):
        raise UserError(f"{path} is not an auxssl training checkpoint (no 'backbone' and 'config' entries); "
                        "auxssl export reads run directories and the checkpoints in their checkpoints/ folder")
    out = Path(args.out)
    torch.save(state["backbone"], out)
    settings = {**trained_settings(state["config"]), "exported_from": str(path)}
    out.with_suffix(SETTINGS_SUFFIX).write_text(json.dumps(settings, indent=2))
    print(f"exported the backbone of {path} to {out} (architecture and evaluation settings in "
          f"{out.with_suffix(SETTINGS_SUFFIX)}, which auxssl eval reads)")
    for line in loading_lines(state["config"].get("model", {}), str(out)):
        print(f"load it with: {line}")
    return 0


def _make_cifar10_jpg(args: argparse.Namespace) -> int:
    from auxssl.data.datasets import write_cifar10_jpg

    out = write_cifar10_jpg(args.out, args.root, args.download)
    print(f"wrote {out}: use it with AUXSSL_CIFAR10_JPG={out.resolve()} and data.dataset=cifar10_jpg")
    return 0


def loading_lines(model: dict, path: str) -> list[str]:
    """Python lines that rebuild an exported backbone and load its weights: with auxssl for every backbone, and
    with torchvision alone for the torchvision architectures (standard width)."""
    if not model:
        return []
    load = f"m.load_state_dict(torch.load({path!r}, weights_only=True))"
    args = [repr(model["backbone"])]
    if model.get("cifar_stem") and not model["backbone"].startswith("timm:"):
        args.append("cifar_stem=True")
    if model.get("width", 64) != 64:
        args.append(f"width={model['width']}")
    if model.get("backbone_args"):
        args.append(f"options={model['backbone_args']!r}")
    lines = [f"import torch; from baselines import build_backbone; m = build_backbone({', '.join(args)}); {load}"]
    import torchvision

    if hasattr(torchvision.models, model["backbone"]) and model.get("width", 64) == 64:
        stem = ("m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False); m.maxpool = torch.nn.Identity(); "
                if model.get("cifar_stem") else "")
        lines.append(f"import torch, torchvision; m = torchvision.models.{model['backbone']}(); {stem}"
                     f"m.fc = torch.nn.Identity(); {load}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    from auxssl.version import __version__

    parser = argparse.ArgumentParser(prog="auxssl", description="Auxiliary tasks for faster self-supervised learning.")
    parser.add_argument("--version", action="version", version=f"auxssl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of expected errors too")
    commands = parser.add_subparsers(dest="command", required=True)

    tr = commands.add_parser("train", help="train one run from a YAML config")
    tr.add_argument("config", help="YAML file, or the name of a shipped config (auxssl configs)")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a config value, e.g. train.epochs=5 or tasks.0.weight=0.2")
    tr.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                    help="continue the run from its last checkpoint (or from CHECKPOINT); a finished run prints its "
                         "final evaluation without training")
    tr.add_argument("--allow-config-change", action="store_true",
                    help="resume even though the settings differ from the run's own (the differences are logged)")
    tr.add_argument("--init", metavar="WEIGHTS", help="start a new run from backbone weights (auxssl export output)")
    tr.add_argument("--name", help="run name (default: the config's)")
    tr.add_argument("--output-dir", help="parent folder of the run directory")
    tr.add_argument("--print-config", action="store_true",
                    help="print the resolved config (file, shipped defaults and --set applied, validated) and exit")
    tr.set_defaults(func=_train)

    cf = commands.add_parser("configs", help="list the shipped configs (usable by name in auxssl train)")
    cf.add_argument("action", nargs="?", choices=("list", "show"), default="list",
                    help="list (default) or show NAME")
    cf.add_argument("name", nargs="?", metavar="NAME", help="with show: the shipped config (or YAML file) to print")
    cf.add_argument("--resolved", action="store_true", help="with show: every setting, defaults included, validated")
    cf.set_defaults(func=_configs)

    qs = commands.add_parser("quickstart", help="offline demo: base method vs + rotation on digits, then the report")
    qs.add_argument("--method", default="simclr", help="base method (default simclr; any of auxssl configs' methods)")
    qs.add_argument("--backbone", default="resnet10", help="backbone (default resnet10)")
    qs.add_argument("--epochs", type=int, default=5, help="epochs of each run (default 5)")
    qs.add_argument("--seed", type=int, default=0, help="train.seed of both runs (default 0)")
    qs.add_argument("--output-dir", default="runs/quickstart", help="where the two runs and the report go")
    qs.add_argument("--set", action="append", metavar="KEY=VALUE", help="extra config overrides for both runs")
    qs.add_argument("--quiet", action="store_true", help="no progress bars")
    qs.set_defaults(func=_quickstart)

    ex = commands.add_parser("export", help="backbone weights as a plain state_dict for the torchvision model")
    ex.add_argument("source", help="run directory (its last checkpoint) or checkpoint file")
    ex.add_argument("--out", default="backbone.pt")
    ex.set_defaults(func=_export)

    mk = commands.add_parser("make-cifar10-jpg", help="write torchvision's CIFAR-10 as the cifar10_jpg archive")
    mk.add_argument("out", help="the .tar.gz to write, e.g. cifar10-jpg.tar.gz")
    mk.add_argument("--root", help="torchvision's CIFAR-10 folder (default: the auxssl cache)")
    mk.add_argument("--download", action="store_true", help="download CIFAR-10 through torchvision if missing")
    mk.set_defaults(func=_make_cifar10_jpg)

    report = commands.add_parser("report", help="Markdown + HTML convergence report of run directories")
    report.add_argument("runs", nargs="+", help="run directories, or folders holding them")
    report.add_argument("--out", help="output folder (default: <first run>/report)")
    report.add_argument("--title", default="auxssl convergence report")
    report.set_defaults(func=_report)

    ev = commands.add_parser("eval", help="offline kNN / linear / MLP / semi-supervised evaluation of a checkpoint")
    ev.add_argument("checkpoint", help="run directory (its last checkpoint), training checkpoint, or backbone "
                                       "state_dict (auxssl export)")
    ev.add_argument("--backbone", default=None,
                    help="architecture (default: the training checkpoint's, else resnet18); timm:<model> for timm")
    ev.add_argument("--cifar-stem", action=argparse.BooleanOptionalAction, default=None,
                    help="CIFAR stem (default: the checkpoint's, else on)")
    ev.add_argument("--width", type=int, default=None, help="ResNet width (default: the checkpoint's, else 64)")
    ev.add_argument("--dataset", default=None,
                    help="evaluation dataset (default: the run's own, from the checkpoint or the settings file "
                         "auxssl export writes; else cifar10_jpg)")
    ev.add_argument("--root", help="dataset root (folder datasets, torchvision datasets, archive path)")
    ev.add_argument("--download", action="store_true", help="allow torchvision to download the dataset")
    ev.add_argument("--k", type=int, default=None, help="kNN neighbours (default: the run's eval.knn_k, else 200)")
    ev.add_argument("--temperature", type=float, default=None,
                    help="kNN vote temperature (default: the run's eval.knn_temperature, else 0.1)")
    ev.add_argument("--linear", action="store_true", help="also train the standard linear probe")
    ev.add_argument("--linear-augmented", action="store_true",
                    help="also train the augmented linear probe (the paper's protocol: fresh random-resized crops "
                         "and flips every epoch through the frozen backbone; a backbone pass per image and epoch)")
    ev.add_argument("--mlp", action="store_true", help="also train the non-linear (MLP) probe")
    ev.add_argument("--projector-probes", action="store_true",
                    help="also a linear probe on every projector layer (linear/layer<i>/top1: 0 the backbone, the "
                         "last the projector output; needs a training checkpoint)")
    ev.add_argument("--mlp-hidden", type=int, default=1024, help="hidden width of the MLP probe (default 1024)")
    ev.add_argument("--probe-epochs", type=int, default=100, help="epochs of the linear / MLP probes (default 100)")
    ev.add_argument("--semisup", type=float, nargs="*", default=[], metavar="FRACTION",
                    help="semi-supervised fine-tuning on these label fractions, e.g. 0.01 0.1")
    ev.add_argument("--image-size", type=int, default=None,
                    help="resize images to this side before the backbone (default: the run's evaluation size, "
                         "from the checkpoint or export settings; else the dataset's stored size)")
    ev.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda | cuda:N")
    ev.add_argument("--out", help="write the results JSON here too")
    ev.set_defaults(func=_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # auxssl's notices (resume, skipped images, data layout) reach the console; other libraries' INFO lines do not
    package_logger = logging.getLogger("auxssl")
    handler = next((h for h in package_logger.handlers if getattr(h, "auxssl_console", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("auxssl: %(message)s"))
        handler.auxssl_console = True  # type: ignore[attr-defined]
        package_logger.addHandler(handler)
    else:  # main() called again in one process (tests, notebooks): today's stderr, not the first call's
        handler.stream = sys.stderr  # (setStream would flush the old one, which may be closed)
    package_logger.setLevel(logging.INFO)
    package_logger.propagate = False
    from auxssl.engine.preemption import EXIT_INTERRUPTED, Preempted

    try:
        return args.func(args)
    except Preempted as stop:
        print(f"auxssl: {stop}", file=sys.stderr)
        return stop.exit_code
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("\nauxssl: interrupted (Ctrl-C); checkpoints already written are kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UserError, FileNotFoundError, FileExistsError) as err:
        if args.debug:
            raise
        print(f"auxssl: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
