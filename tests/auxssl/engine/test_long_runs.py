"""Long runs from the command line: pre-emption, exact resume on every backend, safe resume, safe checkpoints,
errors a person reads, export lines, timm backbones, W&B."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from auxssl.cli import main
from auxssl.config import load_config, save_config
from auxssl.engine.checkpoint import atomic_save, find_last_checkpoint, load_checkpoint
from auxssl.engine.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED
from auxssl.engine.trainer import Trainer, train
from auxssl.eval.tracker import read_metrics
from baselines import Batch


def tiny(tmp_path: Path, name: str, *extra: str) -> list[str]:
    """64 digits at 16 px, ResNet-10 at width 16, BYOL (small heads) + rotation, batch 16: 4 steps per epoch."""
    return [
        f"name={name}", f"output_dir={tmp_path}", "data.dataset=digits", "data.image_size=16", "data.batch_size=16",
        "data.train_subset=64", "eval.test_subset=40", "model.backbone=resnet10", "model.width=16",
        "model.method=byol", "model.method_args={proj_hidden_dim: 64, proj_dim: 32, pred_hidden_dim: 64}",
        "tasks=[{name: rotation, weight: 0.1}]", "train.epochs=2", "train.precision=fp32", "train.progress=false",
        "train.log_every_steps=1", "eval.every_epochs=1", "optim.warmup_epochs=0.5", "optim.lr=0.1",
        "data.num_workers=0", *extra,
    ]


class Process(subprocess.Popen):
    """``python -m auxssl …`` whose output goes to temporary files (a full pipe would block a chatty child)."""

    def output(self) -> str:
        self.stderr_file.seek(0)
        return self.stderr_file.read().decode(errors="replace")


def cli(*args: str, env: dict | None = None) -> Process:
    import tempfile

    err = tempfile.TemporaryFile()  # noqa: SIM115 - open for the life of the child process
    process = Process([sys.executable, "-m", "auxssl", *args], stdout=subprocess.DEVNULL, stderr=err,
                      env={**os.environ, **(env or {})})
    process.stderr_file = err
    return process


def wait_for_records(run_dir: Path, process: Process, count: int) -> None:
    deadline = time.time() + 600  # FFCV writes its file and compiles its decoders first
    while len(read_metrics(run_dir, "train")) < count if (run_dir / "metrics.jsonl").exists() else True:
        assert process.poll() is None, process.output()[-2000:]
        assert time.time() < deadline, "no training record appeared"
        time.sleep(0.02)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(find_last_checkpoint(run_dir))["model"]


@pytest.mark.parametrize(("backend", "sig"), [("tensor", signal.SIGTERM), ("torchvision", signal.SIGUSR1),
                                              ("ffcv", signal.SIGTERM), ("tensor", signal.SIGINT)])
def test_preempted_run_checkpoints_and_resumes_bit_identically(tmp_path: Path, backend: str, sig: int) -> None:
    """SIGTERM/SIGUSR1 (and Ctrl-C) mid-epoch → checkpoint at the step boundary, exit 75 (130); ``--resume`` then
    ends with exactly the weights of the uninterrupted run (rotation labels included) and no record twice."""
    if backend == "ffcv":
        pytest.importorskip("ffcv")
    overrides = [f"data.backend={backend}", "data.num_workers=1" if backend == "ffcv" else "data.num_workers=0"]
    for name in ("reference", "stopped"):
        save_config(load_config(None, tiny(tmp_path, name, *overrides)), tmp_path / f"{name}.yaml")
    reference = cli("train", str(tmp_path / "reference.yaml"))
    stopped = cli("train", str(tmp_path / "stopped.yaml"))
    wait_for_records(tmp_path / "stopped", stopped, 2)
    stopped.send_signal(sig)
    expected = EXIT_INTERRUPTED if sig == signal.SIGINT else EXIT_PREEMPTED
    assert stopped.wait(timeout=120) == expected, stopped.output()[-2000:]
    assert "Traceback" not in stopped.output() and "--resume" in stopped.output()
    state = load_checkpoint(find_last_checkpoint(tmp_path / "stopped"))
    assert 2 <= state["step"] < 8 and state["batch_in_epoch"] > 0 or state["step"] == 4  # mid-epoch (or at its end)
    resumed = cli("train", str(tmp_path / "stopped.yaml"), "--resume")
    for process in (resumed, reference):
        assert process.wait(timeout=300) == 0, process.output()[-2000:]
    want, got = final_weights(tmp_path / "reference"), final_weights(tmp_path / "stopped")
    assert all(torch.equal(got[k], v) for k, v in want.items())
    steps = [r["step"] for r in read_metrics(tmp_path / "stopped")]
    assert steps == sorted(steps) and len([r for r in read_metrics(tmp_path / "stopped", "eval")]) == 2


def test_run_killed_before_its_first_checkpoint_restarts_without_duplicate_records(tmp_path: Path) -> None:
    save_config(load_config(None, tiny(tmp_path, "run", "train.checkpoint_every_epochs=2")), tmp_path / "run.yaml")
    process = cli("train", str(tmp_path / "run.yaml"))
    wait_for_records(tmp_path / "run", process, 2)
    process.kill()
    process.wait()
    assert find_last_checkpoint(tmp_path / "run") is None
    assert main(["train", str(tmp_path / "run.yaml"), "--resume"]) == 0
    steps = [r["step"] for r in read_metrics(tmp_path / "run", "train")]
    assert steps == list(range(1, 9))
    assert [r["epoch"] for r in read_metrics(tmp_path / "run", "eval")] == [1, 2]


def test_resume_refuses_other_settings_and_a_finished_run_is_not_relabelled(tmp_path: Path, capsys) -> None:
    config = load_config(None, tiny(tmp_path, "run", "train.epochs=1"))
    final = train(config)
    # a finished run resumed with its own settings prints its numbers and trains nothing
    assert train(config, resume=True) == final
    assert [r["step"] for r in read_metrics(config.run_dir, "train")][-1] == 4
    changed = load_config(None, tiny(tmp_path, "run", "train.epochs=2", "train.seed=1"))
    with pytest.raises(Exception, match=r"train.epochs: 1 → 2.*train.seed: 0 → 1"):
        Trainer(changed, resume=True)
    assert load_config(config.run_dir / "config.yaml").train.seed == 0  # nothing rewritten
    # the CLI says so in one line, exit 2
    save_config(changed, tmp_path / "changed.yaml")
    capsys.readouterr()
    assert main(["train", str(tmp_path / "changed.yaml"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("auxssl: error: ") and "--allow-config-change" in err
    # explicitly allowed: continues to epoch 2
    assert main(["train", str(tmp_path / "changed.yaml"), "--resume", "--allow-config-change"]) == 0
    assert read_metrics(config.run_dir, "eval")[-1]["epoch"] == 2


def test_quickstart_into_a_folder_of_another_seed_is_refused(tmp_path: Path, capsys) -> None:
    args = ["quickstart", "--epochs", "1", "--output-dir", str(tmp_path), "--quiet", "--set", "data.train_subset=128",
            "--set", "eval.test_subset=64", "--set", "model.width=8"]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("auxssl: error: ") and "train.seed: 0 → 1" in err
    assert "--output-dir" in err and "--allow-config-change" not in err  # only flags quickstart accepts
    assert json.loads((tmp_path / "simclr" / "run.json").read_text())["seed"] == 0
    assert main(args) == 0  # the same run again: its numbers, no training
    assert "[quickstart] simclr: knn/top1" in capsys.readouterr().out


def test_training_checkpoints_load_weights_only_and_pickled_objects_are_refused(tmp_path: Path, capsys) -> None:
    config = load_config(None, tiny(tmp_path, "run", "train.epochs=1"))
    train(config)
    checkpoint = find_last_checkpoint(config.run_dir)
    torch.load(checkpoint, weights_only=True)  # every piece of state is weights-only readable
    assert main(["eval", str(checkpoint), "--dataset", "digits", "--k", "5", "--image-size", "16",
                 "--device", "cpu"]) == 0
    assert "knn/top1" in json.loads(capsys.readouterr().out)

    evil = tmp_path / "evil.pt"
    torch.save({"backbone": {}, "payload": Trainer}, evil)  # a pickled class: would run code on a full load
    assert main(["eval", str(evil), "--dataset", "digits"]) == 2
    assert "refusing to load" in capsys.readouterr().err


def test_interrupted_checkpoint_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "checkpoints" / "step-00000001.pt"
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        atomic_save({"x": torch.zeros(2), "bad": lambda: None}, target)  # cannot be pickled
    assert list(target.parent.iterdir()) == []
    stale = tmp_path / "run" / "checkpoints" / ".step-00000004.pt.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"partial")
    train(load_config(None, tiny(tmp_path, "run", "train.epochs=1", "eval.every_epochs=0")))
    assert not stale.exists()
    assert read_metrics(tmp_path / "run", "eval") == []  # eval.every_epochs: 0 never evaluates


def test_errors_are_one_line_with_status_2_and_a_traceback_only_with_debug(tmp_path: Path) -> None:
    process = cli("train", str(tmp_path / "missing.yaml"))
    assert process.wait(timeout=60) == 2
    err = process.output()
    assert err.startswith("auxssl: error: config") and "Traceback" not in err and len(err.strip().splitlines()) == 1
    process = cli("--debug", "train", str(tmp_path / "missing.yaml"))
    assert process.wait(timeout=60) == 1 and "Traceback" in process.output()
    process = cli("train", "byol_cifar10", "--set", "train.epochs=ten")
    assert process.wait(timeout=60) == 2 and "train.epochs: expected int" in process.output()


@pytest.mark.parametrize(("backbone", "extra"), [
    ("resnet10", ["model.width=16"]),
    ("resnet18", ["model.width=8"]),
    ("timm:vit_tiny_patch16_224", ["model.cifar_stem=false", "model.width=64",
                                   "model.backbone_args={img_size: 16, patch_size: 4}"]),
])
def test_export_prints_loading_lines_that_work(tmp_path: Path, capsys, backbone: str, extra: list[str]) -> None:
    if backbone.startswith("timm:"):
        pytest.importorskip("timm")
    config = load_config(None, tiny(tmp_path, "run", "train.epochs=1", "eval.every_epochs=0",
                                    f"model.backbone={backbone}", *extra))
    train(config)
    weights = tmp_path / "backbone.pt"
    capsys.readouterr()
    assert main(["export", str(config.run_dir), "--out", str(weights)]) == 0
    output = capsys.readouterr().out.splitlines()
    lines = [line.split("load it with: ", 1)[1] for line in output if "load it with" in line]
    assert lines
    expected = load_checkpoint(weights)
    for line in lines:
        scope: dict = {}
        exec(line, scope)
        assert all(torch.equal(scope["m"].state_dict()[k], v) for k, v in expected.items())


def test_init_starts_a_new_run_from_exported_weights(tmp_path: Path) -> None:
    config = load_config(None, tiny(tmp_path, "first", "train.epochs=1", "eval.every_epochs=0"))
    train(config)
    weights = tmp_path / "backbone.pt"
    assert main(["export", str(config.run_dir), "--out", str(weights)]) == 0
    second = Trainer(load_config(None, tiny(tmp_path, "second", "train.epochs=1")), init=weights)
    exported = load_checkpoint(weights)
    for name, value in second.model.backbone.state_dict().items():
        assert torch.equal(value, exported[name])
    target = second.model.base.target_backbone.state_dict()
    assert all(torch.equal(target[k], v) for k, v in exported.items())  # the target starts from them too


def test_rotation_prediction_trains_a_timm_vit() -> None:
    pytest.importorskip("timm")
    from auxssl import AuxWrapper, RotationPrediction
    from baselines import BYOL, build_backbone

    vit = build_backbone("timm:vit_tiny_patch16_224", options={"img_size": 16, "patch_size": 4})
    model = AuxWrapper(BYOL(vit, proj_hidden_dim=64, proj_dim=32, pred_hidden_dim=64), [RotationPrediction()])
    views = [torch.rand(8, 3, 16, 16) for _ in range(2)]
    out = model(views)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and "loss/rotation" in out
    assert vit.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.tasks[0].head is not None


def test_wandb_offline_run_is_continued_by_resume(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    save_config(load_config(None, tiny(tmp_path, "run", "logging.wandb=true", "train.epochs=1")), tmp_path / "a.yaml")
    save_config(load_config(None, tiny(tmp_path, "run", "logging.wandb=true", "train.epochs=1")), tmp_path / "b.yaml")
    assert cli("train", str(tmp_path / "a.yaml"), env=env).wait(timeout=300) == 0
    run_id = (tmp_path / "run" / "wandb_id.txt").read_text()
    assert cli("train", str(tmp_path / "b.yaml"), "--resume", env=env).wait(timeout=300) == 0
    assert (tmp_path / "run" / "wandb_id.txt").read_text() == run_id
    offline_runs = list((tmp_path / "run" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline_runs) >= 1
    assert not (tmp_path / "run" / "tensorboard").exists()  # TensorBoard only when logging.tensorboard is set


def test_channels_last_stays_off_for_8_channel_convolutions_on_cpu(tmp_path: Path) -> None:
    """torch 2.15's oneDNN corrupts the heap in channels-last backward of 8-channel convolutions when the batch size
    changes (a batch shortened by a corrupt image); such models keep the default layout on CPU."""
    narrow = Trainer(load_config(None, tiny(tmp_path, "narrow", "model.width=8")))
    wide = Trainer(load_config(None, tiny(tmp_path, "wide", "model.width=16")))
    assert not narrow.channels_last and wide.channels_last
    for batch in (8, 7):  # the sequence that crashed with channels_last
        narrow.train_step(Batch([torch.rand(batch, 3, 16, 16) for _ in range(2)]))


def test_a_second_ctrl_c_stops_at_once() -> None:
    """The first Ctrl-C asks for a checkpoint at the step boundary; the second raises at once; on leaving the
    guard the previous handler is back."""
    from auxssl.engine.preemption import PreemptionGuard

    before = signal.getsignal(signal.SIGINT)
    with PreemptionGuard() as guard:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs between bytecodes
        assert guard.requested() and guard.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is before


def test_cuda_rng_state_is_the_training_devices_only(monkeypatch) -> None:
    """Under torchrun every rank sees every GPU of its node: saving all their states made a resume with fewer
    visible GPUs fail (IndexError). Only the training device's state is saved and restored (CUDA simulated)."""
    from auxssl.engine.checkpoint import rng_state, set_rng_state

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("saved every visible GPU's state"))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.tensor([device.index], dtype=torch.uint8))
    state = rng_state(torch.device("cuda", 3))
    assert state["cuda"].tolist() == [3] and "cuda" not in rng_state(torch.device("cpu"))
    restored: list = []
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("restored every GPU"))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((s.tolist(), device)))
    set_rng_state(state, torch.device("cuda", 0))  # resumed where only one GPU is visible
    older = {**state, "cuda": [torch.tensor([k], dtype=torch.uint8) for k in range(8)]}  # all 8 GPUs' states
    set_rng_state(older, torch.device("cuda", 1))
    set_rng_state(state, torch.device("cpu"))  # a CPU resume ignores the CUDA state
    assert restored == [([3], torch.device("cuda", 0)), ([1], torch.device("cuda", 1))]


def test_torchrun_forwards_sigusr1_with_the_documented_launch_line(tmp_path: Path) -> None:
    """SLURM's warning signal reaches the workers only when torchrun is told to forward it (the README's line):
    they checkpoint at the step boundary, the run directory says it was pre-empted (what a job script tests to
    requeue: torchrun's own status is 1 either way), and the same command with --resume finishes the run."""
    save_config(load_config(None, tiny(tmp_path, "slurm", "train.epochs=12", "eval.every_epochs=6")),
                tmp_path / "slurm.yaml")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
              "--signals-to-handle=SIGTERM,SIGINT,SIGUSR1", "--shutdown-timeout=120", "-m", "auxssl", "train",
              str(tmp_path / "slurm.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    err = tmp_path / "torchrun.err"
    with err.open("wb") as stderr:
        process = subprocess.Popen(launch, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        deadline = time.time() + 300
        while not (tmp_path / "slurm" / "metrics.jsonl").exists() or len(read_metrics(tmp_path / "slurm", "train")) < 3:
            assert process.poll() is None and time.time() < deadline, err.read_text()[-3000:]
            time.sleep(0.1)
        process.send_signal(signal.SIGUSR1)
        process.wait(timeout=180)
    marker = tmp_path / "slurm" / "preempted"
    assert marker.exists(), err.read_text()[-3000:]
    signal_name, checkpoint = marker.read_text().split()
    state = load_checkpoint(Path(checkpoint))
    assert signal_name == "SIGUSR1" and 3 <= state["step"] < 48
    resumed = subprocess.run([*launch, "--resume"], capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not marker.exists() and load_checkpoint(find_last_checkpoint(tmp_path / "slurm"))["step"] == 48


def test_srun_without_torchrun_is_refused(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    save_config(load_config(None, tiny(tmp_path, "srun")), tmp_path / "srun.yaml")
    assert main(["train", str(tmp_path / "srun.yaml")]) == 2
    assert "4 SLURM tasks but no torchrun" in capsys.readouterr().err
    assert not (tmp_path / "srun").exists()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc; torchrun starts its workers in sessions of their own, so
    killing torchrun's process group leaves them running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def flat_tensors(obj: object, prefix: str = "") -> dict[str, torch.Tensor | object]:
    """Every leaf of a nested checkpoint entry by its path (tensors and plain values)."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in flat_tensors(value, f"{prefix}/{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in flat_tensors(value, f"{prefix}/{i}").items()}
    return {prefix: obj}


def same(a: object, b: object) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.parametrize("case", ["byol_rotation", "swav_queue"])
def test_two_process_run_killed_mid_epoch_resumes_bit_identically(tmp_path: Path, case: str) -> None:
    """Two gloo processes (torchrun), one run killed with SIGKILL after a mid-epoch checkpoint and resumed, the
    other uninterrupted: the same final weights and, rank by rank, the same random streams and buffers (SwAV's
    queue holds each rank's own embeddings). Before, every rank resumed with rank 0's RNG and queue."""
    method = (["model.method=swav", "tasks=[]", "model.method_args={proj_hidden_dim: 32, proj_dim: 16, "
               "num_prototypes: 10, queue_length: 32, epoch_queue_starts: 1}"] if case == "swav_queue" else [])
    for name in ("reference", "killed"):  # 32 images and 4 steps of 8 per rank and epoch; 16 steps
        save_config(load_config(None, tiny(tmp_path, name, "train.epochs=4", "train.checkpoint_every_steps=2",
                                           "data.backend=tensor",
                                           "eval.every_epochs=0", "eval.at_start=false", *method)),
                    tmp_path / f"{name}.yaml")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "auxssl",
              "train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = subprocess.Popen([*launch, str(tmp_path / "reference.yaml")], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, env=env)
    with (tmp_path / "killed.err").open("wb") as err:
        killed = subprocess.Popen([*launch, str(tmp_path / "killed.yaml")], stdout=subprocess.DEVNULL, stderr=err,
                                  env=env)
        deadline = time.time() + 300
        run = tmp_path / "killed"
        while not (run / "metrics.jsonl").exists() or len(read_metrics(run, "train")) < 7:
            assert killed.poll() is None and time.time() < deadline, (tmp_path / "killed.err").read_text()[-3000:]
            time.sleep(0.01)
        tree = process_tree(killed.pid)
        assert len(tree) >= 3, tree  # torchrun and its two workers
        for pid in reversed(tree):  # the workers first: nothing gets to write after this
            os.kill(pid, signal.SIGKILL)
        killed.wait(timeout=60)
    time.sleep(1)
    assert all(not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
               for pid in tree)
    state = load_checkpoint(find_last_checkpoint(tmp_path / "killed"))
    assert state["step"] < 16 and state["batch_in_epoch"] > 0, "the run was not killed mid-epoch"
    assert len(read_metrics(tmp_path / "killed", "train")) < 16
    resumed = subprocess.run([*launch, str(tmp_path / "killed.yaml"), "--resume"], capture_output=True, text=True,
                             timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert reference.wait(timeout=600) == 0, reference.stderr.read().decode()[-3000:]
    want = load_checkpoint(find_last_checkpoint(tmp_path / "reference"))
    got = load_checkpoint(find_last_checkpoint(tmp_path / "killed"))
    assert got["step"] == want["step"] == 16
    assert all(torch.equal(got["model"][k], v) for k, v in want["model"].items())
    expected, actual = flat_tensors(want["processes"]), flat_tensors(got["processes"])
    assert expected.keys() == actual.keys() and all(same(actual[k], v) for k, v in expected.items())
    ranks = [flat_tensors(p) for p in want["processes"]]  # and they are per-rank, not copies of one
    assert not torch.equal(ranks[0]["/rng/torch"], ranks[1]["/rng/torch"])
    if case == "swav_queue":
        queue = "/buffers/queues.0.items"
        assert ranks[0][queue].abs().sum() > 0 and not torch.equal(ranks[0][queue], ranks[1][queue])
    losses = [[r["loss"] for r in read_metrics(tmp_path / run, "train")] for run in ("reference", "killed")]
    assert losses[0] == losses[1]


def test_two_process_evaluation_equals_one_process_evaluation_of_the_same_weights(tmp_path: Path) -> None:
    """torchrun with 2 processes: each rank extracts and decodes only its shards, the kNN is split over the
    ranks and the linear probe trains on rank 0 on the gathered features; the logged figures equal one process
    evaluating the final weights on the whole sets."""
    from auxssl.engine.build import build_datasets
    from auxssl.eval.linear import ProbeConfig
    from auxssl.eval.offline import evaluate_backbone, load_backbone

    config = load_config(None, tiny(tmp_path, "ddp", "train.epochs=1", "eval.linear=true", "eval.precision=fp32",
                                    "eval.at_start=true", "eval.test_subset=41"))  # 41: uneven shards
    save_config(config, tmp_path / "ddp.yaml")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "auxssl",
              "train", str(tmp_path / "ddp.yaml")]
    result = subprocess.run(launch, check=False, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    logged = read_metrics(tmp_path / "ddp", "eval")
    assert [r["epoch"] for r in logged] == [0, 1] and "linear/top1" in logged[-1]
    backbone, _ = load_backbone(find_last_checkpoint(tmp_path / "ddp"))
    _, bank, test = build_datasets(config)
    single = evaluate_backbone(backbone, bank, test, linear=ProbeConfig(), image_size=16, precision="fp32",
                               num_workers=0)
    assert {k: logged[-1][k] for k in single} == pytest.approx(single, abs=1e-6)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_of_one_process_each_train_one_run(tmp_path: Path) -> None:
    """Two torchrun launchers meeting at a c10d rendezvous, as on two nodes (one process each): on the second
    node RANK is 1 but LOCAL_RANK 0. The run trains, evaluates and checkpoints as one run: both launchers exit 0,
    one record per step, and the checkpoint holds both ranks' own random streams."""
    config = load_config(None, tiny(tmp_path, "nodes", "train.epochs=1", "data.backend=tensor"))
    save_config(config, tmp_path / "nodes.yaml")
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
              f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--rdzv-id=auxssl-test", "-m", "auxssl", "train",
              str(tmp_path / "nodes.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(launch, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    errors = [node.communicate(timeout=600)[1].decode(errors="replace") for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(e[-2000:] for e in errors)
    train = read_metrics(tmp_path / "nodes", "train")  # 64 images, global batch 16: 8 per rank, 4 steps
    assert [r["step"] for r in train] == [1, 2, 3, 4] and train[-1]["images_seen"] == 64
    assert [r["epoch"] for r in read_metrics(tmp_path / "nodes", "eval")] == [1]
    processes = load_checkpoint(find_last_checkpoint(tmp_path / "nodes"))["processes"]
    assert len(processes) == 2
    assert not torch.equal(processes[0]["rng"]["torch"], processes[1]["rng"]["torch"])
