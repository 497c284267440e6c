"""Bad input ends with one clear line on stderr and exit status 2, never a traceback."""

import contextlib
import io
import subprocess
import sys

import pytest
from PIL import Image

from convzoo.cli import main


def convzoo(*args: str) -> subprocess.CompletedProcess:
    """``convzoo ARGS`` in this process (``cli.main``, what ``python -m convzoo`` runs): its exit
    status and output. In-process because a fresh interpreter costs about 5 s here (importing
    torch) per case; test_the_real_entry_point_says_one_line covers the process itself."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


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


def test_the_real_entry_point_says_one_line(tmp_path):
    """`python -m convzoo` itself: the same one line and exit 2 as ``cli.main``."""
    result = subprocess.run([sys.executable, "-m", "convzoo", "train", "--model", "resnet21",
                             "--data", "digits", "--out", str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert_one_line_error(result, "resnet21")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args, needles",
    [
        (["train", "--data", "/no/such/dataset"], ["/no/such/dataset"]),
        (["train", "--model", "resnet21", "--data", "digits"], ["resnet21"]),
        (["train", "--set", "optim.learnin_rate=0.1"], ["optim.learnin_rate"]),
        (["train", "--set", "train.epochs=many"], ["train.epochs", "many"]),
        (["train", "--recipe", "no-such-recipe"], ["no-such-recipe"]),
        (["eval", "/no/such/run"], ["/no/such/run"]),
        (["train", "--set", "optim.weight_decay=-5e-4"], ["optim.weight_decay", "[0, inf)"]),
        (["train", "--epochs", "0"], ["train.epochs=0", "[1, inf)"]),
        (["eval", "/no/such/run", "--batch-size", "0"], ["--batch-size", "[1, inf)"]),
        (["train", "--no-such-flag"], ["--no-such-flag"]),
        (["no-such-command"], ["no-such-command"]),
    ],
)
def test_bad_arguments(args, needles, tmp_path):
    assert_one_line_error(convzoo(*args, "--out", str(tmp_path)) if args[0] == "train"
                          else convzoo(*args), *needles)


@pytest.mark.parametrize("kind", ["memory", "stream"])
def test_a_policy_fill_for_other_channels_is_one_line_and_leaves_no_run(tmp_path, kind):
    """policy_fill has 3 values, the images are made grey (1 channel): found before anything
    is written, by either loader (a streamed run would meet it in a worker process)."""
    data = "digits"
    if kind == "stream":
        from convzoo.data.packs.writer import pack
        pack(image_folder(tmp_path / "src"), tmp_path / "packed", workers=1, progress=False)
        data = str(tmp_path / "packed")
    out = tmp_path / "runs"
    result = convzoo("train", "--data", data, "--set", "data.image_size=8", "--epochs", "1",
                     "--batch-size", "2", "--set", "data.channels=1",
                     "--set", f"data.loader={kind}",
                     "--set", "augment.policy=trivialaugment",
                     "--set", "augment.policy_fill=[124,116,104]", "--out", str(out),
                     "--device", "cpu")
    assert_one_line_error(result, "augment.policy_fill=[124.0, 116.0, 104.0]", "1 channel")
    assert not out.exists() or not any(out.iterdir())


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


def test_version_and_help_exit_0():
    from convzoo import __version__

    result = convzoo("--version")
    assert result.returncode == 0 and result.stdout.startswith(f"convzoo {__version__} ")
    result = convzoo("train", "--help")
    assert result.returncode == 0 and "convzoo config" in result.stdout


def test_weight_decay_5e_4_through_set_and_a_recipe(tmp_path):
    """Issue 11: `--set optim.weight_decay=5e-4` and `weight_decay: 5e-4` in YAML were refused."""
    recipe = tmp_path / "wd.yaml"
    recipe.write_text("optim:\n  weight_decay: 5e-4\n")
    for args in (["--set", "optim.weight_decay=5e-4"], [str(recipe)]):
        result = convzoo("config", *args)
        assert result.returncode == 0, result.stderr
        assert "weight_decay: 0.0005" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["train", "--help"], ["recipes"],
                                  ["config", "quickstart"]])
def test_the_light_commands_import_no_torch(argv):
    """--help, --version, recipes and config answer without importing torch (seconds saved on
    every call; imported only by the commands that need it)."""
    import subprocess
    import sys

    code = ("import sys; from convzoo.cli import main; code = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
