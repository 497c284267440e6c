"""Model zoo: registry behaviour, the sources' parameter counts, shapes, gradients, training.

Golden numbers come from the sources (papers, the seeds' printed summaries, torchvision's
published metadata), never from this code.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from sweeps import inner_loop
from torch import nn

from convzoo.cli import main
from convzoo.errors import ConvzooError
from convzoo.models import (
    create_model,
    format_table,
    get_entry,
    list_models,
    model_info,
    register_model,
)
from convzoo.models.info import count_bn_running, count_params

ALL_MODELS = [
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet74",
    "inception_bn_small", "cnn", "cnn_bn", "vgg_c", "googlenet_bn", "resnext29_8x16d",
    "resnet18", "resnet50", "vgg16_bn",
]
# Small inputs each model accepts, to keep CPU tests fast: the CIFAR nets at 8 px (16 for the
# Chainer nets, whose classifier is sized by `image_size`), the 224-px ImageNet nets at 16-32 px.
SMALL_INPUT = {name: 8 for name in ALL_MODELS}
SMALL_INPUT.update({"cnn": 16, "cnn_bn": 16, "vgg_c": 16, "googlenet_bn": 32, "resnet18": 16,
                    "resnet50": 16, "vgg16_bn": 32})
SMALL_KWARGS = {name: {"image_size": 16} for name in ("cnn", "cnn_bn", "vgg_c")}
# The inner loop's models in the per-model sweeps that build and run each network: a CIFAR
# ResNet, a Chainer net, an ImageNet ResNet (the others, seconds each, run under `slow`).
INNER = ("resnet20", "cnn_bn", "resnet18", "fast94")


def _small(name: str, **kwargs) -> nn.Module:
    """`name` built for its small test input."""
    return create_model(name, **SMALL_KWARGS.get(name, {}), **kwargs)


@functools.cache
def _eval_model(name: str) -> nn.Module:
    """One shared eval-mode instance per model for the forward-only tests (7 classes)."""
    torch.manual_seed(0)
    return create_model(name, num_classes=7).eval()


@pytest.fixture(scope="module", autouse=True)
def _free_shared_models():
    """Release the shared instances (vgg16_bn alone holds 550 MB) after this file."""
    yield
    _eval_model.cache_clear()


pytestmark = pytest.mark.usefixtures("one_thread")


def _params(model: nn.Module) -> int:
    return count_params(model)


# --------------------------------------------------------------------------- registry


def test_registry_lists_every_model():
    assert set(ALL_MODELS) <= set(list_models())
    entry = get_entry("resnet20")
    assert entry.name == "resnet20" and entry.input_size == (3, 32, 32)
    assert entry.source and callable(entry.factory)


def test_unknown_model_names_close_matches():
    with pytest.raises(ConvzooError, match="resnet20"):
        create_model("resnet2O")
    with pytest.raises(ConvzooError, match="available"):
        create_model("zzzz")


def test_unexpected_keyword_names_keyword_and_model():
    with pytest.raises(ConvzooError, match=r"resnet20.*'widthh'|'widthh'.*resnet20"):
        create_model("resnet20", widthh=2)
    with pytest.raises(ConvzooError, match=r"'conv_bias'"):
        create_model("cnn", conv_bias=False)
    with pytest.raises(ConvzooError, match=r"resnet18.*'depth'"):  # forwarded to torchvision
        create_model("resnet18", depth=3)


def test_bad_keyword_value_is_a_user_error():
    with pytest.raises(ConvzooError, match=r"resnet20.*shortcut"):
        create_model("resnet20", shortcut="C")
    with pytest.raises(ConvzooError, match=r"googlenet_bn.*stem"):
        create_model("googlenet_bn", stem="tiny")


def test_duplicate_registration_raises():
    with pytest.raises(ConvzooError, match="'resnet20' is already registered"):

        @register_model(source="x", input_size=(3, 32, 32))
        def resnet20(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
            return nn.Linear(1, 1)


# --------------------------------------------------------------------------- golden counts


@pytest.mark.parametrize(
    "name,expected",
    # He et al. 2015, option A, 10 classes: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M
    [("resnet20", 269_722), ("resnet32", 464_154), ("resnet44", 658_586),
     ("resnet56", 853_018), ("resnet110", 1_727_962)],
)
def test_resnet_option_a_param_counts(name, expected):
    assert _params(create_model(name, num_classes=10)) == expected


def test_resnext_matches_keras_summary():
    model = create_model("resnext29_8x16d", num_classes=10)
    # Keras: Trainable params 5,646,656; Non-trainable 25,216; Total 5,671,872
    assert _params(model) == 5_646_656
    assert count_bn_running(model) == 25_216
    assert _params(model) + count_bn_running(model) == 5_671_872
    grouped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 8]
    assert len(grouped) == 9  # one grouped 3x3 per block, groups=, not slices
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))


def test_googlenet_bn_matches_mxnet_size():
    model = create_model("googlenet_bn", num_classes=1000)
    assert _params(model) == 7_013_112
    assert count_bn_running(model) == 14_560
    megabytes = (_params(model) + count_bn_running(model)) * 4 / 1e6
    assert round(megabytes, 1) == 28.1  # seed D: "only 28.12MB"
    # conv_bias=False drops one bias per BN channel (14,560 running values / 2)
    assert _params(create_model("googlenet_bn", num_classes=1000, conv_bias=False)) == (
        7_013_112 - 14_560 // 2
    )


def test_inception_bn_small_matches_mxnet():
    model = create_model("inception_bn_small", num_classes=100)
    assert _params(model) == 10_205_348
    assert count_bn_running(model) == 19_392
    no_bias = create_model("inception_bn_small", num_classes=100, conv_bias=False)
    assert _params(no_bias) == 10_205_348 - 19_392 // 2
    assert all(m.bias is None for m in no_bias.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", ["cnn_bn", "vgg_c", "resnet74"])
def test_conv_bias_keyword_restores_seed_structure(name):
    with_bias = create_model(name, conv_bias=True)
    without = create_model(name, conv_bias=False)
    bn_channels = count_bn_running(with_bias) // 2
    # every conv is followed by BN in these nets, so the redundant biases number the BN channels
    assert _params(with_bias) - _params(without) == bn_channels
    assert all(m.bias is not None for m in with_bias.modules() if isinstance(m, nn.Conv2d))


def test_torchvision_wrappers_match_torchvision_metadata():
    import torchvision.models as tvm

    for name, weights in [
        ("resnet18", tvm.ResNet18_Weights.IMAGENET1K_V1),
        ("resnet50", tvm.ResNet50_Weights.IMAGENET1K_V1),
        ("vgg16_bn", tvm.VGG16_BN_Weights.IMAGENET1K_V1),
    ]:
        info = model_info(name)
        assert info["params"] == weights.meta["num_params"]
        # torchvision's _ops counts multiply-adds in GFLOPS; FlopCounterMode counts 2 per MAC
        assert info["flops"] / 2e9 == pytest.approx(weights.meta["_ops"], rel=0.01)


# --------------------------------------------------------------------------- structure


def test_neon_variant_projection_and_fc_bn():
    torch.manual_seed(0)
    model = create_model("resnet20", shortcut="projection", fc_bn=True)
    # option A plus two 1x1 projections (16->32, 32->64), fc without bias, BN1d(10) on logits
    assert _params(model) == 269_722 + 16 * 32 + 32 * 64 - 10 + 2 * 10
    assert isinstance(model.fc_bn, nn.BatchNorm1d) and model.fc.bias is None
    # identity-initialised projection == parameter-free option A shortcut at init
    option_a = create_model("resnet20")
    x = torch.randn(2, 16, 32, 32)
    for blk_p, blk_a in zip(model.blocks, option_a.blocks):
        if not isinstance(blk_p.shortcut, nn.Identity):
            assert torch.equal(blk_p.shortcut(x), blk_a.shortcut(x))
            x = torch.randn(2, blk_p.conv2.out_channels, 32, 32)


def test_chainer_shortcut_pads_zero_channels_in_front():
    model = create_model("resnet74")
    block = model.blocks[12]  # first block of stage 2: 16 -> 32 channels, stride 2
    x = torch.randn(1, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (1, 32, 4, 4)
    assert torch.equal(out[:, :16], torch.zeros(1, 16, 4, 4))
    assert torch.equal(out[:, 16:], x[:, :, ::2, ::2])


def test_stochastic_depth_schedule_and_test_time_scaling():
    model = create_model("resnet74", drop_path=0.5)
    probs = [b.drop_prob for b in model.blocks]
    assert len(probs) == 36
    assert probs[0] == 0.0 and probs[-1] == pytest.approx(0.5)
    assert probs[12] == 0.0 and probs[24] == 0.0  # downsampling blocks are never skipped
    rest = [p for i, p in enumerate(probs) if i not in (12, 24)]
    steps = [b - a for a, b in zip(rest, rest[1:])]
    assert all(s == pytest.approx(0.5 / 33) for s in steps)  # linear, 34 blocks
    # eval: deterministic, branch scaled by survival probability
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), model(x))
    block = model.blocks[-1]
    h = torch.randn(1, 64, 4, 4)
    branch = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(h)))))
    assert torch.allclose(block(h), F.relu(0.5 * branch + h), atol=1e-6)
    # train: a skipped block returns its input unchanged
    block.train()
    block.drop_prob = 0.999999
    torch.manual_seed(0)
    assert torch.equal(block(h.relu()), h.relu())


def test_inception_bn_small_rrelu_and_ceil_pooling():
    model = create_model("inception_bn_small", num_classes=100)
    rrelu = [m for m in model.modules() if isinstance(m, nn.RReLU)]
    assert rrelu and all((m.lower, m.upper) == (0.125, 0.334) for m in rrelu)
    sizes = []
    for block in model.features:
        block.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    model.eval()
    x = torch.randn(1, 3, 28, 28)
    out = model(x)
    assert sizes == [28, 28, 14, 14, 14, 14, 14, 7, 7, 7]
    assert torch.equal(out, model(x))  # RReLU uses its fixed mean slope in eval
    model.train()
    torch.manual_seed(1)
    a = model(x)
    b = model(x)
    assert not torch.equal(a, b)  # random slopes in training


def test_resnext_keras_same_padding():
    model = create_model("resnext29_8x16d")
    conv = model.blocks[3].conv2  # stride-2 grouped conv of set 2
    assert conv.stride == (2, 2) and conv.groups == 8
    x = torch.randn(1, 256, 32, 32)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2, groups=8)
    assert torch.allclose(conv(x), expected, atol=1e-5)
    assert conv(x).shape[-1] == 16


def test_googlenet_small_stem_runs_on_cifar():
    model = create_model("googlenet_bn", num_classes=10, stem="small").eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.4


# --------------------------------------------------------------------------- every model


@pytest.mark.parametrize("name", inner_loop(ALL_MODELS, INNER[:3]))
def test_output_shape_at_default_input(name):
    entry = get_entry(name)
    model = _eval_model(name)
    with torch.no_grad():
        out = model(torch.randn(1, *entry.input_size))
    assert out.shape == (1, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", inner_loop(ALL_MODELS, INNER[:3]))
def test_forward_backward_every_param_gets_grad(name):
    torch.manual_seed(0)
    size = SMALL_INPUT[name]
    model = _small(name, num_classes=5, in_chans=1)
    x = torch.randn(2, 1, size, size)
    out = model(x)
    assert out.shape == (2, 5)
    F.cross_entropy(out, torch.tensor([0, 3])).backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}.{pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_channels_last_bf16_autocast(name):
    size = SMALL_INPUT[name] if name not in SMALL_KWARGS else 32  # Chainer nets: 32 px default
    model = _eval_model(name).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, size, size).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", inner_loop(ALL_MODELS, INNER[:3]))
def test_trains_on_tiny_data(name):
    """A few Adam steps on one tiny batch must lower the training loss a lot."""
    torch.manual_seed(0)
    size = SMALL_INPUT[name]
    model = _small(name, num_classes=4)
    for m in model.modules():  # dropout off: with 8 samples it makes the loss curve pure noise
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    x = torch.randn(8, 3, size, size)
    y = torch.arange(8) % 4
    lr = 1e-4 if name == "vgg16_bn" else 3e-4  # vgg16_bn's 25088x4096 FC on 8 samples: 1e-4
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    model.train()
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-3:]) < 0.5 * losses[0], losses


# --------------------------------------------------------------------------- info


def test_model_info_and_table():
    info = model_info("resnet20")
    assert info["params"] == 269_722
    assert info["input_size"] == [3, 32, 32]
    # stem BN + 2 BNs in each of 3 blocks per stage; mean and var per channel
    assert info["bn_running"] == 2 * (16 + 3 * 2 * (16 + 32 + 64))
    assert set(info) >= {"name", "source", "params", "bn_running", "flops", "input_size",
                         "description"}
    # 100 classes changes only the classifier: 64*90 weights + 90 biases more
    assert model_info("resnet20", num_classes=100)["params"] == 269_722 + 90 * 65
    assert model_info("googlenet_bn")["params"] == 7_013_112  # defaults to its 1000 classes
    rows = [model_info(n) for n in ("resnet20", "googlenet_bn")]
    lines = format_table(rows).splitlines()
    assert len(lines) == 3 and "resnet20" in lines[1] and "269,722" in lines[1]
    # columns aligned: the source column starts at the same offset on every line
    starts = [lines[0].index("source")] + [ln.index(r["source"]) for ln, r in zip(lines[1:], rows)]
    assert len(set(starts)) == 1
    assert lines[1].endswith("3x32x32") and lines[2].endswith("3x224x224")


# --------------------------------------------------------------------------- classifier interface

REGISTRY = list_models()  # every zoo model, fast family included


def _input_size(name: str) -> int:
    return 16 if name.startswith("fast") else SMALL_INPUT.get(name, 8)


def _head_linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.get_classifier().modules() if isinstance(m, nn.Linear)][-1]


@pytest.mark.parametrize("name", inner_loop(REGISTRY, INNER))
def test_get_and_reset_classifier(name):
    """get_classifier() is the module producing the logits; reset_classifier(k) gives k
    outputs and leaves every other tensor as it was; reset_classifier(0) gives the features."""
    torch.manual_seed(0)
    model = _small(name, num_classes=5).eval()
    size = _input_size(name)
    x = torch.randn(2, 3, size, size)
    head = model.get_classifier()
    assert _head_linear(model).out_features == 5
    head_ids = {id(p) for p in head.parameters()}
    assert head_ids and head_ids <= {id(p) for p in model.parameters()}  # part of the model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        assert model(x).shape == (2, 5)
    model.reset_classifier(3)
    assert _head_linear(model).out_features == 3 and model.get_classifier() is not head
    after = model.state_dict()
    changed = {k for k in before if k not in after or after[k].shape != before[k].shape}
    assert changed and all(k in after for k in changed)  # the head's keys, reshaped
    assert all(torch.equal(after[k], v) for k, v in before.items() if k not in changed)
    with torch.no_grad():
        assert model(x).shape == (2, 3)
        model.reset_classifier(0)
        features = model(x)
    assert features.shape == (2, model.num_features) and torch.isfinite(features).all()
    assert not any(isinstance(m, nn.Linear) for m in model.get_classifier().modules())


@pytest.mark.parametrize("name", inner_loop(REGISTRY, INNER))
def test_reset_classifier_initialises_like_the_constructor(name):
    """A reset head of 1000 classes has the weight spread (and bias rule) of a head built with
    1000 classes: the family's own initialisation, not PyTorch's default."""
    torch.manual_seed(0)
    built = _head_linear(_small(name, num_classes=1000))
    model = _small(name, num_classes=2)
    model.reset_classifier(1000)
    reset = _head_linear(model)
    assert reset.weight.shape == built.weight.shape
    # >= 64k values each: the std estimates agree to well under 5% when the rule is the same
    ratio = reset.weight.std().item() / built.weight.std().item()
    assert ratio == pytest.approx(1.0, abs=0.05), ratio
    assert (reset.bias is None) == (built.bias is None)
    if built.bias is not None:
        assert torch.equal(reset.bias == 0, built.bias == 0)


@pytest.mark.parametrize("name", REGISTRY)
def test_stage_names_partition_the_backbone(name):
    """Stages (stem first) are disjoint, non-empty, name real parameters and exclude the head."""
    from convzoo.models.heads import head_state_keys, stage_parameter_names

    with torch.device("meta"):
        model = create_model(name, num_classes=7)
    stages = stage_parameter_names(model)
    names = [n for n, _ in model.named_parameters()]
    flat = [n for stage in stages for n in stage]
    assert len(stages) >= 3 and all(stages)
    assert len(flat) == len(set(flat)) and set(flat) <= set(names)
    assert not set(flat) & head_state_keys(model)
    # stages follow forward order: a stage's parameters come after the previous stage's
    order = {n: i for i, n in enumerate(names)}
    assert all(max(order[n] for n in a) < min(order[n] for n in b)
               for a, b in zip(stages, stages[1:]))
    assert flat[0] == names[0]  # the first layer is in the stem


def test_fc_bn_head_is_linear_plus_logit_norm():
    model = create_model("resnet20", shortcut="projection", fc_bn=True)
    head = model.get_classifier()
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d]
    model.reset_classifier(4)
    assert model.fc.out_features == 4 and model.fc_bn.num_features == 4
    assert model.fc.bias is None  # neon's affine-with-BN has no bias, after a reset too
    model.reset_classifier(0)
    model.reset_classifier(6)  # the logit norm comes back with a head
    assert isinstance(model.fc_bn, nn.BatchNorm1d) and model.fc_bn.num_features == 6


def test_listings_fit_a_terminal_and_wide_shows_every_column(capsys):
    """`models` and `recipes` fit 100 columns (long sources shortened with "..."); --wide gives
    every column in full (and --json everything)."""
    for args in (["models"], ["recipes"]):
        assert main(args) == 0
        lines = capsys.readouterr().out.splitlines()
        assert max(len(line) for line in lines) <= 100, args
    assert main(["models"]) == 0
    narrow = capsys.readouterr().out
    assert main(["models", "--wide"]) == 0
    wide = capsys.readouterr().out
    assert "bn_running" in wide.splitlines()[0] and "bn_running" not in narrow.splitlines()[0]
    full = "convzoo fast family (after airbench, arXiv 2404.00498)"
    assert full in wide and full not in narrow and "convzoo fast family (after" in narrow


@pytest.mark.parametrize(("model", "size"), [("cnn_bn", 8), ("fast94", 8), ("vgg_c", 16)])
def test_an_input_a_model_cannot_take_is_one_line_before_any_work(model, size, tmp_path, capsys):
    """It was an internal error at the first step (a fixed classifier after flattening, or
    pooling below one pixel); now a meta-device forward refuses it before the run exists."""
    code = main(["train", "--data", "digits", "--model", model, "--set",
                 f"data.image_size={size}", "--set", "data.limit=100", "--batch-size", "16",
                 "--epochs", "1", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"model {model} cannot take 3x{size}x{size} images" in err[0]
    assert "native input is 3x32x32" in err[0] and not (tmp_path / "runs").exists()
