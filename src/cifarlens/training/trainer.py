"""The training loop: config -> data -> model -> run directory.

Data stays as uint8 tensors; each batch is augmented, normalised and moved to the
device as a whole. Every epoch ends with an atomic checkpoint, so ``--resume``
continues a killed run and, with the same seed, ends with the same numbers.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import logging
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cifarlens import run as rundir
from cifarlens.config import build_config, read_yaml, save_yaml, to_dict
from cifarlens.data import (
    Augmenter,
    EpochImages,
    RunData,
    Split,
    iterate_batches,
    model_input,
    num_batches,
    prepare_data,
)
from cifarlens.errors import ConfigError, RunDirError, TrainingDiverged
from cifarlens.evaluation.predict import predict_logits
from cifarlens.io import atomic_write_text
from cifarlens.models import create_model
from cifarlens.training import distributed
from cifarlens.training.checkpoint import load_checkpoint, restore_model, rng_state, save_checkpoint, set_rng_state
from cifarlens.training.config import TrainConfig
from cifarlens.training.device import autocast, configure_cpu, resolve_device, resolve_precision
from cifarlens.training.optim import build_optimizer, build_scheduler, freeze_finished_groups
from cifarlens.training.transfer import freeze, input_normalization, model_arguments, train_mode

METRIC_COLUMNS = [
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
    "lr", "seconds", "image_size", "images_per_s", "elapsed", "train_clock", "gflops",
    "data_s", "forward_s", "backward_s", "step_s",
]  # fmt: skip


def default_out(model: str) -> str:
    """``runs/MODEL-YYYYmmdd-HHMMSS``: where a run goes without ``--out``."""
    return str(Path("runs") / f"{model}-{datetime.now():%Y%m%d-%H%M%S}")


def new_run_dir(cfg: TrainConfig) -> Path:
    """The run folder for a new run, not made yet (``start_run_dir`` makes it); refuses one that holds a run."""
    out = Path(cfg.out or default_out(cfg.model))
    if (out / rundir.CONFIG).exists():
        raise RunDirError(f"run directory {out} already holds a run; continue it with --resume {out} or pick another --out")
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file; pick a folder path")
    return out


def start_run_dir(out: Path, cfg: TrainConfig, data: RunData, machine: dict) -> None:
    """Make the run folder and write its config.yaml and provenance.json. Called only once the options and
    data are known to work, so that a bad option or missing data leaves no empty run folder."""
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(run_config(cfg, data), out / rundir.CONFIG)
    rundir.write_json(out / rundir.PROVENANCE, rundir.provenance() | machine)


def run_config(cfg: TrainConfig, data: RunData) -> dict:
    """What config.yaml stores: ``cfg`` with ``data_dir`` set to the folder the data was read from,
    absolute, so evaluate/explain/--resume find the same data from any folder or shell."""
    return to_dict(dataclasses.replace(cfg, data_dir=str(data.root.resolve())))


def load_run_config(run: Path) -> TrainConfig:
    """The resolved config saved in a run directory."""
    path = run / rundir.CONFIG
    if not path.is_file():
        raise RunDirError(f"{run} is not a cifarlens run directory (no {rundir.CONFIG}); check the path")
    return build_config(TrainConfig, read_yaml(path), sources=(str(path),))


def train(
    cfg: TrainConfig,
    *,
    resume: str | Path | None = None,
    data_dir: str | Path | None = None,
    console: Console | None = None,
    data: RunData | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> Path:
    """Train as ``cfg`` says (or continue the run at ``resume``); return the run directory.

    ``data_dir`` with ``resume``: where the data is now, if it moved since the run began; the run's
    config.yaml then records the new folder.

    ``cfg.features_from`` fits a linear probe instead (``cifarlens.training.features``); with
    ``cfg.distributed`` this is one process of a torchrun job (``cifarlens.training.distributed``).
    ``on_epoch_end(row)`` gets each epoch's metrics row after its checkpoint is written; an
    exception it raises (e.g. a sweep pruning the trial) stops training with that checkpoint kept.
    """
    console = console or Console(soft_wrap=True)  # paths printed whole, as the CLI console does
    started = time.perf_counter()
    if resume is not None:
        cfg = load_run_config(Path(resume))
        if cfg.features_from:
            raise RunDirError(f"{resume} is a linear-probe run (--features-from): nothing to resume, start it again")
        if data_dir:
            cfg = dataclasses.replace(cfg, data_dir=str(data_dir))
    elif cfg.features_from:
        from cifarlens.training.features import linear_probe

        return linear_probe(cfg, console=console, data=data)
    ctx, device = distributed.setup(cfg.distributed, resolve_device(cfg.device))
    try:
        rank_console = console if ctx.main else Console(quiet=True)
        return _train(cfg, ctx, device, resume, bool(data_dir), rank_console, data, started, on_epoch_end)
    finally:
        distributed.teardown(ctx)


def _train(
    cfg: TrainConfig,
    ctx,
    device,
    resume,
    moved: bool,
    console: Console,
    data: RunData | None,
    started: float,
    on_epoch_end: Callable[[dict], None] | None,
) -> Path:
    if resume is not None:
        out = Path(resume)
    else:
        # Every rank checks the folder before rank 0 writes into it; all use rank 0's default name.
        cfg = distributed.broadcast(cfg if cfg.out else dataclasses.replace(cfg, out=default_out(cfg.model)), ctx)
        out = new_run_dir(cfg)
        distributed.barrier(ctx)
    precision = resolve_precision(cfg.precision, device)
    configure_cpu(device, cfg.threads, cfg.keep_freed_memory)
    if data is None:
        if not ctx.main:  # rank 0 downloads a missing dataset alone; the others read it after
            distributed.barrier(ctx)
        data = prepare_data(
            cfg.data_dir or None, download=cfg.download, subset=cfg.subset, val_size=cfg.val_size, seed=cfg.seed,
            saved_in=out / rundir.CONFIG if resume is not None and not moved else None,
        )
        if ctx.main:
            distributed.barrier(ctx)
    if len(data.train) < 2:
        raise ConfigError("the training split has fewer than 2 images; use a larger --subset")

    torch.manual_seed(cfg.seed)
    stored_args, build_args = model_arguments(cfg)
    model = create_model(cfg.model, num_classes=len(data.classes), **build_args)
    mean, std = input_normalization(cfg, model)
    spec = rundir.ModelSpec(
        name=cfg.model,
        kwargs=stored_args,
        num_classes=len(data.classes),
        classes=data.classes,
        mean=mean,
        std=std,
        image_size=cfg.image_size,
    )
    frozen = freeze(model, cfg.freeze)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)

    batch_size = min(cfg.batch_size, len(data.train))
    if batch_size < 2 * ctx.world:
        raise ConfigError(f"--batch-size {batch_size} leaves fewer than 2 images per process for {ctx.world} processes")
    # A last batch of fewer than 2 images per process breaks BatchNorm in train mode.
    drop_last = 0 < len(data.train) % batch_size < 2 * ctx.world
    steps_per_epoch = num_batches(len(data.train), batch_size, drop_last)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    flops_per_image: dict[int, float] = {}  # image side -> training FLOPs per image
    for size in sorted({cfg.epoch_image_size(epoch) for epoch in range(cfg.epochs)}, reverse=True):
        try:
            size_spec = dataclasses.replace(spec, image_size=size)
            flops_per_image[size] = training_flops_per_image(
                model, data.train.images[:2], size_spec, device, memory_format, precision
            )
        except RuntimeError as err:  # the first forward pass, before the run is written: a fixed-size head
            reason = str(err).splitlines()[0]
            flag = "--image-size" if size == spec.image_size else "--early-size"
            raise ConfigError(f"model {cfg.model} does not take {size}x{size} inputs ({reason}); "
                              f"pick another {flag}, or a model with global pooling") from None
    start_epoch, rows = 0, []
    if resume is not None:
        ckpt = load_checkpoint(out / rundir.CHECKPOINT)
        restore_model(model, ckpt, out / rundir.CHECKPOINT)
        optimizer.load_state_dict(ckpt.state["optimizer"])
        scheduler.load_state_dict(ckpt.state["scheduler"])
        scaler.load_state_dict(ckpt.state["scaler"])
        set_rng_state(ckpt.state["rng"])
        start_epoch = ckpt.epoch
        rows = [r for r in _read_metrics(out / rundir.METRICS) if int(r["epoch"]) <= start_epoch]
        console.print(f"resuming {out} after epoch {start_epoch}/{cfg.epochs}")
        if moved and ctx.main:  # record where the data is now, so evaluate/explain find it without --data-dir
            save_yaml(run_config(cfg, data), out / rundir.CONFIG)
    else:
        _init_from_data(model, data, spec, cfg.seed, device, memory_format)
        if ctx.main:
            start_run_dir(out, cfg, data, {"device": str(device), "precision": precision, "world_size": ctx.world})

    console.print(
        f"[bold]{cfg.model}[/] on {device.type} ({precision}), {len(data.train)} train / "
        f"{len(data.val) if data.val else 0} val / {len(data.test)} test images, {cfg.epochs} epochs -> {out}"
        + (f", {ctx.world} processes" if ctx.world > 1 else "")
    )
    if frozen:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        console.print(f"--freeze {cfg.freeze}: {len(frozen)} tensors frozen, {trainable:,} parameters trained")
    augment = Augmenter(cfg.augment, cfg.crop_padding, cfg.cutout_size, cfg.color_brightness, cfg.color_contrast)
    epoch_images = EpochImages(data.train.images, cfg.augment, cfg.seed)
    if cfg.compile and device.type == "cpu":
        # Inductor's C++ toolchain probe warns "No CUDA runtime is found" on every CPU-only machine.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    wrapped = distributed.wrap(model, ctx, device)
    forward = torch.compile(wrapped) if cfg.compile else wrapped
    writer = _tensorboard(out) if cfg.tensorboard and ctx.main else None
    elapsed = float(rows[-1]["elapsed"]) if rows else 0.0
    # Seconds since the run started, without the per-epoch evaluations: what time-to-accuracy counts.
    train_clock = float(rows[-1].get("train_clock") or 0.0) if rows else 0.0
    train_clock += time.perf_counter() - started
    phase_timing = device.type == "cpu"  # CPU ops are synchronous, so wall clocks split the step honestly

    for epoch in range(start_epoch, cfg.epochs):
        # Data order and augmentation draw from a per-epoch generator, so a resumed run
        # sees exactly the batches an uninterrupted one would.
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        t0 = time.perf_counter()
        train_mode(model)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        phases = dict.fromkeys(("data_s", "forward_s", "backward_s", "step_s"), 0.0)
        with _progress(console) as progress:
            task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch, loss=math.nan, acc=0.0, ips=0.0)
            train_split = Split(epoch_images(epoch, gen), data.train.labels)
            batches = iterate_batches(train_split, batch_size, shuffle=True, generator=gen, drop_last=drop_last)
            tick = time.perf_counter()
            # Early epochs feed smaller images than the run's size: the net's global pooling takes any size.
            size = cfg.epoch_image_size(epoch)
            window = size if size != spec.image_size and cfg.early_mode == "crop" else None
            for step, (images, labels) in enumerate(batches):
                images, labels = distributed.shard(augment(images, gen, window), labels, ctx)
                x = model_input(images.to(device, non_blocking=True), spec.mean, spec.std, size)
                x = x.contiguous(memory_format=memory_format)
                y = labels.to(device, non_blocking=True)
                tick = _lap(phases, "data_s", tick)
                if not ctx.active:  # DDP expects a gradient for every parameter it was built with
                    freeze_finished_groups(optimizer)
                with autocast(device, precision):
                    logits = forward(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                tick = _lap(phases, "forward_s", tick)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                tick = _lap(phases, "backward_s", tick)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                loss_sum += loss.detach() * len(y)
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
                # A sync per step costs nothing on CPU; on GPU check every 20 steps.
                if device.type == "cpu" or step % 20 == 0 or step == steps_per_epoch - 1:
                    mean_loss = loss_sum.item() / seen
                    if not math.isfinite(mean_loss):
                        last = f"epoch {epoch}" if epoch else "none: no epoch finished"
                        raise TrainingDiverged(
                            f"loss became {mean_loss} in epoch {epoch + 1} step {step + 1}; stopped, last good "
                            f"checkpoint kept ({last}); lower --lr or use --precision fp32"
                        )
                    progress.update(
                        task, completed=step + 1, loss=mean_loss, acc=correct.item() / seen,
                        ips=seen / (time.perf_counter() - t0),
                    )  # fmt: skip
                tick = _lap(phases, "step_s", tick)
        train_seconds = time.perf_counter() - t0
        train_clock += train_seconds
        total_loss, total_correct, seen = distributed.sum_across([loss_sum, correct, seen], ctx, device)
        row = {
            "epoch": epoch + 1,
            "train_loss": total_loss / seen,
            "train_acc": total_correct / seen,
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": seen / train_seconds,
            "train_clock": train_clock,
            "image_size": size,
            "gflops": flops_per_image[size] * seen / train_seconds / 1e9,
        }
        if phase_timing:
            row |= phases
        if not ctx.main:  # rank 0 evaluates and writes; the others go on to the next epoch's all-reduce
            continue
        if data.val is not None:
            row["val_loss"], row["val_acc"] = _score(model, data.val, spec, device, precision)
        if cfg.eval_test_every_epoch or (epoch + 1 == cfg.epochs and cfg.evaluate):
            row["test_loss"], row["test_acc"] = _score(model, data.test, spec, device, precision)
        row["seconds"] = time.perf_counter() - t0
        elapsed += row["seconds"]
        row["elapsed"] = elapsed
        rows.append(row)
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
        }
        # Metrics first: a kill between the two leaves a row that resume drops, never a checkpoint without its row.
        _write_metrics(out / rundir.METRICS, rows)
        save_checkpoint(out / rundir.CHECKPOINT, epoch + 1, model, spec, state)
        if writer is not None:
            for key, value in row.items():
                if key != "epoch" and value != "":
                    writer.add_scalar(key, value, epoch + 1)
        console.print(_epoch_line(row, cfg.epochs))
        if on_epoch_end is not None:
            on_epoch_end(row)

    if writer is not None:
        writer.close()
    if not ctx.main:
        return out
    rundir.save_weights(model, spec, out / rundir.WEIGHTS)
    _write_train_summary(out, rows, cfg, device, precision)
    if cfg.evaluate:
        from cifarlens.evaluation import evaluate_run

        evaluate_run(out, split="test", data=data, device=str(device), console=console)
        if cfg.tta:
            evaluate_run(
                out, split="test", tta=True, tta_translate=cfg.tta_translate, data=data, device=str(device),
                console=console,
            )  # fmt: skip
    if cfg.report:
        from cifarlens.evaluation.report import write_report

        console.print(f"report: {write_report([out], out / 'report.html')}")
    console.print(f"run saved to {out}")
    return out


def _lap(phases: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    phases[name] += now - since
    return now


def training_flops_per_image(model, images, spec, device, memory_format, precision) -> float:
    """FLOPs of one forward + backward pass per image (torch's FlopCounterMode, on a copy of the model)."""
    from torch.utils.flop_counter import FlopCounterMode

    probe = train_mode(copy.deepcopy(model))
    x = model_input(images.to(device), spec.mean, spec.std, spec.image_size).contiguous(memory_format=memory_format)
    # fork_rng: the probe's dropout must not move the RNG stream a resumed run restores.
    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        with autocast(device, precision):
            out = probe(x)
        out.float().sum().backward()
    return counter.get_total_flops() / len(images)


def _init_from_data(model, data: RunData, spec, seed: int, device, memory_format, n: int = 5000) -> None:
    """Models with data-dependent layers (e.g. airnet's whitening) fit them on up to ``n`` training images."""
    init = getattr(model, "init_from_data", None)
    if init is None:
        return
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train), generator=gen)[:n]
    x = model_input(data.train.images[idx].to(device), spec.mean, spec.std, spec.image_size)
    init(x.contiguous(memory_format=memory_format))


def _score(model, split, spec, device, precision) -> tuple[float, float]:
    logits = predict_logits(
        model, split.images, mean=spec.mean, std=spec.std, image_size=spec.image_size,
        device=str(device), precision=precision,
    )  # fmt: skip
    loss = F.cross_entropy(logits, split.labels).item()
    acc = (logits.argmax(1) == split.labels).float().mean().item()
    train_mode(model)
    return loss, acc


def _epoch_line(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']:>3}/{epochs}", f"loss {row['train_loss']:.4f}", f"acc {row['train_acc']:.2%}"]
    if "val_acc" in row:
        parts.append(f"val {row['val_acc']:.2%}")
    if "test_acc" in row:
        parts.append(f"test {row['test_acc']:.2%}")
    parts += [f"lr {row['lr']:.2e}", f"{row['images_per_s']:.0f} img/s", f"{row['seconds']:.1f}s"]
    return "  ".join(parts)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.2%} {task.fields[ips]:.0f} img/s"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def _write_metrics(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_train_summary(out: Path, rows: list[dict], cfg: TrainConfig, device, precision: str) -> None:
    path = out / rundir.SUMMARY
    import json

    summary = json.loads(path.read_text()) if path.is_file() else {}
    last = rows[-1]
    summary["train"] = {
        "model": cfg.model,
        "epochs": int(last["epoch"]),
        "seconds": float(last["elapsed"]),
        "final_train_loss": float(last["train_loss"]),
        "final_train_acc": float(last["train_acc"]),
        "device": str(device),
        "precision": precision,
    }
    for key in ("val_acc", "test_acc"):
        if last.get(key) not in (None, ""):
            summary["train"][f"final_{key}"] = float(last[key])
    rundir.write_json(path, summary)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package; pip install 'cifarlens[tensorboard]'") from None
    return SummaryWriter(str(out / "tensorboard"))
