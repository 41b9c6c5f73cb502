"""The training loop: config -> data -> model -> run directory, in parts.

``train(cfg)`` starts a run and ``resume(run_dir)`` continues one; both go through
``setup(...) -> TrainState``, then ``train_one_epoch`` and ``evaluate_epoch`` per epoch, then
``finish``. Data stays as uint8 tensors; each batch is augmented, normalised and moved to the
device as a whole. Every epoch ends with an atomic checkpoint, so ``resume`` continues a killed
run and, with the same seed, ends with the same numbers.

On a CUDA GPU, where the fast recipes train in seconds, the loop keeps the host out of the way: the training
images, their order and their augmentation live on the device (drawn from a generator there), metrics are
read once per epoch, ``--compile`` compiles every batch shape before the clock starts, the epoch is timed
with CUDA events, and epoch-end checkpoints are written every ``--checkpoint-every`` seconds and at the
end, on a background thread.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

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
from cifarlens.device import autocast, configure_cpu, resolve_device, resolve_precision
from cifarlens.errors import ConfigError, RunDirError, TrainingDiverged, TrainingInterrupted, first_line
from cifarlens.models import Capabilities, create_model, model_capabilities
from cifarlens.run import ModelSpec, Predictor, RunDir
from cifarlens.training import distributed
from cifarlens.training.config import TrainConfig
from cifarlens.training.optim import build_optimizer, build_scheduler, freeze_finished_groups
from cifarlens.training.rng import rng_state, set_rng_state
from cifarlens.training.runs import (
    default_out,
    load_run_config,
    new_run_dir,
    run_config,
    start_run_dir,
    write_train_summary,
)
from cifarlens.training.saving import CheckpointWriter
from cifarlens.training.stopping import StopRequest, stop_on_signals
from cifarlens.training.transfer import freeze, model_arguments, train_mode

EpochHook = Callable[[dict], None]
PHASES = ("data_s", "forward_s", "backward_s", "step_s")


@dataclass
class TrainState:
    """Everything a run holds between epochs. ``model`` is what is saved, ``forward`` what trains
    (the model, wrapped by DDP and ``torch.compile`` when asked)."""

    cfg: TrainConfig
    run: RunDir
    ctx: distributed.Context
    device: torch.device
    precision: str
    data: RunData
    spec: ModelSpec
    caps: Capabilities
    model: nn.Module
    forward: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    batch_size: int
    drop_last: bool
    steps_per_epoch: int
    memory_format: torch.memory_format
    flops_per_image: dict[int, float]  # image side -> training FLOPs per image
    console: Console
    frozen: list[str] = field(default_factory=list)  # parameters --freeze froze
    augment: Augmenter | None = None
    epoch_images: EpochImages | None = None
    writer: Any = None  # TensorBoard SummaryWriter
    rows: list[dict] = field(default_factory=list)  # metrics.csv rows so far
    start_epoch: int = 0
    partial: dict | None = None  # where a resumed run stopped inside epoch start_epoch (a recovery checkpoint)
    last_save: float = 0.0  # perf_counter of the last checkpoint
    stop: StopRequest = field(default_factory=StopRequest)
    elapsed: float = 0.0  # seconds of finished epochs, evaluations included
    train_clock: float = 0.0  # seconds since the run started, without the per-epoch evaluations
    train: Split | None = None  # the training split where it is batched: on a GPU, on the device
    saver: CheckpointWriter | None = None
    train_s: float = 0.0  # seconds of training steps only (CUDA events on a GPU), over all epochs
    compile_s: float = 0.0  # seconds spent compiling the training step ahead (GPU with --compile), off the clocks


@dataclass
class EpochMetrics:
    """What one epoch of training measured (summed over all processes)."""

    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    lr: float
    images_per_s: float
    train_clock: float
    image_size: int
    gflops: float
    phases: dict[str, float] | None  # seconds in data, forward, backward and step (CPU only)
    started: float  # perf_counter at the epoch's start

    def row(self) -> dict[str, Any]:
        """The epoch's metrics.csv row, before evaluation."""
        row = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("phases", "started")}
        return row | (self.phases or {})


# -- entry points ---------------------------------------------------------------------------------------
def train(cfg: TrainConfig, *, console: Console | None = None, data: RunData | None = None,
          on_epoch_end: EpochHook | None = None) -> Path:  # fmt: skip
    """Train as ``cfg`` says; return the run directory.

    ``cfg.features_from`` fits a linear probe instead (``cifarlens.training.features``); with
    ``cfg.distributed`` this is one process of a torchrun job (``cifarlens.training.distributed``).
    ``data`` skips reading the dataset (a sweep passes its cached splits). ``on_epoch_end(row)`` gets
    each epoch's metrics row after its checkpoint is written (on a GPU: after the last checkpoint taken,
    see ``_checkpoint_due``); an exception it raises (e.g. a sweep pruning the trial) stops training with
    that checkpoint kept.
    """
    started = time.perf_counter()
    console = console or Console(soft_wrap=True)  # paths printed whole, as the CLI console does
    if cfg.features_from:
        from cifarlens.training.features import linear_probe

        return linear_probe(cfg, console=console, data=data)
    return _run(cfg, None, False, console, data, on_epoch_end, started)


def resume(run_dir: str | Path, overrides: dict[str, Any] | None = None, *, console: Console | None = None,
           data: RunData | None = None, on_epoch_end: EpochHook | None = None) -> Path:  # fmt: skip
    """Continue the killed run in ``run_dir`` with its saved config; return the run directory.

    ``overrides`` may hold only ``data_dir``: where the data is now, if it moved since the run began
    (config.yaml then records the new folder). Anything else is a ``ConfigError``: a resumed run keeps
    the options it started with, or it would not end with the same numbers.
    """
    started = time.perf_counter()
    overrides = dict(overrides or {})
    moved_to = overrides.pop("data_dir", None)
    if overrides:
        given = ", ".join("--" + k.replace("_", "-") for k in overrides)
        raise ConfigError(
            f"--resume continues a run with its saved config; drop {given} or start a new run "
            "(only --data-dir may be given, if the data moved)"
        )
    run = RunDir(run_dir)
    cfg = load_run_config(run.path)
    if cfg.features_from:
        raise RunDirError(f"{run} is a linear-probe run (--features-from): nothing to resume, start it again")
    if moved_to:
        cfg = dataclasses.replace(cfg, data_dir=str(moved_to))
    return _run(cfg, run, bool(moved_to), console or Console(soft_wrap=True), data, on_epoch_end, started)


def _run(cfg: TrainConfig, run: RunDir | None, moved: bool, console: Console, data: RunData | None,
         on_epoch_end: EpochHook | None, started: float) -> Path:  # fmt: skip
    ctx, device = distributed.setup(cfg.distributed, resolve_device(cfg.device))
    try:
        rank_console = console if ctx.main else Console(quiet=True)
        with stop_on_signals() as stop:
            state = setup(cfg, run=run, ctx=ctx, device=device, console=rank_console, data=data, moved=moved,
                          started=started)  # fmt: skip
            state.stop = stop
            try:
                for epoch in range(state.start_epoch, cfg.epochs):
                    metrics = train_one_epoch(state, epoch)
                    if ctx.main:  # rank 0 evaluates and writes; the others go on to the next epoch's all-reduce
                        row = evaluate_epoch(state, metrics)
                        save_epoch(state, row)
                        if on_epoch_end is not None:
                            on_epoch_end(row)
                    if stop and epoch + 1 < cfg.epochs:
                        state.saver.wait()
                        raise _interrupted(state, f"after epoch {epoch + 1}")
                return finish(state)
            finally:
                state.saver.close()
    finally:
        distributed.teardown(ctx)


# -- setup ------------------------------------------------------------------------------------------------
def setup(cfg: TrainConfig, *, run: RunDir | None = None, ctx: distributed.Context | None = None,
          device: torch.device | None = None, console: Console | None = None, data: RunData | None = None,
          moved: bool = False, started: float | None = None) -> TrainState:  # fmt: skip
    """Data, model, optimizer and run folder of a new run (``run`` None) or of the resumed ``run``."""
    started = time.perf_counter() if started is None else started
    ctx = ctx or distributed.Context()
    device = device or resolve_device(cfg.device)
    console = console or Console(soft_wrap=True)
    if run is None:
        # Every rank checks the folder before rank 0 writes into it; all use rank 0's default name.
        cfg = distributed.broadcast(cfg if cfg.out else dataclasses.replace(cfg, out=default_out(cfg.model)), ctx)
        run = new_run_dir(cfg)
        distributed.barrier(ctx)
        resuming = False
    else:
        resuming = True
    precision = resolve_precision(cfg.precision, device)
    configure_cpu(device, cfg.threads, cfg.keep_freed_memory)
    data = data or _read_data(cfg, ctx, run, saved=resuming and not moved)
    if len(data.train) < 2:
        raise ConfigError("the training split has fewer than 2 images; use a larger --subset")
    state = _build(cfg, run, ctx, device, precision, data, console)
    if resuming:
        _restore(state, moved)
    else:
        _start(state)
    _announce(state)
    _prepare_loop(state, started)
    return state


def _read_data(cfg: TrainConfig, ctx: distributed.Context, run: RunDir, saved: bool) -> RunData:
    if not ctx.main:  # rank 0 downloads a missing dataset alone; the others read it after
        distributed.barrier(ctx)
    data = prepare_data(
        cfg.data_dir or None, download=cfg.download, subset=cfg.subset, val_size=cfg.val_size, seed=cfg.seed,
        saved_in=run.config_file if saved else None,
    )  # fmt: skip
    if ctx.main:
        distributed.barrier(ctx)
    return data


def _build(cfg: TrainConfig, run: RunDir, ctx, device, precision: str, data: RunData, console: Console) -> TrainState:
    """The model, its spec and capabilities, the optimizer and schedule; FLOPs measured per image size."""
    torch.manual_seed(cfg.seed)
    stored_args, build_args = model_arguments(cfg)
    model = create_model(cfg.model, num_classes=len(data.classes), **build_args)
    caps = model_capabilities(cfg.model, model, cfg.image_size)
    mean, std = caps.normalization(cfg.pretrained)
    spec = ModelSpec(cfg.model, stored_args, len(data.classes), data.classes, mean, std, cfg.image_size)
    frozen = freeze(model, cfg.freeze, caps)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    batch_size = min(cfg.batch_size, len(data.train))
    if batch_size < 2 * ctx.world:
        raise ConfigError(f"--batch-size {batch_size} leaves fewer than 2 images per process for {ctx.world} processes")
    # A last batch of fewer than 2 images per process breaks BatchNorm in train mode.
    drop_last = 0 < len(data.train) % batch_size < 2 * ctx.world
    steps_per_epoch = num_batches(len(data.train), batch_size, drop_last)
    optimizer = build_optimizer(model, cfg, caps)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    flops = _flops_by_size(cfg, model, data, spec, device, memory_format, precision)
    return TrainState(cfg, run, ctx, device, precision, data, spec, caps, model, model, optimizer, scheduler, scaler,
                      batch_size, drop_last, steps_per_epoch, memory_format, flops, console, frozen)  # fmt: skip


def _flops_by_size(cfg, model, data, spec, device, memory_format, precision) -> dict[int, float]:
    flops = {}
    for size in sorted({cfg.epoch_image_size(epoch) for epoch in range(cfg.epochs)}, reverse=True):
        try:
            size_spec = dataclasses.replace(spec, image_size=size)
            flops[size] = training_flops_per_image(model, data.train.images[:2], size_spec, device, memory_format, precision)
        except RuntimeError as err:  # the first forward pass, before the run is written: a fixed-size head
            reason = first_line(err)
            flag = "--image-size" if size == spec.image_size else "--early-size"
            raise ConfigError(f"model {cfg.model} does not take {size}x{size} inputs ({reason}); "
                              f"pick another {flag}, or a model with global pooling") from None  # fmt: skip
    return flops


def _start(state: TrainState) -> None:
    """A new run: fit data-dependent layers, then write the run folder."""
    if state.caps.init_from_data is not None:
        x = model_input(_init_images(state), state.spec.mean, state.spec.std, state.spec.image_size)
        state.caps.init_from_data(state.model, x.contiguous(memory_format=state.memory_format))
    if state.ctx.main:
        machine = {"device": str(state.device), "precision": state.precision, "world_size": state.ctx.world}
        start_run_dir(state.run, state.cfg, state.data, machine)


def _init_images(state: TrainState, n: int = 5000) -> torch.Tensor:
    """Up to ``n`` training images, drawn with the run's seed, that data-dependent inits are fitted on."""
    gen = torch.Generator().manual_seed(state.cfg.seed)
    idx = torch.randperm(len(state.data.train), generator=gen)[:n]
    return state.data.train.images[idx].to(state.device)


def _restore(state: TrainState, moved: bool) -> None:
    """A resumed run: weights, optimizer, schedule, scaler and RNG of the last checkpoint, its metrics and
    its place in the epoch. A run killed before its first checkpoint starts again from epoch 0."""
    if not state.run.has_checkpoint():
        state.console.print(f"{state.run} has no checkpoint yet: starting it from epoch 0 with its saved config")
        _start(state)
        return
    ckpt = state.run.load_checkpoint()
    ckpt.restore_model(state.model, state.run.checkpoint_dir)
    state.optimizer.load_state_dict(ckpt.state["optimizer"])
    state.scheduler.load_state_dict(ckpt.state["scheduler"])
    state.scaler.load_state_dict(ckpt.state["scaler"])
    set_rng_state(ckpt.state["rng"])
    state.start_epoch = ckpt.epoch
    state.partial = ckpt.state.get("partial") if ckpt.step else None
    state.train_s = float(ckpt.state.get("train_s", 0.0))
    state.rows = [r for r in state.run.read_metrics() if r["epoch"] <= ckpt.epoch]
    where = f", {ckpt.step}/{state.steps_per_epoch} steps into epoch {ckpt.epoch + 1}" if ckpt.step else ""
    state.console.print(f"resuming {state.run} after epoch {ckpt.epoch}/{state.cfg.epochs}{where}")
    if moved and state.ctx.main:  # record where the data is now, so evaluate/explain find it without --data-dir
        state.run.write_config(run_config(state.cfg, state.data))


def _announce(state: TrainState) -> None:
    cfg, data = state.cfg, state.data
    state.console.print(
        f"[bold]{cfg.model}[/] on {state.device.type} ({state.precision}), {len(data.train)} train / "
        f"{len(data.val) if data.val else 0} val / {len(data.test)} test images, {cfg.epochs} epochs -> {state.run}"
        + (f", {state.ctx.world} processes" if state.ctx.world > 1 else "")
    )
    if state.frozen:
        trainable = sum(p.numel() for p in state.model.parameters() if p.requires_grad)
        state.console.print(f"--freeze {cfg.freeze}: {len(state.frozen)} tensors frozen, {trainable:,} parameters trained")


def _prepare_loop(state: TrainState, started: float) -> None:
    """Augmentation, the DDP/compile wrapper, TensorBoard, and the clocks carried over from earlier epochs."""
    cfg = state.cfg
    gpu = state.device.type == "cuda"
    state.augment = Augmenter(cfg.augment, cfg.crop_padding, cfg.cutout_size, cfg.color_brightness, cfg.color_contrast)
    train = state.data.train
    state.train = Split(train.images.to(state.device), train.labels.to(state.device)) if gpu else train
    state.epoch_images = EpochImages(state.train.images, cfg.augment, cfg.seed)
    state.saver = CheckpointWriter(state.run, background=gpu)
    if gpu:  # same seed, same weights: some of cuDNN's fastest convolution kernels add up in a racy order
        torch.backends.cudnn.deterministic = True
    if cfg.compile and state.device.type == "cpu":
        # Inductor's C++ toolchain probe warns "No CUDA runtime is found" on every CPU-only machine.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    wrapped = distributed.wrap(state.model, state.ctx, state.device)
    # Static shapes on a GPU: each batch shape is compiled once, ahead of the clock (_compile_ahead).
    state.forward = torch.compile(wrapped, **({"dynamic": False} if gpu else {})) if cfg.compile else wrapped
    if cfg.compile and gpu and not state.ctx.active:
        state.compile_s = _compile_ahead(state)
        state.console.print(f"compiled the training step for {len(_step_shapes(state))} batch shapes in "
                            f"{state.compile_s:.1f}s (not on the training clock)")  # fmt: skip
    state.writer = _tensorboard(state.run) if cfg.tensorboard and state.ctx.main else None
    last = state.rows[-1] if state.rows else {}
    state.elapsed = float(last.get("elapsed", 0.0))
    state.train_clock = float(last.get("train_clock", 0.0)) + time.perf_counter() - started - state.compile_s
    state.last_save = time.perf_counter()


def _step_shapes(state: TrainState) -> list[tuple[int, int, bool]]:
    """Every (image side, batch size, spent groups frozen) a training step of the remaining epochs will see."""
    cfg, spe = state.cfg, state.steps_per_epoch
    batches = {state.batch_size}
    if len(state.train) % state.batch_size and not state.drop_last:
        batches.add(len(state.train) % state.batch_size)
    stops = [max(1, round(g["stop_epoch"] * spe)) for g in state.optimizer.param_groups if "stop_epoch" in g]
    shapes = set()
    for epoch in range(state.start_epoch, cfg.epochs):
        frozen = {False} if not stops else {epoch * spe >= min(stops), (epoch + 1) * spe > min(stops)}
        shapes |= {(cfg.epoch_image_size(epoch), b, f) for b in batches for f in frozen}
    return sorted(shapes)


def _compile_ahead(state: TrainState) -> float:
    """Run the compiled forward and backward once per shape of ``_step_shapes`` on zero images, so that
    compilation happens before training; return its seconds. Weights, buffers, gradients, the global RNG and
    which parameters take gradients are left as they were."""
    started = time.perf_counter()
    saved = {k: v.clone() for k, v in state.model.state_dict().items()}
    spent = [p for g in state.optimizer.param_groups if "stop_epoch" in g for p in g["params"]]
    wanted = [p.requires_grad for p in spent]
    train_mode(state.model)
    index = state.device.index if state.device.index is not None else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[index]):
        for size, batch, frozen in _step_shapes(state):
            for p, want in zip(spent, wanted):
                p.requires_grad_(want and not frozen)
            x = torch.zeros(batch, 3, size, size, device=state.device).contiguous(memory_format=state.memory_format)
            with autocast(state.device, state.precision):
                logits = state.forward(x)
            F.cross_entropy(logits.float(), torch.zeros(batch, dtype=torch.long, device=state.device)).backward()
    for p, want in zip(spent, wanted):
        p.requires_grad_(want)
    state.optimizer.zero_grad(set_to_none=True)
    state.model.load_state_dict(saved)
    torch.cuda.synchronize(state.device)
    return time.perf_counter() - started


# -- one epoch ------------------------------------------------------------------------------------------
def train_one_epoch(state: TrainState, epoch: int) -> EpochMetrics:
    """Train epoch ``epoch`` (0-based) over the whole training split (from where a recovery checkpoint left
    it, when resuming inside it); return what it measured."""
    cfg, ctx = state.cfg, state.ctx
    partial = state.partial if epoch == state.start_epoch else None
    state.partial = None
    # Data order and augmentation draw from a per-epoch generator, so a resumed run
    # sees exactly the batches an uninterrupted one would.
    gen = torch.Generator(state.train.images.device).manual_seed(cfg.seed * 1_000_003 + epoch)
    t0 = time.perf_counter() - (partial["seconds"] if partial else 0.0)
    clock = _EpochClock(state.device, t0, partial["seconds"] if partial else 0.0)
    train_mode(state.model)
    totals, phases, first = _epoch_totals(state, partial)
    # Early epochs feed smaller images than the run's size: the net's global pooling takes any size.
    size = cfg.epoch_image_size(epoch)
    window = size if size != state.spec.image_size and cfg.early_mode == "crop" else None
    with _progress(state.console) as progress:
        task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=state.steps_per_epoch, completed=first,
                                 loss=math.nan, acc=0.0, ips=0.0)  # fmt: skip
        split = Split(state.epoch_images(epoch, gen), state.train.labels)
        batches = iterate_batches(split, state.batch_size, shuffle=True, generator=gen, drop_last=state.drop_last,
                                  start=first)  # fmt: skip
        if partial:  # the draws of the steps already done: restored, not replayed
            gen.set_state(partial["generator"])
        tick = time.perf_counter()
        for step, (images, labels) in enumerate(batches, start=first):
            tick = _train_step(state, images, labels, gen, window, size, phases, totals, tick)
            _report_step(state, progress, task, epoch, step, totals, t0)
            tick = _lap(phases, "step_s", tick)
            _recovery_point(state, epoch, step + 1, gen, totals, phases, clock)
    seconds = clock.seconds()
    state.train_clock += seconds
    state.train_s += seconds
    loss, correct, seen = distributed.sum_across([totals["loss"], totals["correct"], totals["seen"]], ctx, state.device)
    return EpochMetrics(
        epoch=epoch + 1, train_loss=loss / seen, train_acc=correct / seen, lr=state.optimizer.param_groups[0]["lr"],
        images_per_s=seen / seconds, train_clock=state.train_clock, image_size=size,
        gflops=state.flops_per_image[size] * seen / seconds / 1e9,
        phases=phases if state.device.type == "cpu" else None,  # CPU ops are synchronous: wall clocks split the step
        started=t0,
    )  # fmt: skip


def _epoch_totals(state: TrainState, partial: dict | None) -> tuple[dict, dict[str, float], int]:
    """The epoch's running loss, correct count and images seen, its phase clocks, and its first step:
    fresh, or as a recovery checkpoint saved them."""
    if partial is None:
        totals = {"loss": torch.zeros((), device=state.device), "seen": 0,
                  "correct": torch.zeros((), device=state.device, dtype=torch.long)}  # fmt: skip
        return totals, dict.fromkeys(PHASES, 0.0), 0
    totals = {"loss": partial["loss"].to(state.device), "correct": partial["correct"].to(state.device),
              "seen": int(partial["seen"])}  # fmt: skip
    return totals, dict(partial["phases"]), int(partial["step"])


def _recovery_point(state: TrainState, epoch: int, steps_done: int, gen: torch.Generator, totals: dict,
                    phases: dict[str, float], clock: _EpochClock) -> None:  # fmt: skip
    """After a step: write a recovery checkpoint when ``--checkpoint-every`` seconds have passed or a stop
    was asked for (then stop). The epoch's last step is left to the epoch-end checkpoint."""
    if steps_done == state.steps_per_epoch:
        return
    every = state.cfg.checkpoint_every
    if not (state.stop or (every and time.perf_counter() - state.last_save >= every)):
        return
    if state.ctx.main:
        partial = {"step": steps_done, "generator": gen.get_state(), "loss": totals["loss"].detach().cpu(),
                   "correct": totals["correct"].cpu(), "seen": totals["seen"], "phases": dict(phases),
                   "seconds": clock.seconds()}  # fmt: skip
        state.saver.save(epoch, state.model, state.spec, _training_state(state) | {"partial": partial}, step=steps_done)
    state.last_save = time.perf_counter()
    if state.stop:
        state.saver.wait()
        raise _interrupted(state, f"{steps_done}/{state.steps_per_epoch} steps into epoch {epoch + 1}")


def _interrupted(state: TrainState, where: str) -> TrainingInterrupted:
    return TrainingInterrupted(
        f"stopped by {state.stop.name} {where}, checkpoint written; continue with cifarlens train --resume {state.run}",
        exit_code=state.stop.exit_code,
    )


def _train_step(state: TrainState, images, labels, gen, window, size, phases, totals, tick: float) -> float:
    """One optimizer step on a batch; returns the clock after it (the step's phases are added to ``phases``)."""
    images, labels = distributed.shard(state.augment(images, gen, window), labels, state.ctx)
    x = model_input(images.to(state.device, non_blocking=True), state.spec.mean, state.spec.std, size)
    x = x.contiguous(memory_format=state.memory_format)
    y = labels.to(state.device, non_blocking=True)
    tick = _lap(phases, "data_s", tick)
    if not state.ctx.active:  # DDP expects a gradient for every parameter it was built with
        freeze_finished_groups(state.optimizer)
    with autocast(state.device, state.precision):
        logits = state.forward(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=state.cfg.label_smoothing)
    tick = _lap(phases, "forward_s", tick)
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    tick = _lap(phases, "backward_s", tick)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    totals["loss"] += loss.detach() * len(y)
    totals["correct"] += (logits.argmax(1) == y).sum()
    totals["seen"] += len(y)
    return tick


def _report_step(state: TrainState, progress: Progress, task, epoch: int, step: int, totals: dict, t0: float) -> None:
    """Update the progress bar and stop on a non-finite loss. A sync per step costs nothing on CPU; on a GPU
    the metrics are read at the epoch's last step, and every 20 steps only while a progress bar is shown."""
    last = step == state.steps_per_epoch - 1
    if not (state.device.type == "cpu" or last or (step % 20 == 0 and state.console.is_terminal)):
        return
    seen = totals["seen"]
    mean_loss = totals["loss"].item() / seen
    if not math.isfinite(mean_loss):
        kept = f"epoch {epoch}" if epoch else "none: no epoch finished"
        raise TrainingDiverged(
            f"loss became {mean_loss} in epoch {epoch + 1} step {step + 1}; stopped, last good "
            f"checkpoint kept ({kept}); lower --lr or use --precision fp32"
        )
    progress.update(task, completed=step + 1, loss=mean_loss, acc=totals["correct"].item() / seen,
                    ips=seen / (time.perf_counter() - t0))  # fmt: skip


def evaluate_epoch(state: TrainState, metrics: EpochMetrics) -> dict[str, Any]:
    """The epoch's metrics.csv row: ``metrics`` plus the validation score, the test score when asked
    for every epoch (or at the last one), and the epoch's seconds."""
    cfg, data = state.cfg, state.data
    row = metrics.row()
    if data.val is not None:
        row["val_loss"], row["val_acc"] = _score(state, data.val)
    if cfg.eval_test_every_epoch or (metrics.epoch == cfg.epochs and cfg.evaluate):
        row["test_loss"], row["test_acc"] = _score(state, data.test)
    row["seconds"] = time.perf_counter() - metrics.started
    state.elapsed += row["seconds"]
    row["elapsed"] = state.elapsed
    return row


def save_epoch(state: TrainState, row: dict[str, Any]) -> None:
    """Append ``row`` to metrics.csv, checkpoint the epoch (``_checkpoint_due``), log and print it."""
    state.rows.append(row)
    # Metrics first: a kill between the two leaves a row that resume drops, never a checkpoint without its row.
    state.run.write_metrics(state.rows)
    if _checkpoint_due(state, row["epoch"]):
        state.saver.save(row["epoch"], state.model, state.spec, _training_state(state))
        state.last_save = time.perf_counter()
    if state.writer is not None:
        for key, value in row.items():
            if key != "epoch" and value != "":
                state.writer.add_scalar(key, value, row["epoch"])
    state.console.print(_epoch_line(row, state.cfg.epochs))


def _checkpoint_due(state: TrainState, epoch: int) -> bool:
    """Whether finished epoch ``epoch`` (1-based) is checkpointed: every one on the CPU, where an epoch takes
    minutes; on a GPU, where it takes a fraction of a second, the last one, one where a stop was asked for,
    and one ``--checkpoint-every`` seconds after the last checkpoint (0: every one)."""
    every = state.cfg.checkpoint_every
    if state.device.type != "cuda" or not every or epoch == state.cfg.epochs or state.stop:
        return True
    return time.perf_counter() - state.last_save >= every


def _training_state(state: TrainState) -> dict[str, Any]:
    """What a checkpoint saves besides the weights."""
    return {
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "rng": rng_state(),
        "train_s": state.train_s,
    }


def finish(state: TrainState) -> Path:
    """Final weights and the training summary. Evaluating and reporting the run is the command layer's
    ``cifarlens.report.after_training``, which reads what this wrote."""
    if state.writer is not None:
        state.writer.close()
    run, cfg = state.run, state.cfg
    if not state.ctx.main:
        return run.path
    state.saver.wait()
    run.save_model(state.model, state.spec)
    write_train_summary(run, state.rows, cfg, state.device, state.precision,
                        {"train_s": state.train_s, "compile_s": state.compile_s})  # fmt: skip
    return run.path


# -- helpers ------------------------------------------------------------------------------------------------
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


def _score(state: TrainState, split: Split) -> tuple[float, float]:
    logits = Predictor(state.model, state.spec, device=state.device, precision=state.precision).logits(split.images)
    loss = F.cross_entropy(logits, split.labels).item()
    acc = (logits.argmax(1) == split.labels).float().mean().item()
    train_mode(state.model)
    return loss, acc


class _EpochClock:
    """Seconds of training in an epoch, ``already`` of them before a resume: on a GPU what the device spent,
    between two CUDA events (read with one sync); elsewhere the wall clock since ``t0``."""

    def __init__(self, device: torch.device, t0: float, already: float):
        self.t0, self.already = t0, already
        self.start = _recorded_event() if device.type == "cuda" else None

    def seconds(self) -> float:
        if self.start is None:
            return time.perf_counter() - self.t0
        end = _recorded_event()
        end.synchronize()
        return self.already + self.start.elapsed_time(end) / 1000


def _recorded_event() -> torch.cuda.Event:
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def _lap(phases: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    phases[name] += now - since
    return now


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
        disable=not console.is_terminal,  # a file or pipe gets the epoch lines only
    )


def _tensorboard(run: RunDir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package; pip install 'cifarlens[tensorboard]'") from None
    return SummaryWriter(str(run.path / "tensorboard"))
