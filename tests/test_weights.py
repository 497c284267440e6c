"""Start from trained weights (every source), head replacement and its report, freezing,
head/backbone parameter split, and rebuilding a model from a .safetensors file."""

from __future__ import annotations

import json
import shutil
import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn

from convzoo import saved as ckpt_io
from convzoo.cli import main
from convzoo.errors import ConvzooError
from convzoo.models import create_model, freeze, head_and_backbone_params, list_models
from convzoo.models.freeze import frozen_parameter_names
from convzoo.models.heads import head_state_keys, stage_parameter_names
from convzoo.saved import load_init, load_weights_file

pytestmark = pytest.mark.usefixtures("one_thread")


def _equal_except(model: nn.Module, state: dict[str, torch.Tensor], skip: set[str]) -> None:
    """Every key of `model` but `skip` equals `state`'s tensor of the same name."""
    for k, v in model.state_dict().items():
        if k not in skip:
            assert torch.equal(v, state[k].to(v.dtype)), k


# ----------------------------------------------------------------------------- sources


def test_init_from_run_directory_replaces_the_head(run_dir):
    """A 10-class digits run into a 3-class model: everything but the head loaded."""
    ckpt = ckpt_io.load_checkpoint(run_dir)
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=3)
    fresh_head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("fc.")}
    report = load_init(model, run_dir, arch="resnet20")
    assert sorted(report.reinitialised) == ["fc.bias", "fc.weight"]
    assert "fc.weight (10, 64) in the source, (3, 64) here" in report.head_reason
    assert len(report.loaded) == len(ckpt["model"]) - 2
    assert report.missing == [] and report.unexpected == []
    assert report.source_classes == [str(i) for i in range(10)]
    _equal_except(model, ckpt["model"], {"fc.weight", "fc.bias"})
    for k, v in fresh_head.items():  # the new head is the model's own fresh one
        assert torch.equal(model.state_dict()[k], v)
    assert "head re-initialised" in report.summary() and str(run_dir) in report.summary()
    json.dumps(report.to_dict())  # the report can go into the run directory as JSON


def test_init_same_shape_keeps_or_replaces_the_head_by_class_names(run_dir):
    ckpt = ckpt_io.load_checkpoint(run_dir, "best")
    same = [str(i) for i in range(10)]
    model = create_model("resnet20", num_classes=10)
    report = load_init(model, run_dir, classes=same, which="best")
    assert report.reinitialised == [] and report.head_reason == ""
    _equal_except(model, ckpt["model"], set())
    # same shapes, other classes (CIFAR classes 0-4 -> 5-9): a new head, and the report says why
    other = [f"c{i}" for i in range(10)]
    model = create_model("resnet20", num_classes=10)
    report = load_init(model, run_dir, classes=other)
    assert sorted(report.reinitialised) == ["fc.bias", "fc.weight"]
    assert "classes differ" in report.head_reason
    assert not torch.equal(model.fc.weight, ckpt["model"]["fc.weight"])
    # head="new" always, head="keep" refuses a head of another shape
    model = create_model("resnet20", num_classes=10)
    assert load_init(model, run_dir, head="new").head_reason == "asked for a new head"
    with pytest.raises(ConvzooError, match=r"fc\.bias \(10\) in the source, \(4\) here.*keep"):
        load_init(create_model("resnet20", num_classes=4), run_dir, head="keep")


def test_init_num_classes_resets_the_head_first(run_dir):
    model = create_model("resnet20", num_classes=10)
    report = load_init(model, run_dir, num_classes=7)
    assert model.fc.out_features == 7 and sorted(report.reinitialised) == ["fc.bias", "fc.weight"]


def test_init_from_safetensors(run_dir, tmp_path):
    """The run's model.safetensors (class names from its metadata), and a bare one."""
    path = run_dir / "model.safetensors"
    ckpt = ckpt_io.load_checkpoint(run_dir)
    model = create_model("resnet20", num_classes=10)
    report = load_init(model, path, classes=[str(i) for i in range(10)])
    assert report.source == str(path) and report.reinitialised == []
    assert report.source_classes == [str(i) for i in range(10)]
    _equal_except(model, ckpt["model"], set())
    # a run directory whose checkpoints were deleted still has its (last) safetensors
    shared = tmp_path / "shared-run"
    shared.mkdir()
    shutil.copy(path, shared / "model.safetensors")
    model = create_model("resnet20", num_classes=10)
    assert load_init(model, shared).source == str(shared / "model.safetensors")
    _equal_except(model, ckpt["model"], set())
    with pytest.raises(ConvzooError, match=r"not a run directory with best\.pt$"):
        load_init(model, shared, which="best")  # the safetensors are the last epoch's


def test_init_from_torchvision_state_dict(tmp_path):
    """torchvision's resnet18 state dict, DDP-prefixed inside {"model": ...}, into the zoo's
    resnet18 with 7 classes and 1 input channel: backbone loaded, head new, conv1 adapted."""
    torch.manual_seed(0)
    source = torchvision.models.resnet18(num_classes=1000)
    state = source.state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 90}, path)
    model = create_model("resnet18", num_classes=7, in_chans=1)
    report = load_init(model, path, arch="resnet18")
    assert sorted(report.reinitialised) == ["fc.bias", "fc.weight"]
    assert report.adapted == ["conv1.weight (64, 3, 7, 7) -> (64, 1, 7, 7)"]
    assert report.missing == [] and report.unexpected == []
    _equal_except(model, state, {"fc.weight", "fc.bias", "conv1.weight"})
    # one grey channel: the sum of the RGB filters (a grey image gives the RGB output)
    assert torch.allclose(model.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    grey = torch.rand(1, 1, 32, 32)
    model.eval(), source.eval()
    with torch.no_grad():
        feats = nn.Sequential(*list(model.children())[:-1])(grey)
        ref = nn.Sequential(*list(source.children())[:-1])(grey.expand(1, 3, 32, 32))
    assert torch.allclose(feats, ref, atol=1e-5)


def test_init_from_timm_state_dict_into_zoo_and_timm_models(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    source = timm.create_model("resnet18")  # same keys as torchvision's ResNet
    path = tmp_path / "timm_resnet18.safetensors"
    save_file(source.state_dict(), str(path))
    zoo = create_model("resnet18", num_classes=5)
    report = load_init(zoo, path)
    assert sorted(report.reinitialised) == ["fc.bias", "fc.weight"] and report.unexpected == []
    _equal_except(zoo, source.state_dict(), {"fc.weight", "fc.bias"})
    # a timm architecture through the registry, from a timm file with its own head
    small = timm.create_model("test_efficientnet", num_classes=1000)
    torch.save(small.state_dict(), tmp_path / "eff.pth")
    model = create_model("timm:test_efficientnet", num_classes=4)
    report = load_init(model, tmp_path / "eff.pth", arch="timm:test_efficientnet")
    assert sorted(report.reinitialised) == ["classifier.bias", "classifier.weight"]
    _equal_except(model, small.state_dict(), {"classifier.weight", "classifier.bias"})


def _fake_download(state):
    def download(url, *args, **kwargs):
        return state
    return download


def test_named_torchvision_weights(monkeypatch):
    """torchvision:DEFAULT resolves through the model's weights enum; the 'download' is
    replaced by a local state dict (no network in tests). ImageNet categories travel along."""
    import torchvision.models._api as tv_api

    from convzoo.models import weights

    state = torchvision.models.resnet18().state_dict()
    monkeypatch.setattr(weights, "reachable", lambda url, timeout=3.0: True)  # "online"
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", _fake_download(state))
    model = create_model("resnet18", num_classes=10)
    report = load_init(model, "torchvision:DEFAULT", arch="resnet18")
    assert report.source.startswith("torchvision ResNet18_Weights.IMAGENET1K_V1")
    assert report.source_classes[:2] == ["tench", "goldfish"]
    assert sorted(report.reinitialised) == ["fc.bias", "fc.weight"]
    _equal_except(model, state, {"fc.weight", "fc.bias"})
    full = load_init(create_model("resnet18", num_classes=1000),
                     "torchvision:ResNet18_Weights.IMAGENET1K_V1")
    assert full.reinitialised == []
    with pytest.raises(ConvzooError, match="name the weights in full"):
        load_init(create_model("resnet18"), "torchvision:DEFAULT")
    with pytest.raises(ConvzooError, match="unknown torchvision weights"):
        load_init(create_model("resnet18"), "torchvision:ResNet18_Weights.NOPE")


def test_named_weights_offline_say_how_to_pass_a_file(monkeypatch):
    import torchvision.models._api as tv_api

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    with pytest.raises(ConvzooError) as err:
        load_init(create_model("resnet18"), "torchvision:DEFAULT", arch="resnet18")
    msg = str(err.value)
    assert "\n" not in msg and "offline?" in msg
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert "model.init=/path/to/resnet18-f37072fd.pth" in msg


def test_named_timm_weights_offline(monkeypatch):
    pytest.importorskip("timm")
    import timm.models._builder as builder

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(builder, "load_pretrained", offline)
    with pytest.raises(ConvzooError) as err:
        load_init(create_model("resnet18"), "timm:resnet18.a1_in1k")
    msg = str(err.value)
    assert "huggingface.co/timm/resnet18.a1_in1k" in msg and "model.init=/path/to/" in msg
    with pytest.raises(ConvzooError, match="unknown timm model"):
        load_init(create_model("resnet18"), "timm:resnet18_nope")


def test_offline_named_weights_fail_at_once_without_touching_the_network(monkeypatch):
    """Offline, timm's hub download retried for 62 s before its error: now the host is asked
    once (or HF_HUB_OFFLINE says so) and an uncached download is refused before it starts."""
    timm = pytest.importorskip("timm")
    import torchvision.models._api as tv_api

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("went to the hub"))
    monkeypatch.setattr(tv_api, "load_state_dict_from_url",
                        lambda *a, **k: pytest.fail("went to the network"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: "/nonexistent-hub-dir")  # nothing cached
    for spec in ("timm:resnet18.a1_in1k", "torchvision:DEFAULT"):
        with pytest.raises(ConvzooError, match="no network.*offline"):
            load_init(create_model("resnet18"), spec, arch="resnet18")


def test_reachable_asks_the_host_once():
    import socket

    from convzoo.models.weights import reachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert reachable(f"https://127.0.0.1:{port}/weights.pth")
    assert not reachable(f"https://127.0.0.1:{port}/weights.pth", timeout=1)  # closed now


def test_bad_init_sources_are_one_line_errors(tmp_path, run_dir):
    model = create_model("resnet20")
    cases = []
    cases.append((tmp_path / "missing.pt", "no such file or directory"))
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file at all")
    cases.append((tmp_path / "garbage.pt", "not a readable PyTorch weights file"))
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    cases.append((tmp_path / "bad.safetensors", "not a readable safetensors file"))
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "nostate.pt")
    cases.append((tmp_path / "nostate.pt", r"no state dict found \(top-level keys: epoch, lr\)"))
    torch.save(nn.Linear(2, 2), tmp_path / "pickled.pt")  # a pickled module: refused
    cases.append((tmp_path / "pickled.pt", "not a readable PyTorch weights file"))
    (tmp_path / "empty").mkdir()
    cases.append((tmp_path / "empty", "not a run directory with last.pt or model.safetensors"))
    # another architecture: nothing matches
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    cases.append((tmp_path / "r18.pth", "none of its 122 tensors match"))
    # a mismatch outside the head: named, with both shapes
    wide = create_model("resnet20", widths=(16, 32, 128)).state_dict()
    torch.save(wide, tmp_path / "wide.pt")
    cases.append((tmp_path / "wide.pt",
                  r"blocks\.6\.conv1\.weight has shape \(128, 32, 3, 3\) there but "
                  r"\(64, 32, 3, 3\) in resnet20; only the classifier head may differ"))
    for path, message in cases:
        with pytest.raises(ConvzooError, match=message) as err:
            load_init(model, path, arch="resnet20")
        assert "\n" not in str(err.value)
    with pytest.raises(ConvzooError, match="no EMA weights"):
        load_init(model, run_dir, weights="ema")


def test_mismatch_leaves_the_model_untouched(tmp_path):
    model = create_model("resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wide = create_model("resnet20", widths=(16, 32, 128)).state_dict()
    torch.save(wide, tmp_path / "wide.pt")
    with pytest.raises(ConvzooError):
        load_init(model, tmp_path / "wide.pt")
    _equal_except(model, before, set())


def test_missing_and_unexpected_keys_reported_or_strict(tmp_path):
    ref = create_model("resnet20", num_classes=10)
    state = dict(ref.state_dict())
    del state["stem.1.running_var"]
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "partial.pt")
    model = create_model("resnet20", num_classes=10)
    report = load_init(model, tmp_path / "partial.pt")
    assert report.missing == ["stem.1.running_var"] and report.unexpected == ["extra.weight"]
    assert "1 missing (kept at init): stem.1.running_var" in report.summary()
    with pytest.raises(ConvzooError, match=r"stem\.1\.running_var is missing from the source"):
        load_init(create_model("resnet20"), tmp_path / "partial.pt", strict=True)


def test_ema_weights_of_a_run(tmp_path):
    out = tmp_path / "runs"
    assert main(["train", "--data", "digits", "--set", "data.image_size=8", "--set",
                 "data.limit=64", "--batch-size", "32", "--epochs", "1", "--out", str(out),
                 "--name", "e", "--set", "optim.ema_decay=0.9",
                 "--set", "train.loggers=[]"]) == 0
    ckpt = ckpt_io.load_checkpoint(out / "e")
    model = create_model("resnet20")
    report = load_init(model, out / "e", weights="ema")
    assert "EMA" in report.source
    _equal_except(model, ckpt["ema"]["module"], set())


# ----------------------------------------------------------------------------- freezing


def _small_for(name: str) -> tuple[nn.Module, int]:
    kwargs = {"image_size": 16} if name in ("cnn", "cnn_bn", "vgg_c") else {}
    if name.startswith("fast"):
        kwargs = {"widths": (8, 16, 16)}
    size = {"googlenet_bn": 32, "vgg16_bn": 32, "resnet18": 16, "resnet50": 16}.get(name, 16)
    return create_model(name, num_classes=4, **kwargs), size


def _norm_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}


# vgg16_bn's last stage would train its 25088x4096 FC (24 s here): linear probe only for it.
# The inner loop freezes a CIFAR ResNet and an ImageNet ResNet; every model runs under `slow`.
FREEZE_CASES = [(n, w) if n in ("resnet20", "resnet18")
                else pytest.param(n, w, marks=pytest.mark.slow)
                for n in list_models() for w in ("backbone", "all_but_last_stage")
                if (n, w) != ("vgg16_bn", "all_but_last_stage")]


@pytest.mark.parametrize("name,what", FREEZE_CASES)
def test_freeze_keeps_frozen_parts_bit_identical(name, what):
    """Three real SGD steps (momentum, weight decay) in train mode: frozen parameters and
    the running statistics of frozen batch norms do not move; the trainable part does."""
    torch.manual_seed(0)
    model, size = _small_for(name)
    frozen = set(freeze(model, what))
    assert frozen and frozen == set(frozen_parameter_names(model, what))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head = head_state_keys(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()  # frozen batch norms must stay in eval mode through this
    x, y = torch.randn(4, 3, size, size), torch.arange(4)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    after = model.state_dict()
    for k in frozen:
        assert torch.equal(after[k], before[k]), f"{k} moved"
    norms = {n: m for n, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._NormBase)}
    frozen_norms = {n for n in norms if {f"{n}.weight", f"{n}.bias"} <= frozen}
    assert frozen_norms or not norms  # (cnn has no batch norm)
    for n in frozen_norms:
        assert not norms[n].training, n
        for stat in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(after[f"{n}.{stat}"], before[f"{n}.{stat}"]), n
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert head & moved  # the head trains
    assert all(m.training for n, m in norms.items() if n not in frozen_norms)
    if what == "all_but_last_stage":  # the last stage trains
        last = set(stage_parameter_names(model)[-1])
        assert last & moved and not last & frozen


def test_freeze_modes_over_the_registry():
    """Which parameters each mode freezes, for every model (no training: meta device)."""
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name, num_classes=7)
        names = [n for n, _ in model.named_parameters()]
        head = head_state_keys(model)
        assert frozen_parameter_names(model, "none") == []
        assert set(frozen_parameter_names(model, "backbone")) == set(names) - head
        stages = stage_parameter_names(model)
        partial = set(frozen_parameter_names(model, "all_but_last_stage"))
        assert partial == {n for s in stages[:-1] for n in s}, name
        assert not partial & (set(stages[-1]) | head)
    with pytest.raises(ConvzooError, match="model.freeze: 'head' is not one of none, backbone"):
        freeze(create_model("resnet20"), "head")


def test_frozen_state_dict_loads_into_a_plain_model_and_survives_deepcopy():
    import copy

    model = create_model("resnet20", num_classes=3)
    freeze(model, "backbone")
    plain = create_model("resnet20", num_classes=3)
    plain.load_state_dict(model.state_dict())  # same keys: convzoo eval needs nothing special
    twin = copy.deepcopy(model)  # what ModelEMA does
    twin.train()
    assert not twin.stem[1].training and twin.fc.training


def test_fast_net_schedule_does_not_unfreeze_the_whitening_bias():
    """set_epoch trains the whitening bias in the first epochs, but not when frozen."""
    model = create_model("fast_net", widths=(8, 16), whiten_bias_epochs=2)
    freeze(model, "backbone")
    model.set_epoch(1)
    assert not model.whiten_bias.requires_grad
    unfrozen = create_model("fast_net", widths=(8, 16), whiten_bias_epochs=2)
    unfrozen.set_epoch(1)
    assert unfrozen.whiten_bias.requires_grad


def test_head_and_backbone_params_split():
    model = create_model("resnet20", shortcut="projection", fc_bn=True)
    head, backbone = head_and_backbone_params(model)
    assert sorted(head) == ["fc.weight", "fc_bn.bias", "fc_bn.weight"]
    assert set(head) | set(backbone) == {n for n, _ in model.named_parameters()}
    assert not set(head) & set(backbone)
    assert all(p is dict(model.named_parameters())[n] for n, p in head.items())
    # an lr rule can use it directly: backbone 10x lower than the head
    opt = torch.optim.SGD([{"params": list(backbone.values()), "lr": 0.01},
                           {"params": list(head.values()), "lr": 0.1}])
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.1]


# ----------------------------------------------------------------------------- weights files


def test_load_weights_file_of_a_run_and_an_export(run_dir, tmp_path):
    from convzoo.data.transforms.preprocess import Preprocessor
    from convzoo.saved import load_model_for_eval

    ckpt = ckpt_io.load_checkpoint(run_dir)
    reference, ref_pre = load_model_for_eval(ckpt, torch.device("cpu"))
    x = torch.randn(3, 3, 8, 8)
    model, meta = load_weights_file(run_dir / "model.safetensors")
    assert meta["model"] == "resnet20" and meta["num_classes"] == 10 and meta["in_chans"] == 3
    assert meta["classes"] == [str(i) for i in range(10)] and not model.training
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    out = tmp_path / "export.safetensors"
    assert main(["export", str(run_dir), "--format", "safetensors", "--out", str(out)]) == 0
    model, meta = load_weights_file(out)
    assert meta["image_shape"] == [3, 8, 8] and meta["epoch"] == ckpt["epoch"]
    pre = Preprocessor.from_state(meta["preprocess"])
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(model(pre(images)), reference(ref_pre(images)), atol=1e-6)


def test_load_weights_file_errors(run_dir, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    with pytest.raises(ConvzooError, match="weights file not found"):
        load_weights_file(tmp_path / "none.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ConvzooError, match="no convzoo metadata.*model.init"):
        load_weights_file(tmp_path / "foreign.safetensors")
    src = run_dir / "model.safetensors"
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    state = load_file(str(src))
    state["fc.weight"] = torch.zeros(10, 65)
    ckpt_io.save_safetensors(state, tmp_path / "bad.safetensors", meta)  # sealed, but wrong
    with pytest.raises(ConvzooError, match=r"fc\.weight has shape \(10, 65\) but resnet20"):
        load_weights_file(tmp_path / "bad.safetensors")
    ckpt_io.save_safetensors(load_file(str(src)), tmp_path / "nometa.safetensors",
                             {**meta, "num_classes": "ten"})
    with pytest.raises(ConvzooError, match="bad convzoo metadata"):
        load_weights_file(tmp_path / "nometa.safetensors")
