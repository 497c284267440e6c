"""The model card (README.md of a run): what it says, that it says the run's own figures, that
its command trains the same config, and that resume and `convzoo card` write it again."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from convzoo import card
from convzoo import config as C
from convzoo import saved as ckpt_io
from convzoo.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def front_matter(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


@pytest.fixture
def run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the session's finished run (this test may change it)."""
    return Path(shutil.copytree(run_dir, tmp_path / "r"))


def test_a_finished_run_has_a_card_with_its_own_figures(run_dir: Path):
    text = (run_dir / "README.md").read_text()
    meta, body = front_matter(text)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert meta["library_name"] == "convzoo" and meta["datasets"] == ["digits"]
    assert {"convzoo", "image-classification", "resnet20"} <= set(meta["tags"])
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"]["split"] == "test"
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values == {"accuracy": round(summary["top1"], 4),
                      "top_5_accuracy": round(summary["top5"], 4)}
    for section in ["## Model", "## Data and classes", "## Recipe and overrides", "## Results",
                    "## Evaluation report", "## Intended use and limits", "## Reproduce"]:
        assert section in body, section
    assert f"| parameters | {summary['params']:,} |" in body
    assert "| input | 3 x 8 x 8 (channels x height x width)" in body
    mean = ckpt_io.load_checkpoint(run_dir)["preprocess"]["mean"].tolist()
    assert f"mean [{', '.join(f'{v:.2f}' for v in mean)}]" in body
    assert f"| test | raw | 1 | {summary['top1']:.2f}% | {summary['top5']:.2f}% |" in body
    assert f"{summary['train_count']:,} training images, {summary['eval_count']:,} evaluated " \
           "(test)" in body
    assert "classes (10): `0`, `1`" in body
    assert "the test split was the only evaluation split" in body  # chosen on test: said so
    assert "Trained on `digits` at 8x8 px" in body
    assert "![learning curves" in body and "(curves.png)" in body


def test_its_command_trains_the_same_config(run_dir: Path):
    body = (run_dir / "README.md").read_text()
    line = next(ln for ln in body.splitlines() if ln.startswith("convzoo train --"))
    argv = shlex.split(line)
    assert argv[:2] == ["convzoo", "train"] and "--recipe" not in argv  # no recipe: defaults
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*argv[1:], "--dry-run"]) == 0
    again = C.dotted(C.to_dict(C.from_dict(yaml.safe_load(printed.getvalue()))))
    ran = C.dotted(C.to_dict(C.load_config(run_dir / "config.yaml")))
    differ = {k for k in ran if ran[k] != again[k]}
    assert differ <= card._NOT_REPRODUCED, differ
    assert ran["data.limit"] == 200 and "--set data.limit=200" in line


def test_resume_of_a_finished_run_without_a_card_writes_it(run: Path):
    original = (run / "README.md").read_text()
    (run / "README.md").unlink()
    assert main(["train", "--resume", str(run)]) == 0
    assert (run / "README.md").read_text() == original  # the same records, the same card


def test_card_command_adds_the_eval_report(run: Path, capsys):
    assert main(["eval", str(run), "--report"]) == 0
    capsys.readouterr()
    assert main(["card", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "README.md")
    body = (run / "README.md").read_text()
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["split"] == "test" and report["epoch"] == 1 and report["data"] == "digits"
    assert (f"on `digits` (test split, raw weights of epoch 1): {report['count']} images, "
            f"top-1 {report['top1']:.2f}%, top-5 {report['top5']:.2f}%, expected calibration "
            f"error {report['ece']:.2f}%") in body
    meta, _ = front_matter(body)
    (_, from_report) = meta["model-index"][0]["results"]  # the report's figure beside the run's
    assert from_report["dataset"]["split"] == "test"
    assert from_report["metrics"] == [{"type": "accuracy",
                                       "name": "top-1 accuracy (test, eval report)",
                                       "value": round(report["top1"], 4)}]
    links = re.findall(r"\]\(([^)]+)\)", body)
    assert {"curves.png", "report/per_class.md", "report/confusion_matrix.png",
            "report/reliability.png", "report/confident_mistakes.png"} <= set(links)
    for link in links:
        assert (run / link).is_file(), link  # relative to the card
    assert card.linked_files(run) == ["curves.png", "report/confusion_matrix.png",
                                      "report/reliability.png", "report/confident_mistakes.png",
                                      "report/per_class.md"]


def test_many_classes_are_shortened_and_a_val_split_is_named(run_dir: Path):
    ckpt = ckpt_io.load_checkpoint(run_dir)
    names = [f"class{i:03d}" for i in range(100)]
    ckpt = {**ckpt, "classes": names, "num_classes": 100, "eval_split": "val",
            "config": C.merge(ckpt["config"], {"data": {"val_fraction": 0.1}})}
    figures = json.loads((run_dir / "summary.json").read_text())
    body = card.card_text(run_dir, ckpt, {**figures, "split": "val"})
    line = next(ln for ln in body.splitlines() if ln.startswith("- classes (100):"))
    assert line.startswith("- classes (100): `class000`, `class001`")
    assert "`class011`, ... (84 more) ..., `class096`" in line and line.endswith("`class099`")
    assert "`val`, 0.1 of the training images held out (data.val_fraction); the test split " \
           "was used neither to train nor to choose" in body
    assert "the test split was the only evaluation split" not in body


@pytest.mark.parametrize("case", ["not_a_run", "unfinished", "link"])
def test_card_of_what_is_not_a_finished_run_is_one_line(case, run: Path, tmp_path, capsys):
    target = tmp_path / "empty" if case == "not_a_run" else run
    target.mkdir(exist_ok=True)
    victim = tmp_path / "victim.md"
    victim.write_text("the user's own file\n")
    if case == "unfinished":
        (run / "summary.json").unlink()
    if case == "link":  # a link in the card's place: neither it nor its target is replaced
        (run / "README.md").unlink()
        (run / "README.md").symlink_to(victim)
    assert main(["card", str(target)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    needle = {"not_a_run": "not a convzoo run directory",
              "unfinished": "no summary.json, the run has not finished",
              "link": "README.md: is a symbolic link; convzoo replaces only a regular file"}[case]
    assert len(lines) == 1 and needle in lines[0]
    assert victim.read_text() == "the user's own file\n"
    if case == "link":
        assert (run / "README.md").is_symlink()
