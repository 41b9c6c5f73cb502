import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from cifarlens.errors import ConfigError
from cifarlens.models import count_parameters, create_model, list_models, model_capabilities, model_kwargs, summarize

EXPECTED_PARAMS = {
    "tutorial": 62_006,
    "seed_bn8": 2_946_538,
    "vgg_small": 2_473_610,
    "conv_blocks": 551_018,
    "resnet18": 11_173_962,
    "mobilenet_v2": 2_236_682,
    "vgg16": 14_990_922,
    "airnet": 1_971_352,
}


def test_registry_has_the_seed_architectures():
    assert set(EXPECTED_PARAMS) <= set(list_models())


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_logits_shape_params_and_names(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert count_parameters(model) == EXPECTED_PARAMS[name]
    assert create_model(name, num_classes=7).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    # Layer names are stable and FX-traceable: feature extraction depends on them.
    _, nodes = get_graph_node_names(model)
    assert len(nodes) > 5
    assert get_graph_node_names(create_model(name))[1] == nodes


def test_airnet_activation_is_a_choice():
    torch.manual_seed(0)
    silu = create_model("airnet", act="silu")
    assert [type(m).__name__ for m in silu.modules() if isinstance(m, (torch.nn.GELU, torch.nn.SiLU))] == ["SiLU"] * 7
    assert count_parameters(silu) == EXPECTED_PARAMS["airnet"]
    with pytest.raises(ConfigError, match="act must be one of gelu, silu"):
        create_model("airnet", act="relu")


def test_cifar_stems_keep_resolution():
    r18 = create_model("resnet18")
    assert r18.conv1.kernel_size == (3, 3) and r18.conv1.stride == (1, 1)
    feats = create_feature_extractor(r18.eval(), {"layer4": "out"})(torch.randn(1, 3, 32, 32))["out"]
    assert feats.shape == (1, 512, 4, 4)
    mnv2 = create_model("mobilenet_v2").eval()
    assert mnv2.features(torch.randn(1, 3, 32, 32)).shape[-1] == 4
    assert create_model("mobilenet_v2", cifar_stem=False).eval().features(torch.randn(1, 3, 32, 32)).shape[-1] == 1


def test_mobilenet_pooling_choice():
    torch.manual_seed(0)
    avg = create_model("mobilenet_v2", pooling="avg").eval()
    mx = create_model("mobilenet_v2", pooling="max").eval()
    mx.load_state_dict(avg.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(avg(x), mx(x), rtol=1e-2, atol=0)  # logits are ~1e-9 at init
    with pytest.raises(ConfigError, match="choose one of: avg, max"):
        create_model("mobilenet_v2", pooling="bogus")


def test_vgg16_batch_norm_option():
    with_bn = create_model("vgg16")
    without = create_model("vgg16", batch_norm=False)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in with_bn.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in without.modules())


def test_unknown_model_and_argument_errors():
    with pytest.raises(ConfigError, match="unknown model 'resnet9000'; valid models: .*resnet18.*tutorial"):
        create_model("resnet9000")
    with pytest.raises(ConfigError, match="does not take argument.*depth; valid arguments: dropout"):
        create_model("vgg_small", depth=3)
    assert model_kwargs("vgg_small") == {"dropout": 0.5}


def test_summary_totals_match_counts():
    info = summarize(create_model("tutorial"))
    assert info["total"]["params"] == 62_006
    assert sum(row["params"] for row in info["rows"]) == 62_006
    # conv1 6x28x28x(3x5x5) + conv2 16x10x10x(6x5x5) + fc 400x120 + 120x84 + 84x10, plus one add per bias output
    assert info["total"]["macs"] == 651_720 + 6 * 28 * 28 + 16 * 10 * 10 + 120 + 84 + 10
    conv1 = next(r for r in info["rows"] if r["layer"] == "features.conv1")
    assert conv1["output_shape"] == (1, 6, 28, 28)


def test_seed_bn8_trains_with_dropout_and_bn():
    torch.manual_seed(0)
    model = create_model("seed_bn8").train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_airnet_whitening_decorrelates_patches():
    torch.manual_seed(0)
    mix = torch.randn(3, 3)  # correlated colour channels
    images = torch.einsum("dc,nchw->ndhw", mix, torch.randn(512, 3, 32, 32))
    model = create_model("airnet")
    model_capabilities("airnet").init_from_data(model, images)
    out = torch.nn.functional.conv2d(images, model.whiten.weight[:12])  # one sign of each eigenvector
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(flat.T)
    assert torch.allclose(cov, torch.eye(12), atol=0.05)
    assert not model.whiten.weight.requires_grad
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert "blocks.block1.bn1.weight" in frozen  # BatchNorm scale stays 1


@pytest.mark.parametrize("name", list_models())
def test_declared_classifier_and_probe_stages_exist_in_the_built_model(name):
    """What tools read from a model's declaration names real parts of it: the classifier is an nn.Linear with
    the model's classes as outputs, and every probe stage is a node the feature extractor can return."""
    model = create_model(name).eval()
    caps = model_capabilities(name)
    classifier = model.get_submodule(caps.classifier)
    assert isinstance(classifier, torch.nn.Linear) and classifier.out_features == 10, name
    assert caps.probe_stages, name
    _, nodes = get_graph_node_names(model)
    missing = [stage for stage in caps.probe_stages if stage not in nodes]
    assert not missing, f"{name}: probe stages {missing} are not nodes of the traced model"
    model.get_submodule(caps.cam_layer)  # raises AttributeError when the declared CAM layer is not a module
