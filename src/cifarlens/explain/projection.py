"""2-D maps of features (PCA, t-SNE, UMAP) and the numbers that say how faithful a map is.

* trustworthiness (scikit-learn): are the map's neighbours neighbours in feature space?
  It needs all pairwise distances, O(n^2) memory, so it is computed on a seeded subsample.
* kNN accuracy in the map: leave-one-out k-NN vote in 2-D, next to the same vote in the
  full feature space, i.e. how much of the class structure survives the projection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cifarlens.errors import CifarlensError
from cifarlens.explain.features import extract_features
from cifarlens.explain.plots import plot_projection
from cifarlens.explain.run_model import last_stage, load_run_model
from cifarlens.run import RunDir, write_json

METHODS = ("pca", "tsne", "umap")


@dataclass
class Projection:
    """A 2-D map: ``points`` float32 (N, 2), the method that made it and its settings and seconds."""

    points: np.ndarray
    method: str
    backend: str
    seconds: float
    settings: dict = field(default_factory=dict)


class Projector:
    """``Projector(method="tsne", seed=0)(features) -> Projection`` for features (N, D).

    t-SNE runs openTSNE (Barnes-Hut up to 10,000 points, FFT-accelerated above) and falls back to scikit-learn's TSNE
    when openTSNE is not installed; UMAP runs umap-learn. Features wider than ``pca_dims`` are
    first reduced by PCA for t-SNE and UMAP (the usual practice; it also makes them faster).
    """

    def __init__(
        self,
        method: str = "tsne",
        *,
        seed: int = 0,
        perplexity: float = 30.0,
        n_neighbors: int = 15,
        pca_dims: int = 50,
        n_jobs: int = -1,
        backend: str = "auto",
    ):
        if method not in METHODS:
            raise CifarlensError(f"unknown projection method {method!r}; choose one of: {', '.join(METHODS)}")
        if backend not in ("auto", "opentsne", "sklearn"):
            raise CifarlensError(f"unknown t-SNE backend {backend!r}; choose auto, opentsne or sklearn")
        self.method, self.seed, self.perplexity, self.n_neighbors = method, seed, perplexity, n_neighbors
        self.pca_dims, self.n_jobs, self.backend = pca_dims, n_jobs, backend

    def _reduce(self, x: np.ndarray) -> np.ndarray:
        from sklearn.decomposition import PCA

        if x.shape[1] <= self.pca_dims:
            return x
        return PCA(self.pca_dims, random_state=self.seed).fit_transform(x)

    def __call__(self, features: np.ndarray) -> Projection:
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or len(x) < 5:
            raise CifarlensError(f"a projection needs (N, D) features with N >= 5, got shape {x.shape}")
        t0 = time.perf_counter()
        settings: dict = {"seed": self.seed}
        if self.method == "pca":
            from sklearn.decomposition import PCA

            pca = PCA(2, random_state=self.seed).fit(x)
            points, backend = pca.transform(x), "sklearn"
            settings["explained_variance_ratio"] = [float(v) for v in pca.explained_variance_ratio_]
        elif self.method == "tsne":
            reduced = self._reduce(x)
            perplexity = min(self.perplexity, (len(x) - 1) / 3)
            settings |= {"perplexity": perplexity, "pca_dims": reduced.shape[1]}
            points, backend = self._tsne(reduced, perplexity)
        else:
            import umap

            reduced = self._reduce(x)
            n_neighbors = min(self.n_neighbors, len(x) - 1)
            settings |= {"n_neighbors": n_neighbors, "pca_dims": reduced.shape[1]}
            points = umap.UMAP(n_neighbors=n_neighbors, random_state=self.seed, n_jobs=1).fit_transform(reduced)
            backend = "umap-learn"
        return Projection(
            np.asarray(points, dtype=np.float32), self.method, backend, time.perf_counter() - t0, settings
        )

    def _tsne(self, x: np.ndarray, perplexity: float) -> tuple[np.ndarray, str]:
        if self.backend in ("auto", "opentsne"):
            try:
                from openTSNE import TSNE
            except ImportError:
                if self.backend == "opentsne":
                    raise CifarlensError("openTSNE is not installed; pip install openTSNE") from None
            else:
                # Barnes-Hut up to 10,000 points, FFT-interpolated gradients above. openTSNE's own
                # "auto" switches to FFT at 10,000, but on a 2-core CPU BH is faster there too, at equal
                # trustworthiness (BENCHMARKS.md, "Explain: feature extraction, t-SNE").
                gradient = "bh" if len(x) <= 10_000 else "fft"
                tsne = TSNE(
                    perplexity=perplexity,
                    random_state=self.seed,
                    n_jobs=self.n_jobs,
                    negative_gradient_method=gradient,
                    verbose=False,
                )
                return np.asarray(tsne.fit(x)), "openTSNE"
        from sklearn.manifold import TSNE as SkTSNE

        tsne = SkTSNE(perplexity=perplexity, random_state=self.seed, init="pca", n_jobs=self.n_jobs)
        return tsne.fit_transform(x), "sklearn"


def knn_accuracy(points: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Leave-one-out k-NN accuracy: each point is classified by the majority of its k nearest others."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(points) - 1)
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
    neighbours = labels[idx[:, 1:]]  # column 0 is the point itself
    votes = np.apply_along_axis(np.bincount, 1, neighbours, minlength=int(labels.max()) + 1)
    return float((votes.argmax(1) == labels).mean())


def map_quality(
    features: np.ndarray, points: np.ndarray, labels: np.ndarray, *, sample: int = 2000, k: int = 10, seed: int = 0
) -> dict:
    """Trustworthiness (on a seeded subsample of ``sample`` points) and kNN accuracy in the map and in feature space."""
    from sklearn.manifold import trustworthiness

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(points), size=min(sample, len(points)), replace=False))
    n_neighbors = min(k, len(idx) // 2 - 1)
    return {
        "trustworthiness": float(trustworthiness(features[idx], points[idx], n_neighbors=n_neighbors)),
        "trustworthiness_points": int(len(idx)),
        "trustworthiness_neighbors": int(n_neighbors),
        "knn_accuracy_2d": knn_accuracy(points, labels, k),
        "knn_accuracy_features": knn_accuracy(features, labels, k),
        "knn_k": k,
    }


@dataclass
class ProjectionResult:
    """What ``projection_run`` made: a layer's 2-D map of a split, its quality and what the figure needs."""

    model_name: str
    layer: str
    split: str
    projection: Projection  # points (N, 2)
    labels: np.ndarray  # (N,)
    classes: tuple[str, ...]
    quality: dict  # map_quality's numbers
    thumbnails: int = 0  # images drawn on the map
    images: np.ndarray | None = None  # uint8 (N, 3, H, W) when thumbnails are drawn

    @property
    def names(self) -> dict[str, str]:
        """Its file names (``RunDir.projection_names``): chart, numbers and points."""
        return RunDir.projection_names(self.layer, self.projection.method)

    @property
    def title(self) -> str:
        q, p = self.quality, self.projection
        return (
            f"{self.model_name} {self.layer}, {p.method} ({p.backend}), {len(p.points)} {self.split} images: "
            f"trustworthiness {q['trustworthiness']:.3f} (on {q['trustworthiness_points']}), "
            f"{q['knn_k']}-NN acc. in map {q['knn_accuracy_2d']:.1%} "
            f"vs features {q['knn_accuracy_features']:.1%}"
        )

    def write(self, folder: str | Path) -> list[Path]:
        """The map (PNG), its numbers (JSON) and the points (NPY) into ``folder``."""
        folder, p = Path(folder), self.projection
        paths = [folder / self.names[kind] for kind in ("chart", "numbers", "points")]
        plot_projection(
            p.points,
            self.labels,
            self.classes,
            paths[0],
            title=self.title,
            thumbnails=self.images,
            n_thumbnails=self.thumbnails,
            seed=p.settings["seed"],
        )
        np.save(paths[2], p.points)
        write_json(
            paths[1],
            {
                "layer": self.layer,
                "method": p.method,
                "backend": p.backend,
                "split": self.split,
                "images": int(len(p.points)),
                "seconds": p.seconds,
                **p.settings,
                **self.quality,
            },
        )
        return paths


def projection_run(
    run: str | Path,
    *,
    layer: str | None = None,
    method: str = "tsne",
    split: str = "test",
    limit: int = 0,
    seed: int = 0,
    thumbnails: int = 0,
    sample: int = 2000,
    data_dir: str | None = None,
    device: str = "cpu",
    show_progress: bool = False,
) -> ProjectionResult:
    """2-D map (``method``: pca, tsne or umap) of the pooled features (N, D) of ``layer`` (default: the deepest
    probe stage) for the first ``limit`` images (0: all) of the run's ``split``, extracted on ``device``, with
    trustworthiness on ``sample`` points and kNN accuracy in the map and in feature space."""

    model, spec, dev = load_run_model(run, device)
    chosen = RunDir(run).load_data(data_dir).split(split)
    projector = Projector(method, seed=seed)
    layer = layer or last_stage(model, spec)
    feats = extract_features(
        model,
        spec,
        chosen.images,
        chosen.labels,
        [layer],
        split=split,
        limit=limit,
        device=dev,
        show_progress=show_progress,
    )
    x, labels = feats.layers[layer], feats.labels
    proj = projector(x)
    quality = map_quality(x, proj.points, labels, sample=sample, seed=seed)
    images = chosen.images[: len(x)].numpy() if thumbnails else None
    return ProjectionResult(spec.name, layer, split, proj, labels, spec.classes, quality, thumbnails, images)
