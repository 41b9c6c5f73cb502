"""cifarlens import: a model trained with someone else's script, in each form people keep one (a .py class with
a DataParallel state dict or a Lightning-style checkpoint, TorchScript, torch.export), becomes a run that every
command reads and that scores the same as the original module."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_one_line_error, cifarlens

from cifarlens.data import load_cifar10
from cifarlens.errors import RunDirError
from cifarlens.importing import ImportConfig
from cifarlens.importing.importer import ImportCheckFailed, import_model
from cifarlens.models.imported import load_source
from cifarlens.run import RunDir

# Module names unlike ours, functional ReLUs, a helper class in a sibling file, a factory with an argument.
BLOCKS = """
import torch.nn as nn
import torch.nn.functional as F


class Unit(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.norm(self.conv(x)))
"""
MODEL = """
import torch
import torch.nn as nn
import torch.nn.functional as F

from foreign_blocks import Unit


class Foreign(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.entry = Unit(3, width)
        self.deeper = Unit(width, 2 * width)
        self.readout = nn.Linear(2 * width, 10)

    def forward(self, x):
        x = F.max_pool2d(self.entry(x), 2)
        x = self.deeper(x)
        return self.readout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build(width=8):
    return Foreign(width)
"""


class Rolled(torch.nn.Module):
    """A model whose output j is class j - 1: its training script numbered the classes another way."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).roll(1, dims=1)


@pytest.fixture(scope="module")
def foreign(cifar_root, tmp_path_factory):
    """The user's model trained on x / 255 with a plain loop, saved in four forms; and its test accuracy."""
    folder = tmp_path_factory.mktemp("foreign")
    (folder / "code").mkdir()
    (folder / "code" / "foreign_blocks.py").write_text(textwrap.dedent(BLOCKS))
    (folder / "code" / "foreign_model.py").write_text(textwrap.dedent(MODEL))
    module, _ = load_source(folder / "code" / "foreign_model.py", trust_code=True)
    data = load_cifar10(cifar_root, download=False)
    x, y = data.train.images.float() / 255, data.train.labels
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = module.build(width=8)
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(150):
            i = torch.randint(0, len(y), (64,))
            loss = F.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    test_x = data.test.images.float() / 255
    with torch.no_grad():
        logits = model(test_x)
    state = model.state_dict()
    torch.save({"module." + k: v for k, v in state.items()}, folder / "dataparallel.pt")
    torch.save({"epoch": 3, "state_dict": {"model." + k: v for k, v in state.items()}, "lr": 0.1}, folder / "lit.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), folder / "model.ts.pt")
        dynamic = ({0: torch.export.Dim.DYNAMIC},)
        torch.export.save(torch.export.export(model, (test_x[:2],), dynamic_shapes=dynamic), folder / "model.pt2")
        axes = {"x": {0: "batch"}, "scores": {0: "batch"}}
        torch.onnx.export(
            model,
            (test_x[:2],),
            str(folder / "model.onnx"),
            dynamo=False,
            input_names=["x"],
            output_names=["scores"],
            dynamic_axes=axes,
        )
        rolled = torch.export.export(Rolled(model), (test_x[:2],), dynamic_shapes=dynamic)
        torch.export.save(rolled, folder / "rolled.pt2")
    return {
        "folder": folder,
        "logits": logits,
        "accuracy": float((logits.argmax(1) == data.test.labels).float().mean()),
    }


def _import(foreign, cifar_root, out: Path, source: str, **options) -> Path:
    cfg = ImportConfig(source=source, out=str(out), data_dir=str(cifar_root), scale="0-1", **options)
    cfg.validate()
    return import_model(cfg).run


def _trust(monkeypatch):
    monkeypatch.setenv("CIFARLENS_TRUST_CODE", "1")


def test_each_form_imports_and_scores_as_the_original_module(foreign, cifar_root, tmp_path, monkeypatch):
    folder = foreign["folder"]
    forms = {
        "dataparallel": (f"{folder}/code/foreign_model.py:build", {"weights": str(folder / "dataparallel.pt")}),
        "lightning": (f"{folder}/code/foreign_model.py:build", {"weights": str(folder / "lit.ckpt")}),
        "torchscript": (str(folder / "model.ts.pt"), {}),
        "export": (str(folder / "model.pt2"), {}),
    }
    assert foreign["accuracy"] > 0.5
    for name, (source, options) in forms.items():
        run = _import(foreign, cifar_root, tmp_path / name, source, trust_code=True, **options)
        _trust(monkeypatch)  # readers of a .py run need the trust the import was given
        model, spec = RunDir(run).load_model()
        images = load_cifar10(cifar_root, download=False).test.images
        with torch.no_grad():
            logits = model(spec.inputs(images))
        torch.testing.assert_close(logits, foreign["logits"], atol=1e-4, rtol=1e-4, msg=name)
        assert RunDir(run).summary["test"]["accuracy"] == pytest.approx(foreign["accuracy"]), name
        monkeypatch.delenv("CIFARLENS_TRUST_CODE")


def test_the_python_run_keeps_its_code_and_rebuilds_without_the_original(foreign, cifar_root, tmp_path, monkeypatch):
    folder = foreign["folder"]
    code = tmp_path / "code"
    code.mkdir()
    for name in ("foreign_model.py", "foreign_blocks.py"):
        (code / name).write_text((folder / "code" / name).read_text())
    run = _import(
        foreign,
        cifar_root,
        tmp_path / "run",
        f"{code}/foreign_model.py:build",
        weights=str(folder / "lit.ckpt"),
        trust_code=True,
    )
    assert sorted(p.name for p in (run / "source").iterdir()) == ["foreign_blocks.py", "foreign_model.py"]
    for file in code.iterdir():
        file.unlink()  # the original is gone: the run must not need it
    with pytest.raises(RunDirError, match="CIFARLENS_TRUST_CODE=1"):
        RunDir(run).load_model()
    _trust(monkeypatch)
    model, spec = RunDir(run).load_model()
    caps = spec.capabilities(model)
    assert (caps.classifier, caps.cam_layer) == ("readout", "deeper")
    assert spec.mean == (0.0, 0.0, 0.0) and spec.std == (1.0, 1.0, 1.0)
    (run / "source" / "foreign_blocks.py").write_text(BLOCKS + "\n# edited\n")
    with pytest.raises(RunDirError, match="changed since it was imported"):
        RunDir(run).load_model()


def test_the_whole_chain_reads_an_imported_run(foreign, cifar_root, tmp_path):
    """The torch.export form through every reader: evaluate with TTA, attribute (a CAM too), rank, export,
    predict and the explorer's JSON API."""
    from fastapi.testclient import TestClient

    from cifarlens.explore.app import create_app
    from cifarlens.explore.explorer import Explorer

    run = _import(foreign, cifar_root, tmp_path / "run", str(foreign["folder"] / "model.pt2"))
    for args in (
        ("evaluate", run, "--tta"),
        ("explain", "attribute", run, "--index", "0-1", "--method", "saliency,occlusion,gradcam"),
        ("explain", "rank", run, "--n", "8"),
        ("export", run),
    ):
        result = cifarlens(*args)
        assert result.returncode == 0, result.stderr
    assert RunDir(run).summary["test_tta"]["n"] == 100
    assert (run / "explain" / "rank" / "rank.csv").is_file() and (run / "export" / "model.onnx").is_file()
    image = cifar_root / "one.png"
    from PIL import Image

    Image.fromarray(load_cifar10(cifar_root, download=False).test.images[3].permute(1, 2, 0).numpy()).save(image)
    predicted = cifarlens("predict", run, image, "--json")
    assert predicted.returncode == 0 and '"class"' in predicted.stdout, predicted.stderr
    client = TestClient(create_app(Explorer([run])))
    assert client.get("/api/runs/0/overview").status_code == 200
    assert client.get("/api/runs/0/confusion").json()["matrix"]
    answer = client.get("/api/runs/0/images/3", params={"methods": "saliency,gradcam"}).json()
    assert [a["method"] for a in answer["attributions"]] == ["saliency", "gradcam"]


def test_torchscript_runs_gradient_methods_and_refuses_layer_tools_in_one_line(foreign, cifar_root, tmp_path):
    run = _import(foreign, cifar_root, tmp_path / "run", str(foreign["folder"] / "model.ts.pt"))
    ok = cifarlens("explain", "attribute", run, "--index", "0", "--method", "saliency,integrated-gradients")
    assert ok.returncode == 0, ok.stderr
    assert_one_line_error(cifarlens("explain", "cam", run, "--index", "0"), "TorchScript", "torch.export .pt2")
    assert_one_line_error(cifarlens("export", run), "TorchScript model or an ONNX graph cannot be exported")


def test_a_wrong_normalisation_is_diagnosed_and_nothing_is_written(foreign, cifar_root, tmp_path):
    source = f"{foreign['folder']}/code/foreign_model.py:build"
    weights = str(foreign["folder"] / "dataparallel.pt")
    cfg = ImportConfig(source=source, out=str(tmp_path / "run"), data_dir=str(cifar_root), weights=weights)
    cfg.trust_code = True
    with pytest.raises(ImportCheckFailed) as caught:
        import_model(cfg)
    assert caught.value.diagnosis.best.flags == "--scale 0-1"
    assert "re-run with --scale 0-1" in str(caught.value)
    assert not any(tmp_path.iterdir()), "a failed import leaves nothing behind"
    result = cifarlens(
        "import", source, "--weights", weights, "--out", tmp_path / "run", "--trust-code", "--data-dir", cifar_root
    )
    assert_one_line_error(result, "--scale 0-1")
    assert "0-1 scaling" in result.stderr  # the table of conventions


def test_a_shifted_class_order_is_diagnosed_and_the_flag_fixes_it(foreign, cifar_root, tmp_path):
    names = "airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck".split(",")
    rolled = str(foreign["folder"] / "rolled.pt2")
    cfg = ImportConfig(source=rolled, out=str(tmp_path / "run"), data_dir=str(cifar_root), scale="0-1")
    with pytest.raises(ImportCheckFailed) as caught:
        import_model(cfg)
    order = ",".join(names[-1:] + names[:-1])  # output 0 is truck, output 1 airplane ...
    assert caught.value.diagnosis.class_order == order and f"--classes {order}" in str(caught.value)
    run = _import(foreign, cifar_root, tmp_path / "run", rolled, classes=order)
    assert RunDir(run).read_spec().classes == tuple(names)  # the run answers in the dataset's order
    assert RunDir(run).summary["test"]["accuracy"] == pytest.approx(foreign["accuracy"])


def test_user_mistakes_get_one_line(foreign, cifar_root, tmp_path):
    folder = foreign["folder"]
    source = f"{folder}/code/foreign_model.py"
    no_trust = cifarlens("import", f"{source}:build", "--out", tmp_path / "a", "--data-dir", cifar_root)
    assert_one_line_error(no_trust, "--trust-code")
    bad_factory = cifarlens("import", f"{source}:make", "--out", tmp_path / "a", "--trust-code")
    assert_one_line_error(bad_factory, "no callable 'make'", "Foreign, build")
    pickled = tmp_path / "whole.pt"
    torch.save({"model": torch.nn.Linear(2, 2), "epoch": 1}, pickled)  # a whole module: needs weights_only=False
    refused = cifarlens("import", f"{source}:build", "--weights", pickled, "--out", tmp_path / "a", "--trust-code")
    assert_one_line_error(refused, "weights_only=False", "state_dict")
    narrow = cifarlens(
        "import",
        f"{source}:build",
        "--model-args",
        "{width: 4}",
        "--weights",
        folder / "dataparallel.pt",
        "--out",
        tmp_path / "a",
        "--trust-code",
    )
    assert_one_line_error(narrow, "do not fit the model", "of another shape: entry.conv.weight")
    weights_only = cifarlens("import", folder / "dataparallel.pt", "--out", tmp_path / "a")
    assert_one_line_error(weights_only, "holds weights only", "file.py:factory")
    run = _import(foreign, cifar_root, tmp_path / "taken", str(folder / "model.pt2"))
    assert_one_line_error(cifarlens("import", folder / "model.pt2", "--out", run), "already exists")
    assert not (tmp_path / "a").exists()


def test_a_probability_output_becomes_log_probabilities(foreign, cifar_root, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    for name in ("foreign_model.py", "foreign_blocks.py"):
        (code / name).write_text((foreign["folder"] / "code" / name).read_text())
    (code / "soft.py").write_text(
        "import torch\nfrom foreign_model import Foreign\n\n\n"
        "class Soft(Foreign):\n    def forward(self, x):\n        return torch.softmax(super().forward(x), 1)\n"
    )
    run = _import(
        foreign,
        cifar_root,
        tmp_path / "run",
        f"{code}/soft.py:Soft",
        weights=str(foreign["folder"] / "lit.ckpt"),
        trust_code=True,
    )
    assert RunDir(run).read_spec().kwargs["output"] == "probabilities"
    assert RunDir(run).summary["test"]["accuracy"] == pytest.approx(foreign["accuracy"])


def test_an_installed_factory_and_a_known_name_with_weights(cifar_root, tmp_path):
    from cifarlens.models import create_model

    run = import_model(
        ImportConfig(
            source="torchvision.models:squeezenet1_1",
            out=str(tmp_path / "tv"),
            model_args={"num_classes": 10},
            check=False,
        )
    ).run
    spec = RunDir(run).read_spec()
    assert spec.kwargs["package"] == "torchvision" and spec.kwargs["version"] == torchvision_version()
    model, _ = RunDir(run).load_model()
    assert spec.capabilities(model).classifier == "" and spec.capabilities(model).cam_layer  # a conv head
    tutorial = create_model("tutorial")
    torch.save({"net": {"_orig_mod." + k: v for k, v in tutorial.state_dict().items()}}, tmp_path / "t.pth")
    run = import_model(
        ImportConfig(source="tutorial", out=str(tmp_path / "tut"), weights=str(tmp_path / "t.pth"), check=False)
    ).run
    loaded, spec = RunDir(run).load_model()
    assert spec.name == "tutorial" and spec.declared is None  # the registry declares its capabilities
    for key, value in tutorial.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def torchvision_version() -> str:
    from importlib import metadata

    return metadata.version("torchvision")


def test_train_init_from_fine_tunes_an_imported_run(foreign, cifar_root, tmp_path, monkeypatch):
    from cifarlens.config import build_config
    from cifarlens.training import TrainConfig, recipe_options, train

    run = _import(foreign, cifar_root, tmp_path / "imported", str(foreign["folder"] / "model.pt2"))
    options = {
        "init_from": str(run),
        "epochs": 1,
        "batch_size": 50,
        "optimizer": "sgd",
        "lr": 0.001,
        "schedule": "constant",
        "augment": "flip",
        "data_dir": str(cifar_root),
        "download": False,
        "out": str(tmp_path / "tuned"),
        "precision": "fp32",
        "channels_last": False,
        "threads": 1,
        "tta": False,
        "report": False,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuned = train(build_config(TrainConfig, recipe_options("seed"), options))
    assert (tuned / "source" / "model.pt2").is_file()
    model, spec = RunDir(tuned).load_model()  # rebuilt from the new run's own copy
    assert spec.name == "imported:export" and spec.mean == (0.0, 0.0, 0.0)
    before, _ = RunDir(run).load_model()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before.state_dict()[k])]
    assert changed  # it trained
    from cifarlens.evaluation import evaluate_run

    assert evaluate_run(tuned)["accuracy"] > 0.5  # from the imported weights, not from scratch


def test_an_onnx_graph_evaluates_runs_occlusion_and_refuses_gradients_in_one_line(foreign, cifar_root, tmp_path):
    run = _import(foreign, cifar_root, tmp_path / "run", str(foreign["folder"] / "model.onnx"))
    assert RunDir(run).summary["test"]["accuracy"] == pytest.approx(foreign["accuracy"])
    model, spec = RunDir(run).load_model()
    images = load_cifar10(cifar_root, download=False).test.images
    torch.testing.assert_close(model(spec.inputs(images)), foreign["logits"], atol=1e-4, rtol=1e-4)
    ok = cifarlens("explain", "attribute", run, "--index", "0", "--method", "occlusion")
    assert ok.returncode == 0, ok.stderr
    refused = cifarlens("explain", "attribute", run, "--index", "0", "--method", "saliency")
    assert_one_line_error(refused, "saliency needs gradients", "occlusion")
    from cifarlens.explore import Explorer

    explorer = Explorer([run])  # the explorer offers what runs on a graph: gradient-free methods, no layers
    info = explorer.info()
    assert info["methods"] == ["occlusion", "feature-ablation", "kernel-shap", "lime"] and info["layers"]["probe"] == []
    shown = explorer.explain(0, explorer.image(3), methods=info["default_methods"], index=3)
    assert [a["method"] for a in shown["attributions"]] == info["default_methods"] and shown["feature_maps"][
        "image"
    ] is None
