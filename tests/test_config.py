"""The config tree: declared types are the truth, every value is checked where it is declared.

The walk tests go over every key of the tree (read from the declarations, so a key added later
is covered without touching this file) and set valid values through ``--set`` and through a
recipe file, end to end through ``convzoo config``.
"""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from convzoo import config as C
from convzoo.cli import main
from convzoo.errors import ConvzooError

# ----------------------------------------------------------------------------- basics


def test_defaults_are_the_documented_cifar_recipe():
    cfg = C.Config()
    assert cfg.model.name == "resnet20"
    assert (cfg.train.batch_size, cfg.optim.lr, cfg.optim.momentum) == (128, 0.1, 0.9)
    assert cfg.optim.weight_decay == 5e-4
    assert cfg.schedule.name == "onecycle"
    assert (cfg.augment.pad, cfg.augment.flip) == (4, True)
    assert cfg.train.channels_last is None and cfg.optim.fused is None  # auto


def test_defaults_are_valid_and_round_trip():
    assert C.from_dict({}) == C.Config()
    assert C.from_dict(C.to_dict(C.Config())) == C.Config()


def test_override_parses_yaml_values_and_coerces_types():
    cfg = C.apply_overrides(C.Config(), C.parse_override("optim.lr=1"))
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    cfg = C.apply_overrides(cfg, C.parse_override("schedule.milestones=[90, 135]"))
    assert cfg.schedule.milestones == [90.0, 135.0]
    cfg = C.apply_overrides(cfg, C.parse_override("model.kwargs.shortcut=projection"))
    assert cfg.model.kwargs == {"shortcut": "projection"}


def test_unknown_key_names_the_key_and_the_closest():
    with pytest.raises(ConvzooError, match="optim.learning_rate"):
        C.apply_overrides(C.Config(), C.parse_override("optim.learning_rate=0.1"))
    with pytest.raises(ConvzooError, match="did you mean 'optim.lr'"):
        C.apply_overrides(C.Config(), C.parse_override("optim.lrr=0.1"))
    with pytest.raises(ConvzooError, match="'nonsense'"):
        C.from_dict({"nonsense": 1})


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConvzooError, match=r"train\.epochs.*'ten'"):
        C.apply_overrides(C.Config(), C.parse_override("train.epochs=ten"))
    with pytest.raises(ConvzooError, match=r"augment\.flip"):
        C.apply_overrides(C.Config(), C.parse_override("augment.flip=3"))


@pytest.mark.parametrize("text", ["optim.lr", "=1", "optim..lr=1", ".lr=1", "optim.=1",
                                  "optim lr=1", "optim.lr"])
def test_bad_set_forms_are_one_line_errors(text):
    with pytest.raises(ConvzooError, match="SECTION.KEY=VALUE") as e:
        C.parse_override(text)
    assert "\n" not in str(e.value)


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
    cfg = C.apply_overrides(C.Config(), {"optim": {"lr": 0.05, "fused": True},
                                         "train": {"channels_last": None},
                                         "stages": [{"epochs": 5}]})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(C.to_dict(cfg), sort_keys=False))
    assert C.load_config(tmp_path / "config.yaml") == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["channels_last"] is None


# ----------------------------------------------------------------------------- spellings


# (text as typed, key, value the config holds): the spellings users typed and their family.
SPELLINGS = [
    ("5e-4", "optim.weight_decay", 5e-4),
    ("1e-3", "optim.lr", 1e-3),
    ("1E-3", "optim.lr", 1e-3),
    (".1", "optim.lr", 0.1),
    ("+.5", "optim.momentum", 0.5),
    ("1_000", "optim.lr", 1000.0),
    ("1_000", "train.batch_size", 1000),
    ("1e3", "train.epochs", 1000),
    ("2.0", "train.epochs", 2),
    ("010", "train.seed", 10),  # decimal, not YAML 1.1's octal
    ("0x10", "train.seed", 16),
    ("3", "optim.lr", 3.0),
    ("'5e-4'", "optim.weight_decay", 5e-4),  # quoted in YAML: still a number where one belongs
]


@pytest.mark.parametrize("text, key, value", SPELLINGS)
def test_numbers_in_every_spelling_through_set_and_yaml(text, key, value, tmp_path):
    section, name = key.split(".")
    cfg = C.apply_overrides(C.Config(), C.parse_override(f"{key}={text}"))
    got = getattr(getattr(cfg, section), name)
    assert got == value and type(got) is type(value)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"{section}:\n  {name}: {text}\n")
    got = getattr(getattr(C.from_dict(C.load_recipe(str(recipe))), section), name)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text", ["-1e-2", "-.5", "-1_000"])
def test_a_negative_number_is_read_as_a_number_and_refused_by_its_range(text):
    with pytest.raises(ConvzooError, match=r"optim\.lr=-[\d.e+-]+ is outside its valid range"):
        C.apply_overrides(C.Config(), C.parse_override(f"optim.lr={text}"))


@pytest.mark.parametrize("text", ["nan", ".nan", "inf", ".inf", "-.inf", "1e999"])
def test_non_finite_numbers_are_out_of_range(text):
    with pytest.raises(ConvzooError, match=r"optim\.weight_decay=.* is outside its valid range"):
        C.apply_overrides(C.Config(), C.parse_override(f"optim.weight_decay={text}"))


@pytest.mark.parametrize("text", ["2.5", "1e-3", "ten", "[1]", "true"])
def test_an_integer_key_refuses_what_is_not_a_whole_number(text):
    with pytest.raises(ConvzooError, match=r"train\.epochs: expected an integer"):
        C.apply_overrides(C.Config(), C.parse_override(f"train.epochs={text}"))


@pytest.mark.parametrize("key", ["train.channels_last", "optim.fused"])
@pytest.mark.parametrize("text, value", [("true", True), ("false", False), ("yes", True),
                                         ("off", False), ("auto", None), ("AUTO", None),
                                         ("null", None), ("~", None), ("'true'", True)])
def test_tristates_take_true_false_and_auto(key, text, value, tmp_path):
    section, name = key.split(".")
    cfg = C.apply_overrides(C.Config(), C.parse_override(f"{key}={text}"))
    assert getattr(getattr(cfg, section), name) is value
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"{section}:\n  {name}: {text}\n")
    assert getattr(getattr(C.from_dict(C.load_recipe(str(recipe))), section), name) is value


@pytest.mark.parametrize("text", ["maybe", "2", "[true]", "''"])
def test_a_tristate_names_its_three_values(text):
    with pytest.raises(ConvzooError, match=r"train\.channels_last: expected true, false or auto"):
        C.apply_overrides(C.Config(), C.parse_override(f"train.channels_last={text}"))


def test_configs_written_before_tristates_still_load():
    """config.yaml / checkpoints of earlier versions spelled tri-states as strings."""
    for old, new in [("auto", None), ("true", True), ("false", False)]:
        cfg = C.from_dict({"train": {"channels_last": old}, "optim": {"fused": old}})
        assert cfg.train.channels_last is new and cfg.optim.fused is new


def test_text_keys_keep_what_was_typed(tmp_path):
    for text in ["001", "1e3", "yes", "null", "a: b", "[x", "run #3"]:
        cfg = C.apply_overrides(C.Config(), C.parse_override(f"data.source={text}"))
        assert cfg.data.source == text
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  name: 001\ndata:\n  source: on\n  root: 1e3\n")
    cfg = C.from_dict(C.load_recipe(str(recipe)))
    assert (cfg.train.name, cfg.data.source, cfg.data.root) == ("001", "on", "1e3")


def test_values_read_from_yaml_are_plain_python(tmp_path):
    """No YAML text object survives into a Config: to_dict stays safe for yaml.safe_dump."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {kwargs: {a: 1e-3, on: yes, n: [1, 2e1]}}\n"
                      "stages: [{epochs: 9, set: {optim.lr: 1e-2, model.kwargs.b: x}}]\n")

    def plain(o: Any) -> bool:
        if isinstance(o, dict):
            return all(type(k) is str and plain(v) for k, v in o.items())
        if isinstance(o, list):
            return all(plain(v) for v in o)
        return type(o) in (str, int, float, bool, type(None))

    for cfg in [C.from_dict(C.load_recipe(str(recipe)))] + [
            C.from_dict(C.load_recipe(n)) for n in C.list_recipes()]:
        assert plain(C.to_dict(cfg))
        yaml.safe_dump(C.to_dict(cfg))
    cfg = C.from_dict(C.load_recipe(str(recipe)))
    assert cfg.model.kwargs == {"a": 1e-3, "on": True, "n": [1, 20.0]}
    assert cfg.stages[0].set == {"optim.lr": 0.01, "model.kwargs.b": "x"}


def test_open_mappings_read_numbers_as_numbers():
    cfg = C.apply_overrides(C.Config(), C.parse_override("model.kwargs={drop: 5e-2, act: relu}"))
    assert cfg.model.kwargs == {"drop": 0.05, "act": "relu"}


def test_choices_are_listed_and_case_insensitive():
    cfg = C.apply_overrides(C.Config(), C.parse_override("train.precision=BF16"))
    assert cfg.train.precision == "bf16"
    with pytest.raises(ConvzooError, match="train.precision: 'fp8' is not one of: auto, fp32, "
                                           "bf16, fp16"):
        C.apply_overrides(C.Config(), C.parse_override("train.precision=fp8"))


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_devices(device):
    assert C.apply_overrides(C.Config(), C.parse_override(f"train.device={device}")
                             ).train.device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "cuda0", "CPU ", "tpu", ""])
def test_bad_devices_name_the_choices(device):
    with pytest.raises(ConvzooError, match="auto, cpu, cuda, cuda:N or mps"):
        C.apply_overrides(C.Config(), C.parse_override(f"train.device={device}"))


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x", "a\\b"])
def test_run_names_are_one_folder(name):
    with pytest.raises(ConvzooError, match="train.name"):
        C.apply_overrides(C.Config(), C.parse_override(f"train.name={name}"))


# ----------------------------------------------------------------------------- rules between keys


@pytest.mark.parametrize("overrides, message", [
    ({"schedule": {"warmup_epochs": 1}}, "schedule.warmup_epochs=1.0 does not apply"),
    ({"optim": {"nesterov": True, "momentum": 0}}, "optim.nesterov=true needs optim.momentum"),
    ({"schedule": {"min_lr": 0.5}}, "schedule.min_lr=0.5 is above optim.lr=0.1"),
    ({"train": {"accum_steps": 3}}, r"train.accum_steps=3: train.batch_size=128 \(images per "),
    ({"data": {"image_size": 16}, "augment": {"crop": 20}}, "augment.crop=20 is larger"),
    ({"data": {"image_size": 16}, "augment": {"cutout": 17}}, "augment.cutout=17 is larger"),
    ({"augment": {"rrc_scale": [0.9, 0.1]}}, "augment.rrc_scale=.*increasing"),
    ({"augment": {"scale": [1.1, 0.9]}}, "augment.scale=.*increasing"),
    ({"augment": {"policy": "randaugment", "policy_bins": 11, "randaugment_magnitude": 11}},
     r"augment.randaugment_magnitude=11 must be below augment.policy_bins=11 \(bins 0 to 10\)"),
    ({"augment": {"color_jitter": [0.4, 0.4, 0.4, 0.6]}}, r"augment.color_jitter=.*\[0, 0.5\]"),
    ({"augment": {"color_jitter": [0.4, 0.4, 0.4]}}, r"augment.color_jitter=.*list of 4 values"),
    ({"augment": {"color_jitter": [-0.1, 0, 0, 0]}}, r"augment.color_jitter=.*\[0, inf\)"),
    ({"augment": {"erase_area": [0.3, 0.1]}}, "augment.erase_area=.*increasing"),
    ({"augment": {"erase_area": [0, 0.1]}}, r"augment.erase_area=.*\(0, 1\]"),
    ({"augment": {"erase_count": [0, 1]}}, r"augment.erase_count=.*\[1, 100\]"),
    ({"augment": {"erase_prob": 1.5}}, r"augment.erase_prob=1.5 is outside .*\[0, 1\]"),
    ({"augment": {"mixup_alpha": -1}}, r"augment.mixup_alpha=-1.0 is outside"),
    ({"augment": {"mix_prob": 2}}, r"augment.mix_prob=2.0 is outside"),
    ({"augment": {"rrc_ratio": [2, 1]}}, "augment.rrc_ratio=.*increasing"),
    ({"augment": {"policy": "randaugmnet"}}, r"augment.policy: 'randaugmnet' is not one of"),
    ({"augment": {"policy_fill": [1, 2, 3, 4]}}, r"augment.policy_fill=.*1 to 3 values"),
    ({"augment": {"policy_fill": [256]}}, r"augment.policy_fill=.*\[0, 255\]"),
    ({"schedule": {"milestones": [90, 90]}}, "schedule.milestones=.*strictly increasing"),
    ({"train": {"loggers": ["csv", "mlflow", "csv"]}}, r"train.loggers=.*csv is listed twice"),
    ({"train": {"loggers": ["comet"]}}, r"train.loggers\[0\]: 'comet' is not one of: "
                                        "tensorboard, csv, mlflow, wandb"),
    ({"train": {"best_metric": "val_acc"}}, r"train.best_metric: 'val_acc' is not one of"),
    ({"wandb": {"mode": "cloud"}}, r"wandb.mode: 'cloud' is not one of: auto, offline, online"),
    ({"stages": [{"epochs": 3}]}, r"stages\[0\].epochs=3 must exceed the epoch it starts from \(3\)"),
    ({"stages": [{"epochs": 5}, {"epochs": 5}]}, r"stages\[1\].epochs=5 must exceed"),
    ({"stages": [{"set": {"optim.lr": 0.01}}]}, r"stages\[0\].epochs=0 must exceed"),
    ({"stages": [{"epochs": 5, "set": {"optim.lr": "-1"}}]},
     r"stages\[0\].set: optim.lr=-1.0 is outside"),
    ({"stages": [{"epochs": 5, "set": {"optim.lrr": 1}}]}, r"stages\[0\].set: unknown .*lrr"),
    ({"stages": [{"epochs": 5, "set": {"train.epochs": 9}}]}, r"stages\[0\].set: .*train.epochs"),
    ({"stages": [{"epochs": 5, "set": {"stages": []}}]}, r"stages\[0\].set: .*'stages'"),
    ({"stages": [{"epochs": 5, "set": {"schedule.warmup_epochs": 2}}]},
     r"stages\[0\].set: schedule.warmup_epochs"),
])
def test_cross_key_rules(overrides, message):
    with pytest.raises(ConvzooError, match=message):
        C.apply_overrides(C.Config(), overrides)


def test_the_rules_allow_what_they_should():
    C.from_dict({"schedule": {"name": "cosine", "warmup_epochs": 1}})
    C.from_dict({"optim": {"name": "adam", "nesterov": True, "momentum": 0}})
    C.from_dict({"data": {"image_size": 32}, "augment": {"crop": 32, "cutout": 32}})
    C.from_dict({"augment": {"rrc_scale": [0.5, 0.5]}})
    C.from_dict({"augment": {"randaugment_magnitude": 30, "policy_bins": 11}})  # no randaugment
    C.from_dict({"augment": {"policy": "randaugment", "policy_bins": 11,
                             "randaugment_magnitude": 10, "color_jitter": [0, 0, 0, 0.5]}})


def test_stages_are_checked_up_front_and_typed():
    cfg = C.from_dict({"stages": [{"epochs": 5, "set": {"optim.lr": "1e-2"}},
                                  {"epochs": 9, "set": {"optim.fused": "auto"}}]})
    assert [s.set for s in cfg.stages] == [{"optim.lr": 0.01}, {"optim.fused": None}]
    plan = C.stage_configs(cfg)
    assert [(p.train.epochs, p.optim.lr, len(p.stages)) for p in plan] == [
        (3, 0.1, 2), (5, 0.01, 1), (9, 0.01, 0)]
    for p in plan:  # each stage's config, as a checkpoint records it, is itself valid
        assert C.from_dict(C.to_dict(p)) == p


def test_many_stages_check_in_linear_time():
    cfg = C.from_dict({"stages": [{"epochs": 4 + i} for i in range(60)]})
    assert len(C.stage_configs(cfg)) == 61


def test_replace_validates_config_sections():
    cfg = C.Config()
    assert C.replace(cfg.train, device="cuda:1").device == "cuda:1"
    with pytest.raises(ConvzooError, match="train.device"):
        C.replace(cfg.train, device="gpu")
    with pytest.raises(ConvzooError, match="augment.tta"):
        C.replace(cfg.augment, tta="sideways")
    with pytest.raises(ConvzooError, match="data.limit"):
        C.replace(cfg, data=C.DataConfig(limit=-1))


# ----------------------------------------------------------------------------- YAML files


@pytest.mark.parametrize("text, message", [
    ("optim: {lr: [0.1\n", r"r\.yaml:2:1: invalid YAML"),
    ("optim:\n  lr: 0.1\n  lr: 0.2\n", r"r\.yaml:3:3: invalid YAML \(key 'lr' appears twice\)"),
    ("a: &x {lr: 1}\noptim: *x\n", r"invalid YAML \(aliases"),
    ("- 1\n- 2\n", "must be a mapping of keys at the top level, got list"),
    ("just text\n", "must be a mapping of keys at the top level, got str"),
    ("optim:\n\tlr: 1\n", "invalid YAML"),
    ("[" * 5000, "invalid YAML"),
])
def test_bad_recipe_files_are_one_line(text, message, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConvzooError, match=message) as e:
        C.from_dict(C.load_recipe(str(path)))
    assert "\n" not in str(e.value)


def test_unreadable_recipe_files(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConvzooError, match="not UTF-8"):
        C.load_recipe(str(tmp_path / "bin.yaml"))
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ConvzooError, match="cannot read"):
        C.load_recipe(str(tmp_path / "dir.yaml"))
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    assert C.from_dict(C.load_recipe(str(tmp_path / "empty.yaml"))) == C.Config()


# ----------------------------------------------------------------------------- declarations


def _scalar(tp: Any) -> Any:
    return C.unwrap(tp)[0]


def _in_rule(tp: Any) -> C.In | None:
    return next((r for r in C.unwrap(tp)[1] if isinstance(r, C.In)), None)


def _numeric(tp: Any) -> bool:
    base = _scalar(tp)
    members = typing.get_args(base) if typing.get_origin(base) is not list else (base,)
    members = members or (base,)
    for m in members:
        if m in (int, float) or (typing.get_origin(m) is list and
                                 typing.get_args(m)[0] in (int, float)):
            return True
    return False


KEYS = C.declared_keys()
NUMERIC = sorted(k for k, tp in KEYS.items() if _numeric(tp))


def test_every_numeric_key_declares_its_range():
    missing = [k for k in NUMERIC if _in_rule(KEYS[k]) is None]
    assert not missing, f"declare a range (In) beside these keys: {missing}"
    assert len(NUMERIC) >= 53  # the tree of 2026-11-30


def test_every_key_has_a_comment():
    from convzoo.configdoc import key_docs

    docs = key_docs()
    assert not [k for k in KEYS if not docs.get(k, None) or not docs[k].text]


def test_every_choice_key_is_a_literal():
    names = {"data.loader", "data.eval_split", "preprocess.kind", "augment.pad_mode",
             "augment.flip_mode", "augment.tta", "optim.name", "schedule.name", "schedule.anneal",
             "schedule.monitor", "train.precision", "data.channels", "augment.policy",
             "augment.policy_interpolation", "augment.erase_mode", "augment.mix_mode"}
    assert all(typing.get_origin(_scalar(KEYS[k])) is Literal for k in names)


def test_choices_match_what_the_code_implements():
    from convzoo.data.transforms import augment, mixing, policies, preprocess
    from convzoo.training import optim, schedule

    assert set(C.choices("preprocess.kind")) == set(preprocess.KINDS)
    assert set(C.choices("augment.tta")) == set(augment.TTA_MODES)
    assert set(C.choices("augment.pad_mode")) == set(augment.PAD_MODES)
    assert set(C.choices("augment.flip_mode")) == set(augment.FLIP_MODES)
    assert set(C.choices("augment.policy")) == {"none", "randaugment", "trivialaugment"} | {
        f"autoaugment-{p}" for p in policies.AUTOAUGMENT_POLICIES}
    assert set(C.choices("augment.policy_interpolation")) == set(policies.INTERPOLATIONS)
    assert set(C.choices("augment.erase_mode")) == set(policies.ERASE_MODES)
    assert set(C.choices("augment.mix_mode")) == set(mixing.MIX_MODES)
    for policy in C.choices("augment.policy"):  # every choice builds
        built = augment.build_policy(C.AugmentConfig(policy=policy))
        assert (built is None) == (policy == "none"), policy
    assert set(C.choices("optim.name")) == set(optim.OPTIMIZERS)
    assert set(C.choices("schedule.name")) == set(schedule.SCHEDULES)


@pytest.mark.parametrize("interval, inside, outside", [
    ("[0, 1)", [0, 0.5, 0.999], [-1e-9, 1, math.nan, math.inf]),
    ("(0, inf)", [1e-300, 1e300], [0, -1, math.inf, math.nan]),
    ("[1, 100]", [1, 100], [0, 101]),
    ("(-inf, 0]", [-1e300, 0], [1e-9, -math.inf]),
])
def test_interval_notation(interval, inside, outside):
    rule = C.In(interval)
    assert all(rule.contains(x) for x in inside)
    assert not any(rule.contains(x) for x in outside)
    assert rule.contains(10**400) is ("inf)" in interval)  # huge ints do not overflow


# ----------------------------------------------------------------------------- the walk


def _number_text(value: float, integer: bool) -> list[str]:
    """Spellings of one valid number."""
    if integer:
        n = int(value)
        out = [str(n), f"{n:_}"]
        if n >= 10 and n % 10 == 0:
            out.append(f"{n / 10 ** (len(str(n)) - 1):g}e{len(str(n)) - 1}")
        return out
    out = [repr(float(value)), f"{value:e}"]
    if 0 < value < 1:
        out.append(repr(float(value))[1:])  # .5
    return out


def _valid_numbers(rule: C.In, integer: bool) -> list[float]:
    lo = rule.lo if rule.lo_closed else (rule.lo + 1 if integer else rule.lo + 5e-4)
    if not math.isfinite(lo):
        lo = -3.0
    values = [lo]
    if math.isfinite(rule.hi):
        hi = rule.hi if rule.hi_closed else (rule.hi - 1 if integer else rule.hi - 5e-4)
        values += [hi, (lo + hi) / 2 if not integer else (int(lo) + int(hi)) // 2]
    else:
        values += [1000 if integer else lo + 5e-4, lo + 3]
    return sorted({float(v) for v in values if rule.contains(int(v) if integer else v)})


# Keys whose valid values need another key set (rules between keys).
CONTEXT = {
    "schedule.warmup_epochs": {"schedule.name": "cosine"},
    "schedule.min_lr": {"optim.lr": "1e4"},
    "optim.momentum": {"optim.nesterov": "false"},
    "optim.nesterov": {"optim.momentum": "0.9"},
    "train.accum_steps": {"train.batch_size": "4000"},  # the batch divides into micro-batches
    "train.compile_mode": {"train.compile": "true"},  # a mode applies only when compiling
}
# Lists whose elements have different ranges (a rule between them): their valid texts.
LIST_VALUES = {
    "augment.color_jitter": [("[4e-1, 0.4, 0, 5e-1]", [0.4, 0.4, 0.0, 0.5])],  # hue <= 0.5
    "train.loggers": [("[tensorboard, csv]", ["tensorboard", "csv"]), ("[]", []),
                      ("[MLflow, wandb, csv, tensorboard]", ["mlflow", "wandb", "csv",
                                                             "tensorboard"])],
}


def valid_texts(key: str, tp: Any) -> list[tuple[str, Any]]:
    """(YAML text, the value the config must then hold) for valid values of a key's type."""
    base, rules = C.unwrap(tp)
    in_rule = _in_rule(tp)
    length = next((r for r in rules if isinstance(r, C.Len)), None)
    origin, args = typing.get_origin(base), typing.get_args(base)
    out: list[tuple[str, Any]] = []
    if origin in (typing.Union, type(int | None)) and type(None) in args:
        out += [("null", None)]
        if bool in args:
            out += [("auto", None), ("Auto", None)]
        (base,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(base), typing.get_args(base)
    if origin is Literal:
        out += [(str(c), c) for c in args]
        out += [(c.upper(), c) for c in args if isinstance(c, str)]
    elif base is bool:
        out += [("true", True), ("false", False), ("on", True), ("No", False)]
    elif base in (int, float):
        for v in _valid_numbers(in_rule, base is int):
            out += [(t, base(v)) for t in _number_text(v, base is int)]
    elif origin is list and key == "stages":
        out += [("[]", []), ("[{epochs: 5, set: {optim.lr: 1e-2}}, {epochs: 7}]",
                             [{"epochs": 5, "set": {"optim.lr": 0.01}, "from_epoch": 0, "started": ""},
                              {"epochs": 7, "set": {}, "from_epoch": 0, "started": ""}])]
    elif key in LIST_VALUES:
        out += LIST_VALUES[key]
    elif origin is list:
        n = length.lo if length else 3
        lo, *rest = _valid_numbers(in_rule, False)
        hi = rest[-1] if rest else lo
        values = [lo + (hi - lo) * i / max(n - 1, 1) for i in range(n)]
        texts = [f"{v:e}" for v in values]  # 5.000000e-04: YAML 1.1 reads it as text
        out += [("[" + ", ".join(texts) + "]", [float(t) for t in texts])]
        if not length:
            out += [("[]", [])]
    elif origin is dict:
        out += [("{depth: 5e-1, act: relu, n: 1_0}", {"depth": 0.5, "act": "relu", "n": 10}),
                ("{}", {})]
    elif base is str:
        match = next((r for r in rules if isinstance(r, C.Match)), None)
        if key == "train.device":
            out += [(d, d) for d in ["auto", "cpu", "cuda", "cuda:3", "mps"]]
        else:
            out += [("001", "001"), ("yes", "yes"), ("x-1_2.b", "x-1_2.b")]
            if match is None:
                out += [("'quoted: text'", "quoted: text"), ("", "")]
    assert out, f"no valid values generated for {key} ({tp})"
    return out


def _printed(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return C.to_dict(C.from_dict(C.load_yaml(out, "convzoo config output")))


def _get(tree: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


def _recipe_text(assignments: dict[str, str]) -> str:
    """A recipe file setting dotted keys to YAML texts, written as nested blocks."""
    tree: dict[str, Any] = {}
    for key, text in assignments.items():
        tree = C.merge(tree, C.dotted_to_nested(key, text))

    def block(node: dict[str, Any], indent: str) -> list[str]:
        lines = []
        for k, v in node.items():
            if isinstance(v, dict):
                lines += [f"{indent}{k}:", *block(v, indent + "  ")]
            else:
                lines.append(f"{indent}{k}: {v}")
        return lines

    return "\n".join(block(tree, "")) + "\n"


def _set_args(key: str, text: str) -> list[str]:
    context = CONTEXT.get(key, {})
    return [a for k, t in {**context, key: text}.items() for a in ("--set", f"{k}={t}")]


@pytest.mark.parametrize("key", sorted(KEYS))
def test_every_key_takes_a_valid_value_through_set(key, capsys):
    """The inner loop's share of the walk below: one valid value of each key."""
    text, value = valid_texts(key, KEYS[key])[0]
    got = _get(_printed(["config", *_set_args(key, text)], capsys), key)
    assert got == value and type(got) is type(value), (key, text, got)


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(KEYS))
def test_walk_every_key_through_set_and_a_recipe_file(key, tmp_path, capsys):
    for text, value in valid_texts(key, KEYS[key]):
        context = CONTEXT.get(key, {})
        got = _get(_printed(["config", *_set_args(key, text)], capsys), key)
        assert got == value and type(got) is type(value), (key, text, got)
        if text == "":
            continue  # an empty value in a YAML file is null, not ""
        recipe = tmp_path / "r.yaml"
        recipe.write_text(_recipe_text({**context, key: text}))
        got = _get(_printed(["config", str(recipe)], capsys), key)
        assert got == value and type(got) is type(value), (key, text, got)


# ----------------------------------------------------------------------------- convzoo config


@pytest.mark.parametrize("recipe, flags, overrides", [
    (None, [], {}),
    ("inception_bn_small-cifar100", ["--lr", "5e-2"], {"optim": {"lr": 0.05}}),
    ("cifar10-fast94", ["--set", "train.channels_last=false"], {"train": {"channels_last": False}}),
])
def test_config_prints_every_key_with_its_comment_and_round_trips(recipe, flags, overrides,
                                                                   tmp_path, capsys):
    from convzoo.configdoc import key_docs

    capsys.readouterr()
    assert main(["config", *([recipe] if recipe else []), *flags]) == 0
    out = capsys.readouterr().out
    printed = tmp_path / "printed.yaml"
    printed.write_text(out)
    expected = C.from_dict(C.merge(C.load_recipe(recipe) if recipe else {}, overrides))
    assert C.from_dict(C.load_recipe(str(printed))) == expected  # a recipe as it is
    docs = key_docs()
    assert len(docs) >= len(KEYS)
    for key, doc in docs.items():
        assert doc.beside in out and all(f"# {line}" in out for line in doc.above), key


def test_config_shows_ranges_and_auto(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.1" in out and "valid: (0, inf)" in out
    assert "channels_last: auto" in out and "fused: auto" in out
    assert "rrc_scale: [0.08, 1.0]" in out and "each in (0, 1]" in out


def test_config_of_a_run_directory(run_dir, capsys):
    assert main(["config", str(run_dir)]) == 0
    out = capsys.readouterr().out
    cfg = C.from_dict(C.load_yaml(out, "out"))
    assert cfg == C.load_config(run_dir / "config.yaml")
    assert "limit: 200" in out and out.startswith(f"# convzoo config: run {run_dir}")


def test_train_help_points_to_the_keys(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "convzoo config" in out and "--set SECTION.KEY=VALUE" in out
    for section in ("data:", "preprocess:", "augment:", "model:", "optim:", "schedule:",
                    "train:"):
        assert f"  {section} " in out
    assert "threads" in out and "limit" in out


def test_version(capsys):
    from convzoo import __version__

    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"convzoo {__version__} (torch ")


def test_readme_documents_the_everyday_keys():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for needle in ("data.limit", "train.threads", "convzoo config", "--version",
                   "--index-url https://download.pytorch.org/whl/cpu"):
        assert needle in readme, needle


# ----------------------------------------------------------------------------- recipe bases


def test_the_neon_recipes_are_their_base_plus_the_depth():
    """Seed B's four recipes share one base: their resolved configs differ in the network's
    depth, the description and the seed's figure only."""
    base = C.to_dict(C.from_dict(C.load_recipe("_resnet-cifar10-neon")))
    for depth in (20, 32, 56, 110):
        cfg = C.to_dict(C.from_dict(C.load_recipe(f"resnet{depth}-cifar10-neon")))
        differ = {k for k in C.dotted(cfg) if C.dotted(cfg)[k] != C.dotted(base).get(k)}
        assert differ == {"name", "description", "reported", "model.name"} - (
            {"model.name"} if depth == 20 else set()), depth
        assert cfg["model"]["name"] == f"resnet{depth}" and str(depth) in cfg["reported"]
    assert "_resnet-cifar10-neon" not in C.list_recipes()


def test_a_base_is_a_name_or_a_file_beside_the_recipe_and_a_list_merges_in_order(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.yaml").write_text("name: a\noptim: {lr: 0.5, momentum: 0.8}\n")
    (tmp_path / "sub" / "b.yaml").write_text("optim: {lr: 0.25}\ntrain: {epochs: 7}\n")
    (tmp_path / "sub" / "mine.yaml").write_text(
        "base: [quickstart, a.yaml, b.yaml]\ntrain: {batch_size: 32}\n")
    cfg = C.from_dict(C.load_recipe(str(tmp_path / "sub" / "mine.yaml")))
    quick = C.from_dict(C.load_recipe("quickstart"))
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.train.epochs, cfg.train.batch_size) == (
        0.25, 0.8, 7, 32)
    assert cfg.model == quick.model and cfg.data == quick.data
    assert not cfg.name  # a base's name is not inherited


@pytest.mark.parametrize("text, message", [
    ("base: loop.yaml\n", "recipe base cycle"),
    ("base: [quickstart, 3]\n", "base: expected a recipe name or file"),
    ("base: nosuchrecipe\n", "unknown recipe 'nosuchrecipe'"),
    ("base: missing.yaml\n", "recipe file not found"),
])
def test_bad_bases_are_one_line(tmp_path, text, message):
    (tmp_path / "loop.yaml").write_text(text)
    with pytest.raises(ConvzooError, match=message):
        C.load_recipe(str(tmp_path / "loop.yaml"))


def test_recipes_merge_left_to_right_and_config_says_where_each_value_came_from(
        tmp_path, capsys):
    from convzoo.cli import main

    (tmp_path / "tweak.yaml").write_text("optim: {lr: 0.02}\ntrain: {epochs: 4}\n")
    argv = ["--recipe", "resnet20-cifar10-neon", "--config", str(tmp_path / "tweak.yaml"),
            "--data", "digits", "--set", "train.epochs=5", "--dry-run", "--set",
            "data.limit=256", "--set", "data.image_size=8", "--out", str(tmp_path / "runs")]
    assert main(["train", *argv]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["optim"]["lr"] == 0.02 and resolved["train"]["epochs"] == 5
    assert resolved["model"]["kwargs"] == {"shortcut": "projection", "fc_bn": True}
    assert resolved["name"] == "resnet20-cifar10-neon"
    assert main(["config", "resnet20-cifar10-neon", str(tmp_path / "tweak.yaml"), "--set",
                 "train.epochs=5", "--where"]) == 0
    lines = capsys.readouterr().out.splitlines()

    def line(key: str) -> str:
        return next(x for x in lines if x.strip().startswith(key + ":"))

    assert "[from recipe _resnet-cifar10-neon]" in line("milestones")
    assert "[from recipe resnet20-cifar10-neon]" in line("reported")
    assert f"[from recipe {tmp_path / 'tweak.yaml'}]" in line("lr")
    assert "[from command line]" in line("epochs")
    assert "[from" not in line("nesterov")  # the default


def test_differences_compare_what_is_trained_and_each_stages_plan_not_its_start():
    """The one comparison of two configs (reproducing command, a run beside its recipe, the
    ledger, --resume auto): every differing key in the schema's order; a stage by the epochs it
    trains to and its overrides, not when it started or the epoch a resume began it from."""
    recipe = C.from_dict(C.load_recipe("inception_bn_small-cifar100"))
    stage = recipe.stages[0]
    ran = C.replace(recipe, started="2026-12-07T10:00:00",
                    stages=[C.replace(stage, from_epoch=38, started="2026-12-07T11:00:00")],
                    optim=C.replace(recipe.optim, lr=0.5),
                    train=C.replace(recipe.train, threads=2))
    assert list(C.differences(ran, recipe)) == ["started", "optim.lr", "train.threads"]
    assert C.differences(ran, recipe, C.NOT_TRAINED) == {"optim.lr": (0.5, recipe.optim.lr)}
    longer = C.replace(ran, stages=[C.replace(stage, epochs=stage.epochs + 6)])
    differ = C.differences(longer, recipe, C.NOT_TRAINED)
    assert differ["stages"] == ([{"epochs": stage.epochs + 6, "set": stage.set}],
                                [{"epochs": stage.epochs, "set": stage.set}])
    assert "stages" not in C.differences(longer, recipe, stages=0)  # only the first n stages
    # a dict value's keys that one side lacks (a fine-tuning run's model.init_took)
    tuned = C.replace(recipe, model=C.replace(recipe.model, init_took={"data.image_size": 32}))
    assert C.differences(tuned, recipe) == {"model.init_took.data.image_size": (32, None)}
    assert C.differences(recipe, tuned) == {"model.init_took.data.image_size": (None, 32)}
