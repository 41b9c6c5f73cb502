"""CLI commands of the deployment area: ``export``, ``predict``, ``bench``, ``serve``.

Registered in ``cifarlens.cli``; like every command, each imports the library call it runs inside its body, so
that a command loads only what it runs (``train`` never loads onnxruntime or FastAPI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cifarlens.console import console, err_console, user_errors
from cifarlens.errors import ConfigError

ModelSource = Annotated[
    Path, typer.Argument(help="run directory, cifarlens .safetensors, or .onnx / .tflite / SavedModel from export")
]
TrustPickle = Annotated[
    bool, typer.Option("--trust-pickle", help="allow a .pt/.pth/.pkl state dict (read with weights_only=True)")
]
Backend = Annotated[
    str,
    typer.Option(
        help="auto (PyTorch for weights, onnxruntime for a graph), torch, torch-compile, torch-bf16, "
        "onnxruntime, onnxruntime-int8, openvino, openvino-bf16 or openvino-int8 (the last five run "
        "the graphs of cifarlens export)"
    ),
]
Threads = Annotated[int, typer.Option(help="CPU threads for the backend (0: its default)")]
ModelName = Annotated[str | None, typer.Option("--model", help="architecture of a --trust-pickle state dict")]
ModelArgs = Annotated[str | None, typer.Option("--model-args", help="its model arguments as YAML, e.g. '{width: 8}'")]
DataDir = Annotated[str | None, typer.Option(help="folder holding cifar-10-batches-py (default: the run's)")]


def _model_args(text: str | None) -> dict[str, Any]:
    from cifarlens.config import coerce

    return coerce("model_args", text or "", dict)


@user_errors
def export(
    source: ModelSource,
    opset: Annotated[int, typer.Option(help="ONNX opset")] = 18,
    dynamic_batch: Annotated[bool, typer.Option(help="any batch size (else the graph takes batch 1)")] = True,
    quantize: Annotated[str, typer.Option(help="none, or int8 (static, calibrated on training images)")] = "none",
    out: Annotated[
        Path | None, typer.Option(help="fp32 .onnx file (default RUN/export/model.onnx); int8 goes to <stem>.int8.onnx")
    ] = None,
    test_images: Annotated[
        int, typer.Option(help="test images the export is verified on (0: the run's whole test split)")
    ] = 0,
    calibration_images: Annotated[int, typer.Option(help="training images int8 is calibrated on")] = 512,
    max_int8_drop: Annotated[
        float, typer.Option(help="accuracy points int8 may lose against fp32 before its graph is refused")
    ] = 0.5,
    data_dir: DataDir = None,
    trust_pickle: TrustPickle = False,
    model: ModelName = None,
    model_args: ModelArgs = None,
    fmt: Annotated[
        str, typer.Option("--format", help="onnx, or tflite / savedmodel (TensorFlow; pip install 'cifarlens[tf]')")
    ] = "onnx",
) -> None:
    """Export to ONNX, TFLite or a SavedModel (preprocessing inside) and verify it on real test images."""
    from cifarlens.deploy.onnx_export import export_run, load_eval_images
    from cifarlens.deploy.runtime import default_onnx_path, int8_path
    from cifarlens.run import RunDir

    if source.suffix == ".onnx":
        raise ConfigError(f"{source} is already an ONNX file; pass the run directory or .safetensors it came from")
    if source.suffix != ".safetensors":
        RunDir(source).require_weights()  # a missing run is named before the data it would be scored on is looked for
    if fmt != "onnx":
        tf_options = {"opset": opset, "dynamic_batch": dynamic_batch, "trust_pickle": trust_pickle, "model_name": model}
        _export_tf(source, fmt, out, quantize, test_images, data_dir, _model_args(model_args), **tf_options)
        return
    out = out or default_onnx_path(source)
    data = load_eval_images(source, data_dir, test_images=test_images, calibration_images=calibration_images)
    result = export_run(
        source,
        data,
        out=out,
        opset=opset,
        dynamic_batch=dynamic_batch,
        quantize=quantize,
        trust_pickle=trust_pickle,
        model_name=model,
        model_args=_model_args(model_args),
        max_int8_drop=max_int8_drop,
    )
    table = Table(title=f"ONNX export of {escape(str(source))} (verified on {len(data.test_labels)} test images)")
    for column in ("graph", "exporter", "max |logit diff|", "top-1 agreement", "accuracy", "vs"):
        table.add_column(column, justify="left" if column in ("graph", "vs") else "right")
    int8_out = int8_path(out)
    for path, info in ((out, result["fp32"]), (int8_out, result["int8"])):
        if info:
            v = info["verification"]
            table.add_row(
                escape(path.name),
                info["exporter"],
                f"{v['max_abs_logit_diff']:.2e}",
                f"{v['top1_agreement']:.2%}",
                f"{v['accuracy']:.2f}%",
                f"{v['against']} {v['reference_accuracy']:.2f}%",
            )
    console.print(table)
    graphs = [str(out)] + ([str(int8_out)] if result["int8"] else [])
    console.print(escape(f"wrote {', '.join(graphs)} and {out.with_suffix('.json')} (classes, input contract)"))


def default_tf_path(source: Path, fmt: str) -> Path:
    """RUN/export/model.tflite or RUN/export/saved_model; next to a weights file otherwise."""
    from cifarlens.run import RunDir

    if source.is_dir():
        return RunDir(source).tf_file(fmt)
    return source.with_suffix(".tflite") if fmt == "tflite" else source.with_name(f"{source.stem}_saved_model")


def _export_tf(
    source: Path,
    fmt: str,
    out: Path | None,
    quantize: str,
    test_images: int,
    data_dir: str | None,
    model_args: dict[str, Any],
    **options: Any,
) -> None:
    from cifarlens.deploy.onnx_export import load_eval_images
    from cifarlens.deploy.tf_export import TF_FORMATS, export_tf_run, import_onnx2tf
    from cifarlens.deploy.tf_runtime import tf_sidecar_path

    if fmt not in TF_FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; choose onnx, tflite or savedmodel")
    if quantize != "none":
        raise ConfigError(f"--quantize {quantize} is for --format onnx; the {fmt} export is float32")
    import_onnx2tf()  # a missing extra is named before the test images are loaded
    out = out or default_tf_path(source, fmt)
    data = load_eval_images(source, data_dir, test_images=test_images, calibration_images=0)
    info = export_tf_run(source, data, out=out, fmt=fmt, model_args=model_args, **options)
    v = info["verification"]
    table = Table(title=f"{info['route']} of {escape(str(source))} (verified on {v['images']} test images)")
    for column in ("model", "max |logit diff|", "top-1 agreement", "accuracy", "vs"):
        table.add_column(column, justify="left" if column in ("model", "vs") else "right")
    table.add_row(
        escape(out.name),
        f"{v['max_abs_logit_diff']:.2e}",
        f"{v['top1_agreement']:.2%}",
        f"{v['accuracy']:.2f}%",
        f"{v['against']} {v['reference_accuracy']:.2f}%",
    )
    console.print(table)
    console.print(escape(f"wrote {out} and {tf_sidecar_path(out)} (classes, input contract: uint8 NHWC)"))


@user_errors
def predict(
    source: ModelSource,
    images: Annotated[list[Path], typer.Argument(help="image files or folders (searched recursively)")],
    top_k: Annotated[int, typer.Option("--top-k", help="classes shown per image")] = 3,
    json_lines: Annotated[bool, typer.Option("--json", help="one JSON object per file on stdout")] = False,
    batch_size: Annotated[int, typer.Option(help="images decoded and classified at a time")] = 64,
    max_pixels: Annotated[int, typer.Option(help="larger images are refused (decompression-bomb guard)")] = 89_478_485,
    backend: Backend = "auto",
    threads: Threads = 0,
    trust_pickle: TrustPickle = False,
    model: ModelName = None,
    model_args: ModelArgs = None,
) -> None:
    """Classify image files of any size and mode; unreadable files get an error line each, exit 1 at the end."""
    from cifarlens.data.image_files import set_pillow_pixel_limit
    from cifarlens.deploy.predict import predict_files
    from cifarlens.deploy.runtime import open_classifier

    if top_k < 1 or batch_size < 1 or max_pixels < 1:
        raise ConfigError("--top-k, --batch-size and --max-pixels must be at least 1")
    set_pillow_pixel_limit(max_pixels)
    classifier = open_classifier(
        source,
        backend=backend,
        threads=threads or None,
        trust_pickle=trust_pickle,
        model=model,
        model_args=_model_args(model_args),
    )
    failed = done = 0
    table = None
    if not json_lines:
        table = Table(title=f"predictions of {escape(str(source))} ({classifier.backend})")
        table.add_column("file", overflow="fold")  # the whole path, wrapped, never cut off
        table.add_column("class", style="bold")
        table.add_column("p", justify="right")
        table.add_column(f"top {top_k}")
    for pred in predict_files(classifier, images, k=top_k, batch_size=batch_size, max_pixels=max_pixels):
        if pred.error is not None:
            failed += 1
            err_console.print(f"[bold red]error:[/] {escape(pred.file)}: {escape(pred.error)}", highlight=False)
        else:
            done += 1
        if json_lines:
            print(pred.to_json(), flush=True)
        elif pred.top:
            others = ", ".join(f"{c} {p:.1%}" for c, p in pred.top)
            table.add_row(escape(pred.file), pred.top[0][0], f"{pred.top[0][1]:.1%}", others)
    if table is not None and done:
        console.print(table)
    if failed:
        err_console.print(f"{failed} of {failed + done} files could not be classified", highlight=False)
        raise typer.Exit(1)
    if not done:
        raise ConfigError("no image files found; pass image files or folders that hold them")


@user_errors
def bench(
    source: Annotated[Path, typer.Argument(help="run directory or cifarlens .safetensors")],
    batch_sizes: Annotated[str, typer.Option(help="comma-separated batch sizes for throughput")] = "1,32,256",
    backends: Annotated[
        str,
        typer.Option(
            help="auto (every backend this machine has), or comma-separated: torch, torch-compile, "
            "torch-bf16, onnxruntime, onnxruntime-int8, openvino, openvino-bf16, openvino-int8"
        ),
    ] = "auto",
    threads: Annotated[int, typer.Option(help="threads for every backend (0: torch's default)")] = 0,
    seconds: Annotated[float, typer.Option(help="time per backend per batch size, split over --rounds")] = 2.0,
    rounds: Annotated[int, typer.Option(help="round-robin turns over all backends; the median is reported")] = 3,
    test_images: Annotated[int, typer.Option(help="test images for accuracy (0: the run's whole test split)")] = 0,
    data_dir: DataDir = None,
    out: Annotated[Path | None, typer.Option(help="JSON results (default RUN/export/bench.json)")] = None,
    device: Annotated[
        str, typer.Option(help="cpu, or cuda: torch on the GPU, onnxruntime with its CUDA provider if it has one")
    ] = "cpu",
) -> None:
    """Latency (p50/p99 at batch 1), throughput and accuracy of each backend on this CPU or GPU, same images."""
    from cifarlens.deploy.bench import available_backends, bench_run, parse_list
    from cifarlens.deploy.runtime import BACKENDS
    from cifarlens.run import RunDir, write_json

    sizes = parse_list(batch_sizes, int, "--batch-sizes")
    chosen = available_backends(device) if backends == "auto" else parse_list(backends, str, "--backends", BACKENDS)
    report = bench_run(
        source,
        chosen,
        batch_sizes=sizes,
        threads=threads,
        seconds=seconds,
        rounds=rounds,
        test_images=test_images,
        data_dir=data_dir,
        device=device,
        log=lambda line: console.print(line, markup=False, highlight=False),
    )
    console.print(_bench_table(report))
    out = out or (RunDir(source).bench_file if source.is_dir() else source.with_suffix(".bench.json"))
    write_json(out, report.to_dict())
    console.print(f"wrote {escape(str(out))}")


def _bench_table(report) -> Table:
    """``bench``'s table: a row per backend, a throughput column per batch size."""
    sizes, ref = report.batch_sizes, report.results[0].reference
    where = "this CPU" if report.device == "cpu" else report.device
    table = Table(title=f"inference on {where}: {escape(report.source)} ({report.spec.name}, {report.threads} threads)")
    table.add_column("backend", style="bold")
    table.add_column("runs on")
    table.add_column("accuracy", justify="right")
    table.add_column("p50 / p99 ms (b=1)", justify="right")
    for size in sizes:
        table.add_column(f"img/s b={size}", justify="right")
    table.add_column(f"vs {ref} b={max(sizes)}", justify="right")
    table.add_column("GFLOP/s (x fp32 matmul)", justify="right")
    for r in report.results:
        table.add_row(
            r.backend,
            r.runs_on,
            f"{r.accuracy:.2f}%",
            f"{r.latency_p50_ms:.2f} / {r.latency_p99_ms:.2f}",
            *(f"{r.throughput[s]:,.0f}" for s in sizes),
            f"{r.vs_reference:.2f}x",
            f"{r.gflops:.1f} ({r.vs_fp32_matmul:.2f}x)",
        )
    return table


@user_errors
def serve(
    source: ModelSource,
    host: Annotated[str, typer.Option(help="address to listen on (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    max_bytes: Annotated[int, typer.Option(help="largest accepted request body in bytes")] = 10 * 1024 * 1024,
    max_pixels: Annotated[int, typer.Option(help="larger images are refused (decompression-bomb guard)")] = 89_478_485,
    backend: Backend = "auto",
    threads: Threads = 0,
    trust_pickle: TrustPickle = False,
    model: ModelName = None,
    model_args: ModelArgs = None,
) -> None:
    """HTTP API: POST /predict an image, get the top-k classes; GET /health."""
    from cifarlens.data.image_files import set_pillow_pixel_limit
    from cifarlens.deploy.runtime import open_classifier
    from cifarlens.deploy.serve import serve as run_server

    if not 0 < port < 65536:
        raise ConfigError(f"--port must be 1..65535, got {port}")
    if max_bytes < 1 or max_pixels < 1:
        raise ConfigError("--max-bytes and --max-pixels must be at least 1")
    set_pillow_pixel_limit(max_pixels)
    classifier = open_classifier(
        source,
        backend=backend,
        threads=threads or None,
        trust_pickle=trust_pickle,
        model=model,
        model_args=_model_args(model_args),
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(
            f"[yellow]warning:[/] listening on {host}: other machines can reach this API", highlight=False
        )
    console.print(
        f"serving {escape(str(source))} ({classifier.backend}) on http://{host}:{port} (GET /health, POST /predict)"
    )
    run_server(classifier, host, port, max_bytes=max_bytes, max_pixels=max_pixels)
