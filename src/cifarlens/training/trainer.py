"""The training loop: config -> data -> model -> run directory, in parts.

``train(cfg)`` starts a run and ``resume(run_dir)`` continues one; both go through
``setup(...) -> TrainState`` (``cifarlens.training.state``: learner, feed, ledger, checkpoints), then
``train_one_epoch`` and ``evaluate_epoch`` per epoch, then ``finish``. Data stays as uint8 tensors; each batch
is augmented, normalised and moved to the device as a whole. Every epoch ends with an atomic checkpoint, so
``resume`` continues a killed run and, with the same seed, ends with the same numbers.

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
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cifarlens.data import Augmenter, EpochImages, RunData, Split, num_batches, prepare_data
from cifarlens.device import autocast, configure_cpu, resolve_device, resolve_precision
from cifarlens.errors import ConfigError, RunDirError, TrainingDiverged, TrainingInterrupted, first_line
from cifarlens.models import create_model, model_capabilities
from cifarlens.run import ModelSpec, Predictor, RunDir
from cifarlens.training import distributed
from cifarlens.training.config import TrainConfig
from cifarlens.training.linear_probe import linear_probe
from cifarlens.training.optim import build_optimizer, build_scheduler
from cifarlens.training.run_folder import (
    default_out,
    load_run_config,
    new_run_dir,
    run_config,
    start_run_dir,
    write_train_summary,
)
from cifarlens.training.saving import CheckpointWriter
from cifarlens.training.state import PHASES, Checkpoints, Feed, Laps, Learner, Ledger, TrainState
from cifarlens.training.stopping import StopRequest, stop_on_signals
from cifarlens.training.transfer import freeze, model_arguments, train_mode

__all__ = [
    "PHASES",
    "EpochMetrics",
    "TrainState",
    "evaluate_epoch",
    "finish",
    "resume",
    "save_epoch",
    "setup",
    "train",
    "train_one_epoch",
    "train_step",
]

EpochHook = Callable[[dict], None]


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
def train(
    cfg: TrainConfig,
    *,
    console: Console | None = None,
    data: RunData | None = None,
    on_epoch_end: EpochHook | None = None,
) -> Path:
    """Train as ``cfg`` says; return the run directory.

    ``cfg.features_from`` fits a linear probe instead (``cifarlens.training.linear_probe``); with
    ``cfg.distributed`` this is one process of a torchrun job (``cifarlens.training.distributed``).
    ``data`` skips reading the dataset (a sweep passes its cached splits). ``on_epoch_end(row)`` gets
    each epoch's metrics row after its checkpoint is written (on a GPU: after the last checkpoint taken,
    see ``_checkpoint_due``); an exception it raises (e.g. a sweep pruning the trial) stops training with
    that checkpoint kept.
    """
    started = time.perf_counter()
    console = console or Console(soft_wrap=True)  # paths printed whole, as the CLI console does
    if cfg.features_from:
        return linear_probe(cfg, console=console, data=data)
    return _run(cfg, None, False, console, data, on_epoch_end, started)


def resume(
    run_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    *,
    console: Console | None = None,
    data: RunData | None = None,
    on_epoch_end: EpochHook | None = None,
) -> Path:
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


def _run(
    cfg: TrainConfig,
    run: RunDir | None,
    moved: bool,
    console: Console,
    data: RunData | None,
    on_epoch_end: EpochHook | None,
    started: float,
) -> Path:
    ctx, device = distributed.setup(cfg.distributed, resolve_device(cfg.device))
    try:
        rank_console = console if ctx.main else Console(quiet=True)
        with stop_on_signals() as stop:
            state = setup(
                cfg,
                run=run,
                ctx=ctx,
                device=device,
                console=rank_console,
                data=data,
                moved=moved,
                started=started,
                stop=stop,
            )
            try:
                for epoch in range(state.feed.start_epoch, cfg.epochs):
                    metrics = train_one_epoch(state, epoch)
                    if ctx.main:  # rank 0 evaluates and writes; the others go on to the next epoch's all-reduce
                        row = evaluate_epoch(state, metrics)
                        save_epoch(state, row)
                        if on_epoch_end is not None:
                            on_epoch_end(row)
                    if stop and epoch + 1 < cfg.epochs:
                        state.checkpoints.saver.wait()
                        raise _interrupted(state, f"after epoch {epoch + 1}")
                return finish(state)
            finally:
                state.close()
    finally:
        distributed.teardown(ctx)


# -- setup ------------------------------------------------------------------------------------------------
def setup(
    cfg: TrainConfig,
    *,
    run: RunDir | None = None,
    ctx: distributed.Context | None = None,
    device: torch.device | None = None,
    console: Console | None = None,
    data: RunData | None = None,
    moved: bool = False,
    started: float | None = None,
    stop: StopRequest | None = None,
) -> TrainState:
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
    learner = _learner(cfg, ctx, device, precision, data)
    feed = _feed(cfg, ctx, device, data)
    flops = _flops_by_size(cfg, learner, data)
    checkpoints = Checkpoints(
        CheckpointWriter(run, background=device.type == "cuda"),
        cfg.checkpoint_every,
        gpu=device.type == "cuda",
        stop=StopRequest() if stop is None else stop,
    )
    state = TrainState(cfg, run, ctx, console, learner, feed, Ledger(flops), checkpoints)
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
        cfg.data_dir or None,
        download=cfg.download,
        subset=cfg.subset,
        val_size=cfg.val_size,
        seed=cfg.seed,
        saved_in=run.config_file if saved else None,
    )
    if ctx.main:
        distributed.barrier(ctx)
    return data


def _learner(
    cfg: TrainConfig, ctx: distributed.Context, device: torch.device, precision: str, data: RunData
) -> Learner:
    """The model, its spec and capabilities, the optimizer and schedule (``forward`` is wrapped later)."""
    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        model, spec = _model_of_run(cfg.init_from, data)
        caps = spec.capabilities(model)
    else:
        stored_args, build_args = model_arguments(cfg)
        model = create_model(cfg.model, num_classes=len(data.classes), **build_args)
        caps = model_capabilities(cfg.model, model, cfg.image_size)
        mean, std = caps.normalization(cfg.pretrained)
        spec = ModelSpec(cfg.model, stored_args, len(data.classes), data.classes, mean, std, cfg.image_size)
    frozen = freeze(model, cfg.freeze, caps)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    optimizer = build_optimizer(model, cfg, caps)
    scheduler = build_scheduler(optimizer, cfg, _steps_per_epoch(cfg, ctx, data)[0])
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    return Learner(
        model,
        model,
        optimizer,
        scheduler,
        scaler,
        spec,
        caps,
        device,
        precision,
        memory_format,
        cfg.label_smoothing,
        frozen,
    )


def _model_of_run(source: str, data: RunData) -> tuple[torch.nn.Module, ModelSpec]:
    """The model of the run ``source`` with its weights, and its spec (``--init-from``)."""
    model, spec = RunDir(source).load_model()
    if tuple(spec.classes) != tuple(data.classes):
        raise ConfigError(
            f"--init-from {source}: its model predicts {', '.join(spec.classes)}, not this data's classes; "
            "fine-tune it on the data it was trained for"
        )
    return model.train(), spec


def _steps_per_epoch(cfg: TrainConfig, ctx: distributed.Context, data: RunData) -> tuple[int, int, bool]:
    """(steps per epoch, batch size, drop_last) of the training split."""
    batch_size = min(cfg.batch_size, len(data.train))
    if batch_size < 2 * ctx.world:
        raise ConfigError(f"--batch-size {batch_size} leaves fewer than 2 images per process for {ctx.world} processes")
    # A last batch of fewer than 2 images per process breaks BatchNorm in train mode.
    drop_last = 0 < len(data.train) % batch_size < 2 * ctx.world
    return num_batches(len(data.train), batch_size, drop_last), batch_size, drop_last


def _feed(cfg: TrainConfig, ctx: distributed.Context, device: torch.device, data: RunData) -> Feed:
    """The training split (on the device when that is a GPU), its augmentation and batching."""
    steps, batch_size, drop_last = _steps_per_epoch(cfg, ctx, data)
    train = Split(data.train.images.to(device), data.train.labels.to(device)) if device.type == "cuda" else data.train
    augment = Augmenter(cfg.augment, cfg.crop_padding, cfg.cutout_size, cfg.color_brightness, cfg.color_contrast)
    epoch_images = EpochImages(train.images, cfg.augment, cfg.seed)
    return Feed(data, train, augment, epoch_images, batch_size, drop_last, steps, cfg.seed, ctx)


def _flops_by_size(cfg: TrainConfig, learner: Learner, data: RunData) -> dict[int, float]:
    flops = {}
    for size in sorted({cfg.epoch_image_size(epoch) for epoch in range(cfg.epochs)}, reverse=True):
        try:
            flops[size] = training_flops_per_image(learner, data.train.images[:2], size)
        except RuntimeError as err:  # the first forward pass, before the run is written: a fixed-size head
            reason = first_line(err)
            flag = "--image-size" if size == learner.spec.image_size else "--early-size"
            raise ConfigError(
                f"model {cfg.model} does not take {size}x{size} inputs ({reason}); "
                f"pick another {flag}, or a model with global pooling"
            ) from None
    return flops


def _start(state: TrainState) -> None:
    """A new run: fit data-dependent layers, then write the run folder."""
    learner = state.learner
    if learner.caps.init_from_data is not None and not state.cfg.init_from:  # --init-from: its fitted layers
        learner.caps.init_from_data(learner.model, learner.inputs(_init_images(state), learner.spec.image_size))
    if state.ctx.main:
        machine = {"device": str(learner.device), "precision": learner.precision, "world_size": state.ctx.world}
        start_run_dir(state.run, state.cfg, state.feed.data, machine)
        source = RunDir(state.cfg.init_from).path / RunDir.SOURCE if state.cfg.init_from else None
        if source is not None and source.is_dir():  # an imported model's code: the new run rebuilds it too
            shutil.copytree(source, state.run.path / RunDir.SOURCE, dirs_exist_ok=True)


def _init_images(state: TrainState, n: int = 5000) -> torch.Tensor:
    """Up to ``n`` training images, drawn with the run's seed, that data-dependent inits are fitted on."""
    gen = torch.Generator().manual_seed(state.cfg.seed)
    idx = torch.randperm(len(state.feed.data.train), generator=gen)[:n]
    return state.feed.data.train.images[idx].to(state.device)


def _restore(state: TrainState, moved: bool) -> None:
    """A resumed run: weights, optimizer, schedule, scaler and RNG of the last checkpoint, its metrics and
    its place in the epoch. A run killed before its first checkpoint starts again from epoch 0."""
    run, feed = state.run, state.feed
    if not run.has_checkpoint():
        state.console.print(f"{run} has no checkpoint yet: starting it from epoch 0 with its saved config")
        _start(state)
        return
    ckpt = run.load_checkpoint()
    state.learner.restore(ckpt, run.checkpoint_dir)
    feed.start_epoch = ckpt.epoch
    feed.partial = ckpt.state.get("partial") if ckpt.step else None
    rows = [r for r in run.read_metrics() if r["epoch"] <= ckpt.epoch]
    state.ledger.continue_from(rows, float(ckpt.state.get("train_s", 0.0)))
    where = f", {ckpt.step}/{feed.steps_per_epoch} steps into epoch {ckpt.epoch + 1}" if ckpt.step else ""
    state.console.print(f"resuming {run} after epoch {ckpt.epoch}/{state.cfg.epochs}{where}")
    if moved and state.ctx.main:  # record where the data is now, so evaluate/explain find it without --data-dir
        run.write_config(run_config(state.cfg, feed.data))


def _announce(state: TrainState) -> None:
    cfg, data, learner = state.cfg, state.feed.data, state.learner
    state.console.print(
        f"[bold]{cfg.model}[/] on {learner.device.type} ({learner.precision}), {len(data.train)} train / "
        f"{len(data.val) if data.val else 0} val / {len(data.test)} test images, {cfg.epochs} epochs -> {state.run}"
        + (f", {state.ctx.world} processes" if state.ctx.world > 1 else "")
    )
    if learner.frozen:
        trainable = sum(p.numel() for p in learner.model.parameters() if p.requires_grad)
        state.console.print(
            f"--freeze {cfg.freeze}: {len(learner.frozen)} tensors frozen, {trainable:,} parameters trained"
        )


def _prepare_loop(state: TrainState, started: float) -> None:
    """The DDP/compile wrapper, TensorBoard, and the clocks carried over from earlier epochs."""
    cfg, learner = state.cfg, state.learner
    gpu = learner.device.type == "cuda"
    if gpu:  # same seed, same weights: some of cuDNN's fastest convolution kernels add up in a racy order
        torch.backends.cudnn.deterministic = True
    if cfg.compile and learner.device.type == "cpu":
        # Inductor's C++ toolchain probe warns "No CUDA runtime is found" on every CPU-only machine.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    wrapped = distributed.wrap(learner.model, state.ctx, learner.device)
    # Static shapes on a GPU: each batch shape is compiled once, ahead of the clock (_compile_ahead).
    learner.forward = torch.compile(wrapped, **({"dynamic": False} if gpu else {})) if cfg.compile else wrapped
    learner.ddp = state.ctx.active
    if cfg.compile and gpu and not state.ctx.active:
        state.ledger.compile_s = _compile_ahead(state)
        state.console.print(
            f"compiled the training step for {len(_step_shapes(state))} batch shapes in "
            f"{state.ledger.compile_s:.1f}s (not on the training clock)"
        )
    state.ledger.writer = _tensorboard(state.run) if cfg.tensorboard and state.ctx.main else None
    state.ledger.start_clocks(started)
    state.checkpoints.restart()


def _step_shapes(state: TrainState) -> list[tuple[int, int, bool]]:
    """Every (image side, batch size, spent groups frozen) a training step of the remaining epochs will see."""
    cfg, feed = state.cfg, state.feed
    spe = feed.steps_per_epoch
    batches = {feed.batch_size}
    if len(feed.train) % feed.batch_size and not feed.drop_last:
        batches.add(len(feed.train) % feed.batch_size)
    stops = [max(1, round(g["stop_epoch"] * spe)) for g in state.learner.optimizer.param_groups if "stop_epoch" in g]
    shapes = set()
    for epoch in range(feed.start_epoch, cfg.epochs):
        frozen = {False} if not stops else {epoch * spe >= min(stops), (epoch + 1) * spe > min(stops)}
        shapes |= {(cfg.epoch_image_size(epoch), b, f) for b in batches for f in frozen}
    return sorted(shapes)


def _compile_ahead(state: TrainState) -> float:
    """Run the compiled forward and backward once per shape of ``_step_shapes`` on zero images, so that
    compilation happens before training; return its seconds. Weights, buffers, gradients, the global RNG and
    which parameters take gradients are left as they were."""
    started = time.perf_counter()
    learner = state.learner
    device = learner.device
    saved = {k: v.clone() for k, v in learner.model.state_dict().items()}
    spent = [p for g in learner.optimizer.param_groups if "stop_epoch" in g for p in g["params"]]
    wanted = [p.requires_grad for p in spent]
    train_mode(learner.model)
    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[index]):
        for size, batch, frozen in _step_shapes(state):
            for p, want in zip(spent, wanted):
                p.requires_grad_(want and not frozen)
            x = torch.zeros(batch, 3, size, size, device=device).contiguous(memory_format=learner.memory_format)
            with autocast(device, learner.precision):
                logits = learner.forward(x)
            F.cross_entropy(logits.float(), torch.zeros(batch, dtype=torch.long, device=device)).backward()
    for p, want in zip(spent, wanted):
        p.requires_grad_(want)
    learner.optimizer.zero_grad(set_to_none=True)
    learner.model.load_state_dict(saved)
    torch.cuda.synchronize(device)
    return time.perf_counter() - started


# -- one epoch ------------------------------------------------------------------------------------------
@dataclass
class EpochRun:
    """One epoch in progress: its generator, image size, running totals and clocks."""

    epoch: int  # 0-based
    gen: torch.Generator
    size: int  # image side this epoch trains at
    window: int | None  # crop window of the early epochs' "crop" mode, or None
    loss: torch.Tensor  # summed over the images seen (on the device: no sync per step)
    correct: torch.Tensor
    seen: int
    first: int  # the step it starts at (not 0 when resumed inside it)
    restored: torch.Tensor | None  # the generator's state after the steps done before a resume
    laps: Laps
    clock: _EpochClock
    t0: float  # perf_counter at the epoch's start (earlier by its seconds before a resume)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += loss.detach() * len(y)
        self.correct += (logits.argmax(1) == y).sum()
        self.seen += len(y)

    def partial(self, steps_done: int) -> dict[str, Any]:
        """Where the epoch is, as a recovery checkpoint saves it (``begin_epoch`` reads it back)."""
        return {
            "step": steps_done,
            "generator": self.gen.get_state(),
            "loss": self.loss.detach().cpu(),
            "correct": self.correct.cpu(),
            "seen": self.seen,
            "phases": dict(self.laps.phases),
            "seconds": self.clock.seconds(),
        }


def begin_epoch(state: TrainState, epoch: int) -> EpochRun:
    """Epoch ``epoch`` (0-based) from its start, or from where a recovery checkpoint left it."""
    cfg, device = state.cfg, state.device
    partial = state.feed.take_partial(epoch)
    gen = state.feed.generator(epoch)
    already = partial["seconds"] if partial else 0.0
    t0 = time.perf_counter() - already
    clock = _EpochClock(device, t0, already)
    # Early epochs feed smaller images than the run's size: the net's global pooling takes any size.
    size = cfg.epoch_image_size(epoch)
    window = size if size != state.learner.spec.image_size and cfg.early_mode == "crop" else None
    if partial is None:
        loss, correct = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
        return EpochRun(epoch, gen, size, window, loss, correct, 0, 0, None, Laps(), clock, t0)
    return EpochRun(
        epoch,
        gen,
        size,
        window,
        partial["loss"].to(device),
        partial["correct"].to(device),
        int(partial["seen"]),
        int(partial["step"]),
        partial["generator"],
        Laps(partial["phases"]),
        clock,
        t0,
    )


def train_one_epoch(state: TrainState, epoch: int) -> EpochMetrics:
    """Train epoch ``epoch`` (0-based) over the whole training split (from where a recovery checkpoint left
    it, when resuming inside it); return what it measured."""
    feed = state.feed
    run = begin_epoch(state, epoch)
    train_mode(state.learner.model)
    with _progress(state.console) as progress:
        task = progress.add_task(
            f"epoch {epoch + 1}/{state.cfg.epochs}",
            total=feed.steps_per_epoch,
            completed=run.first,
            loss=math.nan,
            acc=0.0,
            ips=0.0,
        )
        batches = feed.batches(epoch, run.gen, run.first, run.restored)
        run.laps.restart()
        for step, (images, labels) in enumerate(batches, start=run.first):
            train_step(state, run, images, labels)
            _report_step(state, progress, task, run, step)
            run.laps.lap("step_s")
            _recovery_point(state, run, step + 1)
    return _epoch_metrics(state, run)


def train_step(state: TrainState, run: EpochRun, images: torch.Tensor, labels: torch.Tensor) -> None:
    """One optimizer step on a batch of uint8 images (B, 3, 32, 32) and labels (B,), added to ``run``."""
    learner = state.learner
    images, labels = state.feed.augmented(images, labels, run.gen, run.window)
    x = learner.inputs(images, run.size)
    y = labels.to(learner.device, non_blocking=True)
    run.laps.lap("data_s")
    loss, logits = learner.step(x, y, run.laps)
    run.add(loss, logits, y)


def _epoch_metrics(state: TrainState, run: EpochRun) -> EpochMetrics:
    seconds = run.clock.seconds()
    state.ledger.add_training(seconds)
    loss, correct, seen = distributed.sum_across([run.loss, run.correct, run.seen], state.ctx, state.device)
    return EpochMetrics(
        epoch=run.epoch + 1,
        train_loss=loss / seen,
        train_acc=correct / seen,
        lr=state.learner.optimizer.param_groups[0]["lr"],
        images_per_s=seen / seconds,
        train_clock=state.ledger.train_clock,
        image_size=run.size,
        gflops=state.ledger.flops_per_image[run.size] * seen / seconds / 1e9,
        phases=run.laps.phases
        if state.device.type == "cpu"
        else None,  # CPU ops are synchronous: wall clocks split the step
        started=run.t0,
    )


def _recovery_point(state: TrainState, run: EpochRun, steps_done: int) -> None:
    """After a step: write a recovery checkpoint when ``--checkpoint-every`` seconds have passed or a stop
    was asked for (then stop). The epoch's last step is left to the epoch-end checkpoint."""
    checkpoints = state.checkpoints
    if steps_done == state.feed.steps_per_epoch or not checkpoints.recovery_due():
        return
    if state.ctx.main:
        extra = {"partial": run.partial(steps_done)}
        checkpoints.save(
            run.epoch, state.learner.model, state.learner.spec, state.training_state() | extra, step=steps_done
        )
    else:
        checkpoints.restart()
    if checkpoints.stop:
        checkpoints.saver.wait()
        raise _interrupted(state, f"{steps_done}/{state.feed.steps_per_epoch} steps into epoch {run.epoch + 1}")


def _interrupted(state: TrainState, where: str) -> TrainingInterrupted:
    stop = state.checkpoints.stop
    return TrainingInterrupted(
        f"stopped by {stop.name} {where}, checkpoint written; continue with cifarlens train --resume {state.run}",
        exit_code=stop.exit_code,
    )


def _report_step(state: TrainState, progress: Progress, task, run: EpochRun, step: int) -> None:
    """Update the progress bar and stop on a non-finite loss. A sync per step costs nothing on CPU; on a GPU
    the metrics are read at the epoch's last step, and every 20 steps only while a progress bar is shown."""
    last = step == state.feed.steps_per_epoch - 1
    if not (state.device.type == "cpu" or last or (step % 20 == 0 and state.console.is_terminal)):
        return
    mean_loss = run.loss.item() / run.seen
    if not math.isfinite(mean_loss):
        kept = f"epoch {run.epoch}" if run.epoch else "none: no epoch finished"
        raise TrainingDiverged(
            f"loss became {mean_loss} in epoch {run.epoch + 1} step {step + 1}; stopped, last good "
            f"checkpoint kept ({kept}); lower --lr or use --precision fp32"
        )
    progress.update(
        task,
        completed=step + 1,
        loss=mean_loss,
        acc=run.correct.item() / run.seen,
        ips=run.seen / (time.perf_counter() - run.t0),
    )


def evaluate_epoch(state: TrainState, metrics: EpochMetrics) -> dict[str, Any]:
    """The epoch's metrics.csv row: ``metrics`` plus the validation score, the test score when asked
    for every epoch (or at the last one), and the epoch's seconds."""
    cfg, data = state.cfg, state.feed.data
    row = metrics.row()
    if data.val is not None:
        row["val_loss"], row["val_acc"] = _score(state, data.val)
    if cfg.eval_test_every_epoch or (metrics.epoch == cfg.epochs and cfg.evaluate):
        row["test_loss"], row["test_acc"] = _score(state, data.test)
    row["seconds"] = time.perf_counter() - metrics.started
    return row


def save_epoch(state: TrainState, row: dict[str, Any]) -> None:
    """Add ``row`` to metrics.csv, checkpoint the epoch (``Checkpoints.epoch_due``), print it."""
    state.ledger.add_row(row)
    # Metrics first: a kill between the two leaves a row that resume drops, never a checkpoint without its row.
    state.run.write_metrics(state.ledger.rows)
    if state.checkpoints.epoch_due(row["epoch"], state.cfg.epochs):
        state.checkpoints.save(row["epoch"], state.learner.model, state.learner.spec, state.training_state())
    state.console.print(_epoch_line(row, state.cfg.epochs))


def finish(state: TrainState) -> Path:
    """Final weights and the training summary. Evaluating and reporting the run is the command layer's
    ``cifarlens.report.after_training``, which reads what this wrote."""
    state.ledger.close()
    run, ledger, learner = state.run, state.ledger, state.learner
    if not state.ctx.main:
        return run.path
    state.checkpoints.saver.wait()
    run.save_model(learner.model, learner.spec)
    write_train_summary(
        run,
        ledger.rows,
        state.cfg,
        learner.device,
        learner.precision,
        {"train_s": ledger.train_s, "compile_s": ledger.compile_s},
    )
    return run.path


# -- helpers ------------------------------------------------------------------------------------------------
def training_flops_per_image(learner: Learner, images: torch.Tensor, size: int) -> float:
    """FLOPs of one forward + backward pass per image at side ``size`` (FlopCounterMode, on a copy of the model)."""
    from torch.utils.flop_counter import FlopCounterMode

    probe = train_mode(copy.deepcopy(learner.model))
    x = learner.inputs(images, size)
    # fork_rng: the probe's dropout must not move the RNG stream a resumed run restores.
    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        with autocast(learner.device, learner.precision):
            out = probe(x)
        out.float().sum().backward()
    return counter.get_total_flops() / len(images)


def _score(state: TrainState, split: Split) -> tuple[float, float]:
    learner = state.learner
    logits = Predictor(learner.model, learner.spec, device=learner.device, precision=learner.precision).logits(
        split.images
    )
    loss = F.cross_entropy(logits, split.labels).item()
    acc = (logits.argmax(1) == split.labels).float().mean().item()
    train_mode(learner.model)
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
