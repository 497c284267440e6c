"""Bad input ends with one clear line on stderr and exit status 2, never a traceback."""

import subprocess
import sys

import pytest
from PIL import Image


def convzoo(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convzoo", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("convzoo: error:")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def image_folder(root, *, corrupt: bool = False, empty: bool = False):
    for split in ["train", "test"]:
        for cls in ["cat", "dog"]:
            d = root / split / cls
            d.mkdir(parents=True)
            if empty:
                continue
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 40, 10, 10)).save(d / f"{i}.png")
    if corrupt:
        (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


@pytest.mark.parametrize(
    "args, needles",
    [
        (["train", "--data", "/no/such/dataset"], ["/no/such/dataset"]),
        (["train", "--model", "resnet21", "--data", "digits"], ["resnet21"]),
        (["train", "--set", "optim.learnin_rate=0.1"], ["optim.learnin_rate"]),
        (["train", "--set", "train.epochs=many"], ["train.epochs", "many"]),
        (["train", "--recipe", "no-such-recipe"], ["no-such-recipe"]),
        (["eval", "/no/such/run"], ["/no/such/run"]),
    ],
)
def test_bad_arguments(args, needles, tmp_path):
    assert_one_line_error(convzoo(*args, "--out", str(tmp_path)) if args[0] == "train"
                          else convzoo(*args), *needles)


def test_folder_with_no_images(tmp_path):
    root = image_folder(tmp_path / "data", empty=True)
    assert_one_line_error(convzoo("train", "--data", str(root), "--out", str(tmp_path)), str(root))


def test_corrupt_jpeg_is_named(tmp_path):
    root = image_folder(tmp_path / "data", corrupt=True)
    result = convzoo("train", "--data", str(root), "--out", str(tmp_path / "runs"),
                     "--set", f"data.root={tmp_path / 'cache'}")
    assert_one_line_error(result, "broken.jpg")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir()), \
        "a run that failed on bad input left a run directory behind"


def test_eval_of_a_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "last.pt"
    bogus.write_bytes(b"garbage")
    assert_one_line_error(convzoo("eval", str(bogus)), str(bogus))


def test_resume_of_a_directory_that_is_not_a_run(tmp_path):
    assert_one_line_error(convzoo("train", "--resume", str(tmp_path)), str(tmp_path))
