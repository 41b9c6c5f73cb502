"""Speed of the explain commands on this machine: feature extraction, t-SNE (openTSNE vs scikit-learn), CAM.

Three measurements on the test split, through the same code the commands run:

* feature extraction: pooled activations of one layer for ``--n`` test images (images/s);
* t-SNE of those features, openTSNE (what ``explain projection`` uses) side by side with
  scikit-learn's TSNE at equal settings (same PCA-50 input, perplexity 30, PCA initialisation,
  750 iterations, same threads); trustworthiness of both maps on the same seeded 2,000-point
  subsample, so the speed-up is read at equal quality;
* CAM: seconds per image of every method on ``--cam-images`` test images (batches of 16).

    python benchmarks/explain_speed.py --run runs/airnet-...            # full: 10,000 images
    python benchmarks/explain_speed.py --run runs/airnet-... --quick    # 500 images, checks it works

``--rank`` instead runs ``explain rank`` (every attribution method on ``--rank-n`` seeded test images: deletion,
insertion, ROAD, randomisation sanity, ms per image) and ``explain rank --methods cams`` once per
``--cam-layers`` entry (the old and the new default CAM layer), and prints both tables:

    python benchmarks/explain_speed.py --rank --run runs/airnet-... --rank-n 500 --cam-layers blocks,blocks.block2

Without ``--run`` an untrained ``--model`` is timed (the t-SNE numbers then describe random
features). Results go to ``--out`` as JSON and are printed as Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import torch

from cifarlens.explain.cam import METHODS, CamExplainer
from cifarlens.explain.features import ActivationPooler
from cifarlens.explain.projection import Projector, map_quality
from cifarlens.models.layers import default_stages, list_layers


def load(args):
    from cifarlens.data import CIFAR10_MEAN, CIFAR10_STD, prepare_data
    from cifarlens.models import create_model
    from cifarlens.run import ModelSpec, RunDir

    if args.run:
        model, spec = RunDir(args.run).load_model()
        data = RunDir(args.run).load_data(args.data_dir)
        return model, spec, data, str(args.run)
    data = prepare_data(args.data_dir, download=False)
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    spec = ModelSpec(args.model, {}, 10, data.classes, CIFAR10_MEAN, CIFAR10_STD)
    return model, spec, data, f"untrained {args.model}"


def time_tsne(x: np.ndarray, labels: np.ndarray, seed: int, threads: int) -> list[dict]:
    """openTSNE and scikit-learn t-SNE at equal settings on the same PCA-reduced features."""
    from sklearn.manifold import TSNE

    reduced = Projector("tsne", seed=seed)._reduce(x)  # the PCA-50 step explain projection applies
    rows = []
    t0 = time.perf_counter()
    points = Projector("tsne", seed=seed, n_jobs=threads, pca_dims=reduced.shape[1], backend="opentsne")(reduced).points
    rows.append({"backend": "openTSNE", "seconds": time.perf_counter() - t0, "points": points})
    t0 = time.perf_counter()
    sk_points = TSNE(perplexity=30.0, init="pca", max_iter=750, random_state=seed, n_jobs=threads).fit_transform(
        reduced
    )
    rows.append({"backend": "scikit-learn", "seconds": time.perf_counter() - t0, "points": sk_points})
    for row in rows:
        quality = map_quality(x, row.pop("points"), labels, sample=2000, seed=seed)
        row |= {"trustworthiness": quality["trustworthiness"], "knn_accuracy_2d": quality["knn_accuracy_2d"]}
    rows[0]["speedup_vs_sklearn"] = rows[1]["seconds"] / rows[0]["seconds"]
    return rows


def time_cams(model, spec, images, methods, batch: int = 16) -> list[dict]:
    x = spec.inputs(images)
    rows = []
    for method in methods:
        try:
            explainer = CamExplainer(model, method, image_size=spec.image_size)
        except Exception as err:  # the original CAM needs a GAP + linear head
            rows.append({"method": method, "seconds_per_image": None, "note": str(err).split(";")[0]})
            continue
        explainer(x[:2])  # warm-up
        t0 = time.perf_counter()
        for start in range(0, len(x), batch):
            explainer(x[start : start + batch])
        rows.append(
            {
                "method": method,
                "target_layer": explainer.target_layer,
                "seconds_per_image": (time.perf_counter() - t0) / len(x),
            }
        )
    return rows


def rank_tables(args) -> None:
    """``explain rank`` of every method, then of the CAM methods at each of ``--cam-layers``; JSON + markdown."""
    from cifarlens.explain.ranking import RankSettings, rank
    from cifarlens.run import RunDir

    spec = RunDir(args.run).read_spec()
    t0 = time.perf_counter()
    out = Path(args.out or f"benchmarks/results/rank_{spec.name}.json")
    ranked = rank(
        args.run,
        methods=args.methods_rank,
        n=args.rank_n,
        data_dir=args.data_dir,
        device="cpu",
        settings=RankSettings(seed=args.seed, sanity_n=args.sanity_n),
        partial_to=out.with_suffix(".partial"),
    )  # the table so far, kept if the run is stopped
    result = {
        "date": date.today().isoformat(),
        "machine": cpu_name(),
        "threads": torch.get_num_threads(),
        "run": str(args.run),
        "model": spec.name,
        "images": len(ranked.indices),
        "sanity_n": args.sanity_n,
        "seconds": time.perf_counter() - t0,
        "rows": ranked.rows,
        "notes": ranked.notes,
        "cam_layers": {},
    }
    print(f"\n{ranked.title()}, {result['seconds']:.0f} s in all\n\n{ranked.markdown()}")
    for note in ranked.notes:
        print(f"note: {note}")
    for layer in [x for x in (args.cam_layers or "").split(",") if x]:
        cams = rank(
            args.run,
            methods="cams",
            n=args.rank_n,
            data_dir=args.data_dir,
            device="cpu",
            settings=RankSettings(seed=args.seed, sanity_n=args.sanity_n, target_layer=layer),
        )
        result["cam_layers"][layer] = cams.rows
        print(f"\nCAM methods at {layer}:\n\n{cams.markdown()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), which platform.processor() leaves empty on Linux."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="trained run directory (default: an untrained --model)")
    parser.add_argument("--model", default="airnet", help="model timed without --run")
    parser.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py")
    parser.add_argument("--layer", default=None, help="layer whose features are extracted (default: last stage)")
    parser.add_argument("--n", type=int, default=10_000, help="test images for extraction and t-SNE")
    parser.add_argument("--cam-images", type=int, default=64, help="test images per CAM method")
    parser.add_argument("--methods", default=",".join(METHODS), help="CAM methods timed")
    parser.add_argument("--threads", type=int, default=0, help="torch and t-SNE threads (0: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="500 images, 8 CAM images: checks the script works")
    parser.add_argument("--rank", action="store_true", help="time and score explain rank instead (needs --run)")
    parser.add_argument("--rank-n", type=int, default=500, help="seeded test images of --rank")
    parser.add_argument(
        "--sanity-n", type=int, default=100, help="images of those the randomisation check runs on (0: all)"
    )
    parser.add_argument("--methods-rank", default="all", help="methods of --rank: all, cams or a list")
    parser.add_argument("--cam-layers", default="", help="--rank: also rank the CAM methods at each of these layers")
    parser.add_argument(
        "--out", default=None, help="JSON results (default: benchmarks/results/explain_speed[_quick].json)"
    )
    args = parser.parse_args()
    if args.quick:
        args.n, args.cam_images = min(args.n, 500), min(args.cam_images, 8)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", message=".*official CIFAR-10 MD5")
    if args.rank:
        if not args.run:
            parser.error("--rank needs --run (a trained run)")
        return rank_tables(args)

    model, spec, data, source = load(args)
    layer = args.layer or default_stages(list_layers(model, spec.image_size))[-1]
    images, labels = data.test.images[: args.n], data.test.labels[: args.n].numpy()

    pooler = ActivationPooler(model, spec, [layer])
    pooler(images[:8])  # warm-up
    t0 = time.perf_counter()
    feats = pooler(images)[layer]
    extract_s = time.perf_counter() - t0

    tsne_rows = time_tsne(feats, labels, args.seed, threads)
    cam_rows = time_cams(model, spec, data.test.images[: args.cam_images], args.methods.split(","))

    result = {
        "date": date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        "threads": threads,
        "source": source,
        "layer": layer,
        "images": int(len(images)),
        "feature_dims": int(feats.shape[1]),
        "extract_seconds": extract_s,
        "extract_images_per_s": len(images) / extract_s,
        "tsne": tsne_rows,
        "cam": cam_rows,
        "cam_images": args.cam_images,
    }
    out = Path(args.out or f"benchmarks/results/explain_speed{'_quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{source}, layer {layer} ({feats.shape[1]}-d), {len(images)} test images, {threads} threads\n")
    print(f"feature extraction: {extract_s:.2f} s ({result['extract_images_per_s']:.0f} images/s)\n")
    print(
        "| t-SNE | seconds | trustworthiness (2,000 pts) | 10-NN acc. "
        "in map | speed-up |\n| --- | --- | --- | --- | --- |"
    )
    for r in tsne_rows:
        speedup = f"{r['speedup_vs_sklearn']:.1f}x" if "speedup_vs_sklearn" in r else "1x"
        print(
            f"| {r['backend']} | {r['seconds']:.1f} | {r['trustworthiness']:.4f} "
            f"| {r['knn_accuracy_2d']:.1%} | {speedup} |"
        )
    print(f"\n| CAM method ({args.cam_images} images) | ms / image |\n| --- | --- |")
    for r in cam_rows:
        ms = f"{r['seconds_per_image'] * 1000:.1f}" if r["seconds_per_image"] is not None else f"n/a ({r['note']})"
        print(f"| {r['method']} | {ms} |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
