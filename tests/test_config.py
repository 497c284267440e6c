"""The config tree: recipes, overrides, validation errors that name the key."""

import pytest

from convzoo import config as C
from convzoo.errors import ConvzooError


def test_defaults_are_the_documented_cifar_recipe():
    cfg = C.Config()
    assert cfg.model.name == "resnet20"
    assert (cfg.train.batch_size, cfg.optim.lr, cfg.optim.momentum) == (128, 0.1, 0.9)
    assert cfg.optim.weight_decay == 5e-4
    assert cfg.schedule.name == "onecycle"
    assert (cfg.augment.pad, cfg.augment.flip) == (4, True)


def test_override_parses_yaml_values_and_coerces_types():
    cfg = C.apply_overrides(C.Config(), C.parse_override("optim.lr=1"))
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    cfg = C.apply_overrides(cfg, C.parse_override("schedule.milestones=[90, 135]"))
    assert cfg.schedule.milestones == [90.0, 135.0]
    cfg = C.apply_overrides(cfg, C.parse_override("model.kwargs.shortcut=projection"))
    assert cfg.model.kwargs == {"shortcut": "projection"}


def test_unknown_key_names_the_key():
    with pytest.raises(ConvzooError, match="optim.learning_rate"):
        C.apply_overrides(C.Config(), C.parse_override("optim.learning_rate=0.1"))
    with pytest.raises(ConvzooError, match="'nonsense'"):
        C.from_dict({"nonsense": 1})


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConvzooError, match=r"train\.epochs.*'ten'"):
        C.apply_overrides(C.Config(), C.parse_override("train.epochs=ten"))
    with pytest.raises(ConvzooError, match=r"augment\.flip"):
        C.apply_overrides(C.Config(), C.parse_override("augment.flip=3"))


def test_override_without_equals_is_an_error():
    with pytest.raises(ConvzooError, match="SECTION.KEY=VALUE"):
        C.parse_override("optim.lr")


def test_every_shipped_recipe_validates():
    names = C.list_recipes()
    assert "quickstart" in names
    for name in names:
        cfg = C.from_dict(C.load_recipe(name))
        assert cfg.model.name


def test_unknown_recipe_lists_known(tmp_path):
    with pytest.raises(ConvzooError, match="quickstart"):
        C.load_recipe("no-such-recipe")
    with pytest.raises(ConvzooError, match="not found"):
        C.load_recipe(str(tmp_path / "missing.yaml"))


def test_save_and_load_round_trip(tmp_path):
    cfg = C.apply_overrides(C.Config(), {"optim": {"lr": 0.05}, "stages": [{"epochs": 5}]})
    C.save_config(cfg, tmp_path / "config.yaml")
    assert C.load_config(tmp_path / "config.yaml") == cfg
