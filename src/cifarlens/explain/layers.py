"""The layers of a run's model that features can be taken from: ``layers_run(run) -> LayersResult``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cifarlens.explain.run_model import load_run_model
from cifarlens.models.layers import list_layers, map_size
from cifarlens.run import write_json


@dataclass
class LayersResult:
    """One row per layer (name, module type, output shape, poolable, probe stage) and the default CAM layer."""

    model_name: str
    image_size: int
    rows: list[dict]
    cam_layer: str
    cam_map_size: tuple[int, int]  # (H, W) of the CAM layer's maps

    def write(self, folder: str | Path) -> list[Path]:
        """``layers.json`` into ``folder``; returns its path."""
        path = Path(folder) / "layers.json"
        write_json(
            path,
            {
                "model": self.model_name,
                "image_size": self.image_size,
                "default_cam_target": self.cam_layer,
                "default_cam_map_size": list(self.cam_map_size),
                "layers": self.rows,
            },
        )
        return [path]


def layers_run(run: str | Path, *, device: str = "cpu") -> LayersResult:
    """Every layer of the run's model with its per-image output shape (C, H, W) or (D,), for one forward pass
    on ``device``; ``stage`` marks the layers ``probe_run`` uses by default."""
    model, spec, _ = load_run_model(run, device)
    caps = spec.capabilities(model)
    stages = set(caps.probe_stages)
    rows = [
        {
            "name": info.name,
            "module": info.module_type,
            "shape": list(info.shape),
            "poolable": info.poolable,
            "stage": info.name in stages,
        }
        for info in list_layers(model, spec.image_size)
    ]
    size = map_size(model, caps.cam_layer, spec.image_size)
    return LayersResult(spec.name, spec.image_size, rows, caps.cam_layer, size)
