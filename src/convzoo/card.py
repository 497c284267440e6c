"""The model card: ``README.md`` in a run directory, what a reader of the run (or of the model
repository ``convzoo push`` publishes) needs to know before using the model.

Hugging Face model-card style: YAML front matter (``library_name: convzoo``, tags, the data,
the metrics with their values in ``model-index``), then Markdown: the model (name, parameters,
input geometry, normalisation), the data and classes (source, split sizes, class names), the
recipe and its overrides, the measured figures with their split and which split chose which
weights, the evaluation report's headline numbers and pictures when ``convzoo eval RUN
--report`` wrote one into ``RUN/report``, intended use and limits, and the command that
reproduces the run.

Everything comes from the run's own records: the checkpoint (``last.pt``: model, classes,
geometry, preprocessing, eval split, epoch), ``summary.json`` (the final figures),
``config.yaml`` (recipe and overrides) and ``report/report.json``. Training writes the card at
each stage end, after summary.json and before last.pt (``training.rundir.save_epoch``);
``train --resume`` of a finished run without one writes it, and ``convzoo card RUN`` rewrites
it (after an evaluation report, say). Pictures are linked by paths relative to the card, so
they show on the hub when pushed beside it (:func:`linked_files`).
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

import yaml

from convzoo import config as C
from convzoo.errors import ConvzooError
from convzoo.files import write_text
from convzoo.outputs import is_run_dir
from convzoo.report import read_summary
from convzoo.saved import checkpoint_geometry, read_checkpoint

CARD_FILE = "README.md"
REPORT_DIR = "report"  # where `convzoo eval RUN --report` writes by default
REPORT_PICTURES = (("confusion_matrix.png", "confusion matrix (rows: true class, normalised)"),
                   ("reliability.png", "reliability diagram"),
                   ("confident_mistakes.png", "the most confident mistakes"))
CLASSES_SHOWN = 20  # more classes than this: the first 12 and the last 4 are named

# Keys the reproducing command leaves out: the run's records (config.RECORDS: when and where it
# was written, the recipe's own words) and how this process ran (loggers, threads, checkpoint
# cadence): none of them changes what is trained (config.RUNTIME_KEYS, less the device and
# the loggers' settings, which a command run again keeps).
_NOT_REPRODUCED = C.RECORDS | {"train.threads", "train.log_every", "train.loggers",
                               "train.keep_last", "train.checkpoint_every_steps",
                               "train.checkpoint_every_minutes", "data.workers", "data.root"}


# ----------------------------------------------------------------------------- reading


def _report(run_dir: Path) -> dict[str, Any] | None:
    """``RUN/report/report.json`` when there is a readable one."""
    path = run_dir / REPORT_DIR / "report.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def linked_files(run_dir: Path) -> list[str]:
    """The run's files the card links (relative paths): curves.png, the report's pictures and
    per-class table. ``convzoo push`` publishes them beside the card."""
    names = ["curves.png"] if (run_dir / "curves.png").is_file() else []
    if _report(run_dir) is not None:
        for name, _ in REPORT_PICTURES:
            if (run_dir / REPORT_DIR / name).is_file():
                names.append(f"{REPORT_DIR}/{name}")
        if (run_dir / REPORT_DIR / "per_class.md").is_file():
            names.append(f"{REPORT_DIR}/per_class.md")
    return names


# ----------------------------------------------------------------------------- the command


def _arg(value: Any) -> str:
    """A config value as ``--set`` reads it back (YAML flow for lists, mappings, null)."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix(
        "\n...").strip()


def reproduce_command(config: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """(argv of ``convzoo train`` that trains this config again, the overrides it sets).

    The recipe named by ``config['name']`` (a shipped one; otherwise convzoo's defaults), then
    every key whose value differs from it, as a shortcut flag where there is one (``--data``,
    ``--epochs`` ...) or ``--set KEY=VALUE``; the keys of :data:`_NOT_REPRODUCED` are left out.
    Empty argv when the run's stages differ from the recipe's (a resume with new overrides):
    such a run is trained again from its config.yaml alone."""
    name = str(config.get("name") or "")
    recipe = name if name in C.list_recipes() else ""
    base = C.from_dict(C.load_recipe(recipe) if recipe else {})
    changed = {k: run for k, (run, _) in
               C.differences(C.from_dict(config), base, _NOT_REPRODUCED).items()}
    if "stages" in changed:
        return [], {}
    argv = ["convzoo", "train"] + (["--recipe", recipe] if recipe else [])
    flags = {key: attr for attr, key in C.SHORTCUTS}
    for key, value in changed.items():
        if key in flags and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            argv += [f"--{flags[key].replace('_', '-')}", _arg(value)]
        else:
            argv += ["--set", f"{key}={_arg(value)}"]
    return argv, changed


# ----------------------------------------------------------------------------- the card


def _pct(v: Any) -> str:
    return f"{v:.2f}%" if isinstance(v, (int, float)) else "n/a"


def _num(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "n/a"


def _values(t: Any) -> str:
    """A short list of statistics (0-255 scale) for the card."""
    import torch

    flat = torch.as_tensor(t).flatten().tolist()
    return ", ".join(f"{v:.2f}" for v in flat)


def _normalisation(pre: dict[str, Any]) -> str:
    kind = pre.get("kind", "none")
    if kind == "channel" and "mean" in pre:
        return (f"per-channel: (x - mean) / std with mean [{_values(pre['mean'])}] and std "
                f"[{_values(pre['std'])}] on the 0-255 scale, fitted on the training split")
    return {"none": "none (the 0-255 pixel values as they are)",
            "mean_image": "the training split's mean image subtracted, divided by its std",
            "global_mean": "one mean and std over all training pixels",
            "gcn": "global contrast normalisation per image",
            "gcn_zca": "global contrast normalisation, then ZCA whitening fitted on the "
                       "training split"}.get(kind, kind)


def _classes(classes: list[str]) -> str:
    shown = [f"`{c}`" for c in classes]
    if len(classes) > CLASSES_SHOWN:
        shown = shown[:12] + [f"... ({len(classes) - 16} more) ..."] + shown[-4:]
    return ", ".join(shown)


def _data_name(source: str) -> str:
    """A data source as a dataset name: a shipped name, or a path's last component."""
    return Path(source.rstrip("/")).name or source


def _split_line(split: str, data_cfg: dict[str, Any]) -> str:
    if split == "val":
        frac = data_cfg.get("val_fraction") or 0
        how = (f"{frac:g} of the training images held out (data.val_fraction)" if frac
               else "the data's own validation split")
        return f"`val`, {how}; the test split was used neither to train nor to choose"
    return "`test`"


def card_text(run_dir: Path, ckpt: dict[str, Any], figures: dict[str, Any],
              files: dict[str, str] | None = None) -> str:
    """The card of the run in ``run_dir`` (module docstring) from its checkpoint dict (its last
    epoch) and its summary figures (``training.rundir.summary``). ``files``: the files beside
    the card and what each is (``convzoo push``'s repository), listed in a section of their
    own."""
    run_dir = Path(run_dir)
    cfg = ckpt["config"]  # what the last epoch trained with
    planned = cfg  # the first stage and each later one's overrides: recipe, command, stages
    if (run_dir / "config.yaml").is_file():
        planned = C.to_dict(C.load_config(run_dir / "config.yaml"))
    data_cfg = cfg.get("data", {})
    model = ckpt["model_name"]
    kwargs = dict(ckpt.get("model_kwargs") or {})
    classes = [str(c) for c in ckpt["classes"]]
    geometry = checkpoint_geometry(ckpt)
    c, h, w = geometry.shape
    source = str(data_cfg.get("source", figures.get("data", "")))
    data_name = _data_name(source)
    split = ckpt["eval_split"]
    weights = figures.get("weights", ckpt.get("weights", "raw"))
    epoch = ckpt["epoch"]
    report = _report(run_dir)
    title = str(cfg.get("train", {}).get("name") or run_dir.name)

    metrics = [{"type": "accuracy", "name": f"top-1 accuracy ({split})",
                "value": round(float(figures["top1"]), 4)}] \
        if isinstance(figures.get("top1"), (int, float)) else []
    if isinstance(figures.get("top5"), (int, float)):
        metrics.append({"type": "top_5_accuracy", "name": f"top-5 accuracy ({split})",
                        "value": round(float(figures["top5"]), 4)})
    results = [{"task": {"type": "image-classification", "name": "Image Classification"},
                "dataset": {"name": data_name, "type": data_name, "split": split},
                "metrics": metrics}]
    if report is not None and isinstance(report.get("top1"), (int, float)):
        rsplit = str(report.get("split", "?"))
        rdata = _data_name(str(report.get("data", source)))
        results.append({"task": dict(results[0]["task"]),  # a copy: no YAML anchor
                        "dataset": {"name": rdata, "type": rdata, "split": rsplit},
                        "metrics": [{"type": "accuracy",
                                     "name": f"top-1 accuracy ({rsplit}, eval report)",
                                     "value": round(float(report["top1"]), 4)}]})
    front = {
        "library_name": "convzoo",
        "pipeline_tag": "image-classification",
        "tags": ["convzoo", "image-classification", "pytorch", model.removeprefix("timm:")]
        + (["timm"] if model.startswith("timm:") else []),
        "datasets": [data_name],
        "metrics": ["accuracy"],
        "model-index": [{"name": title, "results": results}],
    }
    out = ["---", yaml.safe_dump(front, sort_keys=False, width=10**6).strip(), "---", ""]
    add = out.append

    add(f"# {title}: {model} on {data_name}")
    add("")
    add(f"A convzoo image classifier: `{model}` trained on `{source}` ({len(classes)} classes) "
        f"for {epoch} epochs; top-1 {_pct(figures.get('top1'))} on the {split} split "
        f"({weights} weights of the last epoch). Written by convzoo from the run's own files; "
        "`convzoo card RUN` rewrites it.")
    add("")

    add("## Model")
    add("")
    add("| | |")
    add("|---|---|")
    add(f"| architecture | `{model}`" + (f" with `{json.dumps(kwargs)}`" if kwargs else "")
        + " |")
    params = figures.get("params")
    add(f"| parameters | {params:,} |" if isinstance(params, int) else "| parameters | n/a |")
    add(f"| input | {c} x {h} x {w} (channels x height x width), pixel values 0-255; other "
        f"sizes are brought to it by `{geometry.resize}` "
        + ("(scale to cover, centre crop)" if geometry.resize == "crop"
           else "(resize ignoring the aspect ratio)") + " |")
    add(f"| normalisation | {_normalisation(dict(ckpt['preprocess']))} |")
    aug = cfg.get("augment", {})
    crop = aug.get("crop") or aug.get("random_resized_crop") or 0
    add(f"| eval view | {'centre crop ' + str(crop) + ' px' if crop else 'the whole image'} |")
    add(f"| weights | `model.safetensors`: the {weights} weights of epoch {epoch}"
        + (" (the exponential moving average of the trained weights)" if weights == "ema"
           else "") + " |")
    add("")

    add("## Data and classes")
    add("")
    add(f"- source: `{source}`" + (f" (at most {data_cfg['limit']} images per split: "
                                   "data.limit)" if data_cfg.get("limit") else ""))
    train_n, eval_n = figures.get("train_count"), figures.get("eval_count")
    sizes = (f"{train_n:,} training images" if isinstance(train_n, int)
             else f"{figures.get('train_images_per_epoch', 'n/a')} training images per epoch")
    sizes += (f", {eval_n:,} evaluated ({split})" if isinstance(eval_n, int) else "")
    add(f"- splits: {sizes}; evaluated on {_split_line(split, data_cfg)}")
    add(f"- classes ({len(classes)}): {_classes(classes)}")
    add("")

    add("## Recipe and overrides")
    add("")
    recipe = str(planned.get("name") or "")
    add(f"- recipe: `{recipe}`" + (f": {planned['description']}" if planned.get("description")
                                   else "") if recipe else "- recipe: none (convzoo's defaults)")
    argv, changed = reproduce_command(planned)
    if argv:
        add("- overrides: " + (", ".join(f"`{k}={_arg(v)}`" for k, v in changed.items())
                               if changed else "none"))
    stages = planned.get("stages") or []
    for i, stage in enumerate(stages, 2):
        sets = ", ".join(f"`{k}={_arg(v)}`" for k, v in (stage.get("set") or {}).items())
        add(f"- stage {i}: to epoch {stage['epochs']}" + (f" with {sets}" if sets else ""))
    add("- the whole resolved config: `config.yaml`")
    add("")

    add("## Results")
    add("")
    add("| split | weights | epoch | top-1 | top-5 | loss |")
    add("|---|---|---:|---:|---:|---:|")
    add(f"| {split} | {weights} | {epoch} | {_pct(figures.get('top1'))} | "
        f"{_pct(figures.get('top5'))} | {_num(figures.get('loss'))} |")
    if weights == "ema" and isinstance(figures.get("raw_top1"), (int, float)):
        add(f"| {split} | raw | {epoch} | {_pct(figures.get('raw_top1'))} | "
            f"{_pct(figures.get('raw_top5'))} | {_num(figures.get('raw_loss'))} |")
    add("")
    best_metric = figures.get("best_metric", "val_top1")
    add(f"Which split chose the weights: `model.safetensors` holds the last epoch's weights, "
        f"chosen by no split. `best.pt` (in the run directory, not pushed) is the epoch with the best "
        f"`{best_metric}` on the **{split}** split: epoch {figures.get('best_epoch', 'n/a')}"
        + (f", {_num(figures.get('best_value'), 2)}" if figures.get("best_value") is not None
           else "") + ".")
    if split == "test":
        add("")
        add("Note: the test split was the only evaluation split, so `best.pt`'s test figure is "
            "optimistic (it was chosen on it); set `data.val_fraction` to choose on held-out "
            "data.")
    add("")
    device = figures.get("device")
    if device:
        add(f"Trained on {device} ({figures.get('precision') or 'fp32'}, torch "
            f"{figures.get('torch', '?')}) in {figures.get('train_seconds', 0):.1f} s.")
        add("")
    if (run_dir / "curves.png").is_file():
        add("![learning curves: error, loss and learning rate per epoch](curves.png)")
        add("")

    add("## Evaluation report")
    add("")
    if report is None:
        add("None yet: `convzoo eval RUN --report` writes one into `RUN/report`, then "
            "`convzoo card RUN` adds its figures here.")
    else:
        about = (f"on `{report['data']}` ({report.get('split', '?')} split, "
                 f"{report.get('weights', '?')} weights of epoch {report.get('epoch', '?')})"
                 if "data" in report else "")
        k = next((key for key in report if key.startswith("top") and key != "top1"), None)
        add(f"`convzoo eval --report` {about}: {report.get('count', 'n/a')} images, top-1 "
            f"{_pct(report.get('top1'))}" + (f", top-{k[3:]} {_pct(report[k])}" if k else "")
            + f", expected calibration error {_pct(report['ece']) if 'ece' in report else 'n/a'}"
            f" ({report.get('ece_bins', 15)} bins), macro F1 {_num(report.get('macro_f1'))}.")
        if report.get("epoch") not in (None, epoch):
            add("")
            add(f"The report is of epoch {report['epoch']}; the run has trained to epoch "
                f"{epoch} since: run `convzoo eval RUN --report` again.")
        if (run_dir / REPORT_DIR / "per_class.md").is_file():
            add("")
            add(f"Per class: [precision, recall, F1]({REPORT_DIR}/per_class.md).")
        for name, what in REPORT_PICTURES:
            if (run_dir / REPORT_DIR / name).is_file():
                add("")
                add(f"![{what}]({REPORT_DIR}/{name})")
    add("")

    add("## Intended use and limits")
    add("")
    add(f"- Trained on `{source}` at {h}x{w} px, for its {len(classes)} classes only: any input "
        "is put in one of them, there is no 'none of these'.")
    add(f"- The figures above hold only for data like it (the same kind of images, "
        f"classes and {h}x{w} px geometry); measure on your own data before relying on it "
        "(`convzoo eval RUN --data YOUR_DATA`).")
    top1 = figures.get("top1")
    if isinstance(eval_n, int) and eval_n > 0 and isinstance(top1, (int, float)):
        p = min(max(top1 / 100, 0.0), 1.0)
        error = 100 * math.sqrt(max(p * (1 - p), 1 / eval_n) / eval_n)  # binomial, >= 1 image
        add(f"- {eval_n:,} evaluated images: the top-1 figure has a standard error of about "
            f"{error:.1f} points (binomial); differences smaller than that are noise.")
    add("- No fairness, robustness or out-of-distribution evaluation was done.")
    add("")

    add("## Use it")
    add("")
    add("```python")
    add("import convzoo")
    add('clf = convzoo.load("model.safetensors")  # or the run directory')
    add('print(clf.predict("image.png", topk=3))')
    add("```")
    add("")
    add("ONNX (`convzoo export RUN --format onnx`) and `torch.export` (`--format pt2`) files take "
        f"float32 images (batch, {c}, {h}, {w}) on the 0-255 scale, preprocessing included, and "
        "return logits.")
    add("")

    if files:
        add("## Files")
        add("")
        for name, role in files.items():
            add(f"- `{name}`: {role}")
        add("")

    add("## Reproduce")
    add("")
    add("```bash")
    if argv:
        add(shlex.join(argv))
        add("# or from the resolved config beside this card:")
    else:
        add("# a run resumed with new overrides (stages): train it again from its config")
    add("convzoo train --recipe config.yaml")
    add("```")
    add("")
    return "\n".join(out)


def write_card(run_dir: Path, ckpt: dict[str, Any], figures: dict[str, Any]) -> Path:
    """``RUN/README.md``, written atomically (``files.write_text``: a disk problem is one
    line)."""
    path = Path(run_dir) / CARD_FILE
    write_text(path, card_text(run_dir, ckpt, figures))
    return path


def run_dir_of(run: Path) -> Path:
    """``run``, checked to be a convzoo run directory."""
    if not run.is_dir() or not is_run_dir(run):
        raise ConvzooError(f"{run}: not a convzoo run directory (config.yaml and last.pt, "
                           "best.pt or model.safetensors)")
    return run


def finished_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the last checkpoint, summary.json's figures) of a finished run, which agree on the
    epoch; else one line saying what to do."""
    run = run_dir_of(Path(run_dir))
    figures = read_summary(run)
    if not figures:
        raise ConvzooError(f"{run}: no summary.json, the run has not finished; its card is "
                           f"written when it does (`convzoo train --resume {run}`)")
    ckpt = read_checkpoint(run, "last")
    if figures.get("epochs") != ckpt["epoch"]:
        raise ConvzooError(f"{run}: summary.json is of epoch {figures.get('epochs')}, the "
                           f"checkpoint of epoch {ckpt['epoch']}; `convzoo train --resume "
                           f"{run}` finishes the run and writes its card")
    return ckpt, figures
