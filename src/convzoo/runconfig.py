"""The config a run trains with, from what the user gave: one set of rules for the command
line (``convzoo train``) and the Python API (``convzoo.train``), which both call these.

* A new run (:func:`train_config`): defaults <- recipes (or a config dict / Config) <- the
  user's overrides (the CLI's shortcuts and ``--set``, the API's keywords:
  :func:`overrides_from_keywords`), validated by ``config.from_dict``.
* A resume (:func:`resume_run_config`, :func:`resume_config`): the run's config.yaml; keys
  that only say how this process runs (:data:`config.RUNTIME_KEYS`) apply as given, any other
  override starts a new stage at the run's last checkpoint, recorded in ``stages`` so that
  config.yaml keeps the whole history (``config.stage_configs`` expands the plan).
* ``--resume auto`` (:func:`auto_run`): the run in ``train.out/NAME`` if it is this command's
  run (``config.differences`` finds nothing but the runtime keys and the start records), else
  a new run in exactly that directory.

It reads a run's config.yaml and its last checkpoint (``saved.load_checkpoint``: the epoch a
new stage starts from) and nothing of training, which calls nothing here: ``fit`` takes the
finished Config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convzoo import config as C
from convzoo.errors import ConvzooError
from convzoo.models.registry import import_timm
from convzoo.saved import checkpoint_geometry, load_checkpoint, read_checkpoint

# What --resume auto ignores when it compares the command with the run it found: the run's
# records (config.RECORDS: the recipe's words, when it started, where its directory is) and how
# the process runs; the stages' start records are never compared.
AUTO_IGNORED = C.RECORDS | C.RUNTIME_KEYS


def overrides_from_keywords(keywords: dict[str, Any]) -> dict[str, Any]:
    """``train``'s keywords as nested overrides: the CLI's shortcuts (``epochs=2``,
    ``lr=0.05``, ``data="digits"``, ``model="resnet20"`` ...), dotted keys
    (``**{"optim.weight_decay": 0}``) and sections (``optim={"lr": 0.05, "momentum": 0}``)."""
    shortcuts = dict(C.SHORTCUTS)
    sections = set(C.hints(C.Config))
    out: dict[str, Any] = {}
    for key, value in keywords.items():
        if key in sections and isinstance(value, dict):
            nested = {key: value}
        elif key in shortcuts:
            nested = C.dotted_to_nested(shortcuts[key], value)
        elif "." in key or key in sections:
            nested = C.dotted_to_nested(key, value)
        else:
            raise ConvzooError(f"convzoo.train: unknown keyword {key!r} (shortcuts: "
                               f"{', '.join(shortcuts)}; or a section such as optim={{...}}, "
                               "or a dotted key such as **{'optim.lr': 0.01})")
        out = C.merge(out, nested)
    return out


def train_config(config_or_recipe: str | Path | list[str | Path] | C.Config | dict[str, Any]
                 | None, overrides: dict[str, Any]) -> C.Config:
    """Defaults <- recipes (shipped names or YAML files, merged left to right), a config dict
    or a Config <- nested `overrides`, validated (``config.from_dict``)."""
    if isinstance(config_or_recipe, C.Config):
        base: dict[str, Any] = C.to_dict(config_or_recipe)
    elif isinstance(config_or_recipe, dict):
        base = config_or_recipe
    elif isinstance(config_or_recipe, list):
        base = C.load_recipes([str(r) for r in config_or_recipe])
    elif config_or_recipe:
        base = C.load_recipe(str(config_or_recipe))
    else:
        base = {}
    return C.from_dict(take_init_shape(C.merge(base, overrides)))


# What model.init's source gives the keys a config leaves unset (take_init_shape), in order.
INIT_KEYS = ("model.name", "model.kwargs", "data.image_size", "data.channels", "data.resize",
             "preprocess.kind", "preprocess.mean", "preprocess.std")


def _given(data: dict[str, Any], dotted: str) -> bool:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def init_shape(source: str) -> dict[str, Any]:
    """The shape of what ``model.init`` names, as config keys (:data:`INIT_KEYS`): a convzoo
    run directory (or its checkpoint / model.safetensors): its model name and kwargs, input
    geometry (size, channels, crop or squash) and normalisation (its fitted per-channel mean
    and std, or for other kinds the kind, refitted); ``timm:NAME``: timm's pretrained config
    (no download): the architecture, its input size and mean/std (on the 0-255 scale). {} for
    anything else (others' weight files have no shape to take)."""
    if source.startswith("timm:"):
        timm = import_timm(f"model.init {source!r}")
        name = source.removeprefix("timm:")
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True) \
            if timm.is_model(name) else None
        if cfg is None:
            raise ConvzooError(f"model.init {source}: timm has no pretrained config by that "
                               "name (name a tag, e.g. timm:resnet18.a1_in1k)")
        c, h, _ = cfg.input_size
        return {"model.name": "timm:" + name.split(".")[0], "data.image_size": int(h),
                "data.channels": int(c), "preprocess.kind": "channel",
                "preprocess.mean": [round(255 * float(v), 4) for v in cfg.mean][:c],
                "preprocess.std": [round(255 * float(v), 4) for v in cfg.std][:c]}
    path = Path(source).expanduser()
    if not source or source.startswith("torchvision:") or not (
            path.is_dir() or path.suffix in (".pt", ".safetensors")):
        return {}
    try:
        ckpt = read_checkpoint(path, "last")
    except ConvzooError:
        if path.is_dir():
            raise
        return {}  # not convzoo's file: model.init reads it as foreign weights
    geometry = checkpoint_geometry(ckpt)
    pre = ckpt["preprocess"]
    took: dict[str, Any] = {"model.name": ckpt["model_name"],
                            "model.kwargs": dict(ckpt["model_kwargs"]),
                            "data.image_size": geometry.height, "data.channels": geometry.channels,
                            "data.resize": geometry.resize, "preprocess.kind": pre["kind"]}
    if pre["kind"] == "channel":
        took["preprocess.mean"] = [round(float(v), 4) for v in pre["mean"]]
        took["preprocess.std"] = [round(float(v), 4) for v in pre["std"]]
    return took


def take_init_shape(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (a config as the user gave it: recipes and overrides, before the defaults) with
    the keys it does not set taken from ``model.init``'s source (:func:`init_shape`), recorded
    in ``model.init_took``. A key the user set wins; the model's kwargs and the normalisation's
    statistics come only with the model name and the kind they belong to."""
    source = data.get("model", {}).get("init") if isinstance(data.get("model"), dict) else None
    if not isinstance(source, str) or not source:
        return data
    shape = init_shape(source)
    took: dict[str, Any] = {}
    for key in INIT_KEYS:
        if key not in shape or _given(data, key):
            continue
        owner = {"model.kwargs": "model.name", "preprocess.mean": "preprocess.kind",
                 "preprocess.std": "preprocess.kind"}.get(key)
        if owner is not None and owner not in took and _given(data, owner):
            continue  # the user's own model or kind: the source's kwargs/statistics do not fit
        took[key] = shape[key]
    merged = data
    for key, value in took.items():
        merged = C.merge(merged, C.dotted_to_nested(key, value))
    return C.merge(merged, {"model": {"init_took": took}})


def resume_config(run_dir: Path, overrides: dict[str, Any],
                  done: int, mid_epoch: int = 0) -> C.Config:
    """The run's ``config.yaml`` with a resume's ``overrides`` (nested, as the CLI gives them).

    Keys that only say how this process runs (``config.RUNTIME_KEYS``) apply directly. Any other
    override starts a new stage at the checkpoint's epoch ``done``, recorded in ``stages`` with
    those overrides and its end (``train.epochs``, default: the plan's end), so config.yaml
    keeps the whole history. No overrides: the plan continues (an exact resume). A checkpoint
    taken ``mid_epoch`` steps into epoch ``done + 1`` takes no stage overrides.
    """
    cfg = C.load_config(run_dir / "config.yaml")
    keys = C.declared_keys()  # the command line gives text: each value in its key's type
    flat = {k: C.check_value(k, v) if k in keys else v for k, v in C.dotted(overrides).items()}
    runtime = {k: v for k, v in flat.items() if k in C.RUNTIME_KEYS}
    stage_keys = {k: v for k, v in flat.items() if k not in C.RUNTIME_KEYS}
    for key, value in runtime.items():
        cfg = C.apply_overrides(cfg, C.dotted_to_nested(key, value))
    plan_end = C.stage_configs(cfg)[-1].train.epochs
    epochs = stage_keys.pop("train.epochs", None)
    if not stage_keys and epochs in (None, plan_end):
        return cfg
    if mid_epoch:  # a new stage starts at an epoch's start, with its own batches and lr
        raise ConvzooError(f"--resume {run_dir}: its last.pt was written inside epoch "
                           f"{done + 1} (step {mid_epoch}); resume it without overrides to finish "
                           "that epoch, then start a new stage from its end")
    if done == 0:  # nothing trained yet: no history to keep, start over with the overrides
        return C.apply_overrides(cfg, overrides)
    unstarted = [s.epochs for s in cfg.stages if not s.started]
    if unstarted:
        raise ConvzooError(f"--resume {run_dir}: its planned stages (to epoch {unstarted[-1]}) "
                           "have not all run; resume it without overrides first")
    end = plan_end if epochs is None else epochs
    if end <= done:
        raise ConvzooError(f"--resume {run_dir}: the run is at epoch {done}; a new stage needs "
                           f"--epochs above {done} (got {end})")
    stage = C.StageConfig(epochs=end, set=stage_keys, from_epoch=done)
    cfg = C.replace(cfg, stages=[*cfg.stages, stage])
    C.stage_configs(cfg)  # validates the new stage's overrides
    return cfg


def resume_run_config(run_dir: Path, overrides: dict[str, Any]
                      ) -> tuple[C.Config, dict[str, Any] | None]:
    """The config a resume of `run_dir` trains with (:func:`resume_config`: overrides start a
    new stage; a checkpoint taken inside an epoch takes none) and the run's last checkpoint
    (None when it stopped before its first)."""
    if not (run_dir / "config.yaml").exists():
        raise ConvzooError(f"--resume {run_dir}: not a run directory (no config.yaml)")
    if {"out", "name"} & set(overrides.get("train", {})):
        raise ConvzooError("--resume continues the run in its own directory; drop --out/--name "
                           "(train.out, train.name)")
    ckpt = load_checkpoint(run_dir, "last") if (run_dir / "last.pt").exists() else None
    return resume_config(run_dir, overrides, ckpt["epoch"] if ckpt else 0,
                         ckpt.get("step", 0) if ckpt else 0), ckpt


def auto_run(cfg: C.Config, overrides: dict[str, Any]
             ) -> tuple[C.Config, Path, bool, dict[str, Any] | None]:
    """``--resume auto``: the run directory of `cfg` (the command's config, built by
    :func:`train_config` from its nested `overrides`: ``train.out``/``train.name``) and
    whether it already holds this run. Returns (config, run directory, continuing, last
    checkpoint): a run found continues with its own config.yaml and only the overrides of
    ``config.RUNTIME_KEYS``. A run directory holding a different run is an error naming the
    first key that differs (a scheduler restarting a fixed command must never train something
    else into it)."""
    if not cfg.train.name:
        raise ConvzooError("--resume auto needs --name NAME (train.name): the run directory "
                           "train.out/NAME that a restarted job finds again")
    run_dir = Path(cfg.train.out).expanduser() / cfg.train.name
    if not (run_dir / "config.yaml").is_file():
        return cfg, run_dir, False, None
    saved = C.load_config(run_dir / "config.yaml")
    # the command's stages against as many of the run's: a resume may have added more
    differ = C.differences(saved, cfg, AUTO_IGNORED, len(cfg.stages))
    if differ:
        key = min(differ)
        theirs, mine = differ[key]
        raise ConvzooError(f"--resume auto: {run_dir} holds a run with {key}={theirs!r}, this "
                           f"command has {mine!r}; give another --name, or continue that run "
                           f"with --resume {run_dir} (overrides start a new stage)")
    ckpt = load_checkpoint(run_dir, "last") if (run_dir / "last.pt").exists() else None
    runtime = {k: v for k, v in C.dotted(overrides).items() if k in C.RUNTIME_KEYS}
    nested: dict[str, Any] = {}
    for key, value in runtime.items():
        nested = C.merge(nested, C.dotted_to_nested(key, value))
    cfg = resume_config(run_dir, nested, ckpt["epoch"] if ckpt else 0,
                        ckpt.get("step", 0) if ckpt else 0)
    return cfg, run_dir, True, ckpt
