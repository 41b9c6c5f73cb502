import pytest

from cifarlens.config import build_config, field_comments, read_yaml
from cifarlens.errors import ConfigError
from cifarlens.training import TrainConfig, recipe_options


def test_every_option_has_help_text():
    comments = field_comments(TrainConfig)
    missing = [f for f in TrainConfig.__dataclass_fields__ if not comments.get(f)]
    assert missing == []
    assert comments["lr"].startswith("peak learning rate")


def test_layers_later_wins(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 0.01\nepochs: 3\n")
    cfg = build_config(TrainConfig, recipe_options("resnet18"), read_yaml(path), {"epochs": 5})
    assert cfg.model == "resnet18"  # from the recipe
    assert cfg.lr == 0.01  # YAML beats the recipe
    assert cfg.epochs == 5  # flags beat YAML


def test_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown option 'learning_rate' in .*run.yaml.*valid options: .*lr"):
        build_config(TrainConfig, read_yaml(path), sources=(str(path),))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"epochs": 0}, "--epochs must be positive"),
        ({"lr": -1}, "--lr must be positive"),
        ({"optimizer": "rmsprop"}, "choose one of: sgd, adam, adamw"),
        ({"label_smoothing": 1.5}, "label-smoothing"),
        ({"color_contrast": 1.0}, r"--color-contrast in \[0, 1\)"),
        ({"color_brightness": -0.1}, r"--color-brightness must be in \[0, 1\]"),
        ({"epochs": "ten"}, "expected an integer"),
        ({"augment": "crop,warp"}, "unknown augmentation warp"),
        ({"model": "resnet9000"}, "unknown model 'resnet9000'; valid models: .*tutorial"),
        ({"model": "tutorial", "model_args": {"depth": 3}}, "does not take depth"),
        ({"nesterov": "maybe"}, "expected true or false"),
        ({"early_size": 40, "early_epochs": 1}, "--early-size must be between 8"),
        ({"early_size": 24, "early_epochs": 30, "epochs": 8}, "--early-epochs must be between 1 and --epochs"),
        ({"early_size": 24, "early_epochs": 2, "image_size": 64}, "works on 32x32 images"),
    ],
)
def test_bad_values_are_clear_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        build_config(TrainConfig, options)


def test_model_args_parse_from_yaml_text():
    cfg = build_config(TrainConfig, {"model": "vgg_small", "model_args": "{dropout: 0.25}"})
    assert cfg.model_args == {"dropout": 0.25}


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lr: [0.1\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        read_yaml(path)
    with pytest.raises(ConfigError, match="not found"):
        read_yaml(tmp_path / "missing.yaml")


def test_unknown_recipe_lists_valid():
    with pytest.raises(ConfigError, match="valid recipes: .*seed"):
        recipe_options("warp-speed")


def test_a_recipe_at_fewer_epochs_scales_its_epoch_counted_options():
    from cifarlens.training.recipes import scaled_to_epochs

    preset, changed = scaled_to_epochs(recipe_options("fast"), {}, {"epochs": 2})
    cfg = build_config(TrainConfig, preset, {"epochs": 2})
    assert (cfg.epochs, cfg.early_epochs, cfg.whiten_bias_epochs) == (2, 1, 0.75)
    assert changed == {"epochs": (8, 2), "early_epochs": (5, 1), "whiten_bias_epochs": (3.0, 0.75)}
    # A value the user sets stays as set; the recipe's own epochs change nothing.
    preset, changed = scaled_to_epochs(recipe_options("fast"), {"early_epochs": 2}, {"epochs": 4})
    assert (preset["early_epochs"], preset["whiten_bias_epochs"]) == (5, 1.5) and "early_epochs" not in changed
    assert scaled_to_epochs(recipe_options("fast"), {"epochs": 8}) == (recipe_options("fast"), {})
    assert scaled_to_epochs(recipe_options("tutorial"), {"epochs": 3})[0]["early_epochs"] == 0  # none to scale


def test_train_says_what_a_shorter_recipe_became(cifar_root, tmp_path):
    from conftest import cifarlens

    from cifarlens.run import RunDir

    out = tmp_path / "run"
    result = cifarlens(
        "train",
        "--recipe",
        "fast",
        "--epochs",
        "2",
        "--data-dir",
        str(cifar_root),
        "--no-download",
        "--model-args",
        "{width: 8, wide: 16}",
        "--no-report",
        "--no-evaluate",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "--early-epochs 5 -> 1, --whiten-bias-epochs 3 -> 0.75" in result.stdout
    config = RunDir(out).config
    assert (config["early_epochs"], config["whiten_bias_epochs"]) == (1, 0.75)


def test_a_bad_epochs_value_in_the_yaml_is_one_line_not_a_traceback(tmp_path):
    from conftest import assert_one_line_error, cifarlens

    config = tmp_path / "run.yaml"
    config.write_text("epochs: abc\n")
    assert_one_line_error(cifarlens("train", "--config", config, "--out", tmp_path / "run"), "'abc' for epochs")
