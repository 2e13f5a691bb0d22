"""Networks, checkpoints and geometry (evstream.nn).

The registry drives the generic test: every registered architecture must have an entry in CASES
(a config and an input builder) and is run forward and backward on tiny inputs (shapes, finite
values, every parameter gets a finite gradient). ResNet-50/101 appear only in the parameter-count
test and one small forward. torchvision compatibility is checked against a state dict written in
torchvision's key layout (fc included, num_batches_tracked absent as in old files); the parameter
counts are torchvision's published ones minus the fc layer.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from evstream.errors import EvstreamError
from evstream.nn import checkpoint as ckpt_mod
from evstream.nn import (build_model, complete_config, coverage_mask, default_config,
                         list_models, load_checkpoint, load_model, load_torchvision_weights,
                         network_input_hw, resolve_model, save_checkpoint, to_network, to_sensor)
from evstream.nn.bmr import A2E, E2A
from evstream.nn.resnet import ResNet, adapt_stem

torch.set_num_threads(1)

TINY_SEG = {"arch": "deeplabv3plus", "backbone": "tiny", "in_channels": 5, "num_classes": 6,
            "output_stride": 16}
TINY_CLS = {"arch": "classifier", "backbone": "tiny", "in_channels": 5, "num_classes": 7}


def _feat_input(n=2, c=16, hw=16):
    return (torch.randn(n, c, hw, hw),), (n, 1, 4 * hw, 4 * hw)


# arch -> (config, inputs builder -> (args, expected output shape))
CASES = {
    "deeplabv3plus": [(TINY_SEG, lambda: ((torch.randn(2, 5, 64, 64),), (2, 6, 64, 64))),
                      ({**TINY_SEG, "output_stride": 8, "in_channels": 1},
                       lambda: ((torch.randn(2, 1, 48, 40),), (2, 6, 48, 40)))],
    "classifier": [(TINY_CLS, lambda: ((torch.randn(2, 5, 64, 64),), (2, 7))),
                   ({**TINY_CLS, "in_channels": 3, "output_stride": 16, "dropout": 0.2},
                    lambda: ((torch.randn(2, 3, 40, 56),), (2, 7)))],
    "e2a": [({"arch": "e2a", "in_channels": 16, "width": 16}, _feat_input),
            ({"arch": "e2a", "in_channels": 16, "low_channels": 8, "out_channels": 3, "width": 16},
             lambda: ((torch.randn(2, 16, 4, 4), torch.randn(2, 8, 16, 16), (64, 60)),
                      (2, 3, 64, 60)))],
    "a2e": [({"arch": "a2e", "in_channels": 1, "out_channels": 5, "width": 8},
             lambda: ((torch.randn(2, 1, 33, 47),), (2, 5, 33, 47)))],
}
PARAMS = [(arch, i) for arch in sorted(CASES) for i in range(len(CASES[arch]))]


def test_every_registered_model_has_a_case():
    assert sorted(CASES) == list_models()
    assert {"deeplabv3plus", "classifier", "e2a", "a2e"} <= set(list_models())


@pytest.mark.parametrize("arch,i", PARAMS, ids=[f"{a}-{i}" for a, i in PARAMS])
def test_forward_backward(arch, i):
    cfg, make = CASES[arch][i]
    torch.manual_seed(i)
    model = build_model(cfg)
    args, shape = make()
    out = model(*args)
    assert tuple(out.shape) == shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())
    if arch == "e2a":
        assert out.abs().max() < 1          # tanh
    model.eval()
    with torch.inference_mode():
        again = model(*args)
    assert torch.isfinite(again).all() and tuple(again.shape) == shape


def test_forward_features_contract():
    torch.manual_seed(0)
    seg = build_model(TINY_SEG).eval()
    x = torch.randn(2, 5, 64, 64)
    with torch.no_grad():
        f = seg.forward_features(x)
        assert torch.equal(f["logits"], seg(x))
    assert tuple(f["feat"].shape) == (2, seg.feat_channels, 16, 16)
    assert tuple(f["low"].shape) == (2, seg.low_channels, 16, 16)
    assert tuple(f["aspp"].shape) == (2, seg.feat_channels, 4, 4)
    cls = build_model(TINY_CLS).eval()
    with torch.inference_mode():
        g = cls.forward_features(x)
        assert torch.equal(g["logits"], cls(x))
    assert set(g) == {"feat", "logits"}
    assert tuple(g["feat"].shape) == (2, cls.feat_channels, 2, 2)   # 64 / 32
    # E2A on the student's features reconstructs an image of the input size
    e2a = E2A(seg.feat_channels, 1, low_channels=seg.low_channels, width=16)
    img = e2a(f["feat"], f["low"], size=x.shape[2:])
    assert tuple(img.shape) == (2, 1, 64, 64) and img.abs().max() < 1
    a2e = A2E(1, 5, width=8)
    assert tuple(a2e(img).shape) == (2, 5, 64, 64)


@pytest.mark.parametrize("os_", [8, 16, 32])
def test_output_stride(os_):
    bb = ResNet("tiny", 5, os_)
    stages = bb.forward_stages(torch.randn(1, 5, 64, 64))
    sizes = {k: v.shape[-1] for k, v in stages.items()}
    expect = {32: (16, 8, 4, 2), 16: (16, 8, 4, 4), 8: (16, 8, 8, 8)}[os_]
    assert tuple(sizes[f"layer{i}"] for i in (1, 2, 3, 4)) == expect
    if os_ != 32:
        seg = build_model({**TINY_SEG, "output_stride": os_})
        assert seg.aspp.rates == ((6, 12, 18) if os_ == 16 else (12, 24, 36))
        with torch.inference_mode():
            f = seg.eval().forward_features(torch.randn(1, 5, 64, 64))
        assert f["aspp"].shape[-1] == 64 // os_ and f["logits"].shape[-2:] == (64, 64)


def test_dilated_layers_match_torchvision_rule():
    bb = ResNet("resnet18", 5, 8)
    # layer3: first block keeps dilation 1, the rest 2; layer4: first 2, rest 4; no strides left
    assert bb.layer3[0].conv1.dilation == (1, 1) and bb.layer3[1].conv1.dilation == (2, 2)
    assert bb.layer4[0].conv1.dilation == (2, 2) and bb.layer4[1].conv2.dilation == (4, 4)
    assert bb.layer3[0].conv1.stride == (1, 1) and bb.layer4[0].downsample[0].stride == (1, 1)


def test_resnet18_deeplab_one_forward():
    torch.manual_seed(0)
    model = build_model(default_config()).eval()
    with torch.inference_mode():
        f = model.forward_features(torch.randn(1, 5, 64, 64))
    assert tuple(f["logits"].shape) == (1, 6, 64, 64) and torch.isfinite(f["logits"]).all()
    assert tuple(f["feat"].shape) == (1, 256, 16, 16) and tuple(f["aspp"].shape) == (1, 256, 4, 4)


# torchvision's published parameter counts (ImageNet models) minus fc (in * 1000 + 1000)
@pytest.mark.parametrize("name,total,fc_in", [("resnet18", 11_689_512, 512),
                                              ("resnet34", 21_797_672, 512),
                                              ("resnet50", 25_557_032, 2048),
                                              ("resnet101", 44_549_160, 2048)])
def test_param_counts_match_torchvision(name, total, fc_in):
    bb = ResNet(name, 3, 32)
    assert sum(p.numel() for p in bb.parameters()) == total - (fc_in * 1000 + 1000)
    assert bb.out_channels == fc_in
    if name == "resnet50":
        assert "layer1.0.downsample.0.weight" in bb.state_dict()
        model = build_model({**default_config(), "backbone": "resnet50"}).eval()
        with torch.inference_mode():
            out = model(torch.randn(1, 5, 32, 32))
        assert tuple(out.shape) == (1, 6, 32, 32) and torch.isfinite(out).all()


def _torchvision_file(tmp_path, name="resnet18", fc_in=512, old=True) -> tuple[Path, dict]:
    """A state dict in torchvision's layout: backbone keys + fc; old files lack num_batches_tracked."""
    torch.manual_seed(1)
    sd = {k: (torch.randn_like(v) if v.is_floating_point() else v)
          for k, v in ResNet(name, 3, 32).state_dict().items()
          if not (old and k.endswith("num_batches_tracked"))}
    sd["fc.weight"] = torch.randn(1000, fc_in)
    sd["fc.bias"] = torch.randn(1000)
    path = tmp_path / f"{name}-tv.pth"
    torch.save(sd, path)
    return path, sd


def test_torchvision_weights_load(tmp_path):
    path, sd = _torchvision_file(tmp_path)
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.running_var", "layer4.1.bn2.bias"} <= set(sd)
    rgb = ResNet("resnet18", 3, 32)
    assert load_torchvision_weights(rgb, path) == ["fc.bias", "fc.weight"]
    for k, v in rgb.state_dict().items():
        if k in sd:
            assert torch.equal(v, sd[k]), k
    ev = ResNet("resnet18", 5, 16)          # 5 voxel bins, dilated: same parameter shapes
    load_torchvision_weights(ev, path)
    w = ev.state_dict()["conv1.weight"]
    assert w.shape == (64, 5, 7, 7)
    assert torch.allclose(w, sd["conv1.weight"].mean(1, keepdim=True).repeat(1, 5, 1, 1) * 3 / 5)
    assert torch.equal(ev.state_dict()["layer4.1.conv2.weight"], sd["layer4.1.conv2.weight"])
    # the adapted stem answers a constant input as the RGB stem answers a grey image
    rgb_w = sd["conv1.weight"]
    grey = torch.nn.functional.conv2d(torch.full((1, 3, 9, 9), 0.7), rgb_w)
    const = torch.nn.functional.conv2d(torch.full((1, 5, 9, 9), 0.7), adapt_stem(rgb_w, 5))
    assert torch.allclose(grey, const, atol=1e-5)
    # a new-style file (with num_batches_tracked) loads too, and into a DeepLab's backbone
    path2, _ = _torchvision_file(tmp_path, old=False)
    model = build_model(default_config())
    load_torchvision_weights(model.backbone, path2)


def test_torchvision_weights_errors(tmp_path):
    path, sd = _torchvision_file(tmp_path)

    def fails(p, target=None, match=""):
        with pytest.raises(EvstreamError) as info:
            load_torchvision_weights(target or ResNet("resnet18", 5, 16), p)
        msg = str(info.value)
        assert "\n" not in msg and str(p) in msg and match in msg
        return msg

    renamed = dict(sd)
    renamed["layer1.0.convX.weight"] = renamed.pop("layer1.0.conv1.weight")
    torch.save(renamed, tmp_path / "renamed.pth")
    fails(tmp_path / "renamed.pth", match="1 missing, e.g. layer1.0.conv1.weight")
    shaped = dict(sd)
    shaped["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    torch.save(shaped, tmp_path / "shaped.pth")
    fails(tmp_path / "shaped.pth", match="layer2.0.conv1.weight [128, 64, 5, 5] vs [128, 64, 3, 3]")
    fails(path, target=ResNet("resnet34", 5, 16), match="missing")    # resnet18 file, resnet34 model
    fails(tmp_path / "absent.pth", match="no such")
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage" * 10)
    fails(tmp_path / "junk.pth", match="not a readable torch file")


def _tiny_trained_like(seed=3):
    torch.manual_seed(seed)
    model = build_model(TINY_SEG)
    model.train()
    with torch.no_grad():                   # move BN running stats away from their init
        model(torch.randn(4, 5, 32, 32))
    return model.eval()


def test_checkpoint_round_trip(tmp_path):
    model = _tiny_trained_like()
    cfg = default_config(name="tiny-test", backbone="tiny", trained=True, metrics={"miou": 0.5},
                         input={"crop": [0, 0, 200, 346]})
    assert cfg["input"] == {"height": 260, "width": 346, "crop": [0, 0, 200, 346], "resize": None,
                            "pad_multiple": 16}
    path = tmp_path / "run" / "model.pt"
    save_checkpoint(path, model.state_dict(), cfg, extra={"epoch": 3, "opt": {"lr": torch.tensor(0.1)}})
    assert sorted(os.listdir(path.parent)) == ["model.pt"]
    raw = load_checkpoint(path)
    assert raw["format"] == "evstream-model" and raw["version"] == 1 and raw["config"] == cfg
    assert raw["extra"]["epoch"] == 3 and torch.equal(raw["extra"]["opt"]["lr"], torch.tensor(0.1))
    x = torch.randn(2, 5, 64, 64)
    with torch.inference_mode():
        want = model(x)
    for spec in (path, path.parent, str(path)):
        loaded, lcfg = load_model(spec)
        assert not loaded.training and lcfg == complete_config(cfg) and lcfg["trained"] is True
        with torch.inference_mode():
            assert torch.equal(loaded(x), want)


def test_save_is_atomic(tmp_path, monkeypatch):
    model = _tiny_trained_like()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model.state_dict(), {**TINY_SEG, "trained": True})
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _tiny_trained_like(seed=9).state_dict(), TINY_SEG)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "new.pt", model.state_dict(), TINY_SEG)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]      # no temp file, no partial new.pt
    assert path.read_bytes() == before
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path / "x.pt", model.state_dict(), {**TINY_SEG, "bad": object()})
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


class Payload:
    """Unpickling this would create a file: proof that the loader ran foreign code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _one_line_error(fn, *args, match=""):
    with pytest.raises(EvstreamError) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg and match in msg, msg
    return msg


def test_load_errors(tmp_path):
    p = tmp_path / "absent.pt"
    assert str(p) in _one_line_error(load_checkpoint, p, match="no such")
    _one_line_error(load_checkpoint, tmp_path, match="directory")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(300))
    assert str(junk) in _one_line_error(load_checkpoint, junk, match="not a readable checkpoint")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    _one_line_error(load_model, empty, match="not a readable checkpoint")
    bare = tmp_path / "bare.pt"
    torch.save(build_model(TINY_SEG).state_dict(), bare)
    _one_line_error(load_model, bare, match="not an evstream model checkpoint (holds a bare state dict")
    listed = tmp_path / "list.pt"
    torch.save([1, 2], listed)
    _one_line_error(load_checkpoint, listed, match="holds a list")
    newer = tmp_path / "newer.pt"
    torch.save({"format": "evstream-model", "version": 2, "config": {}, "state_dict": {}}, newer)
    _one_line_error(load_checkpoint, newer, match="version 2 is newer")
    # weights of another architecture under a deeplab config
    other = tmp_path / "other.pt"
    save_checkpoint(other, build_model(TINY_CLS).state_dict(), TINY_SEG)
    msg = _one_line_error(load_model, other, match="weights do not fit its config (deeplabv3plus, tiny)")
    assert str(other) in msg and "missing" in msg and "unexpected" in msg
    # same arch, other width
    wide = tmp_path / "wide.pt"
    save_checkpoint(wide, build_model({**TINY_SEG, "num_classes": 3}).state_dict(), TINY_SEG)
    _one_line_error(load_model, wide, match="classifier.weight [3, 32, 1, 1] vs [6, 32, 1, 1]")
    # a config naming an unknown architecture
    alien = tmp_path / "alien.pt"
    save_checkpoint(alien, {}, {**TINY_SEG, "arch": "unet9000"})
    _one_line_error(load_model, alien, match=f"{alien}: model config: unknown arch 'unet9000' (known: a2e")


def test_weights_only_refuses_python_objects(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "evstream-model", "version": 1, "config": dict(TINY_SEG),
                "state_dict": {}, "extra": {"x": Payload(marker)}}, evil)
    _one_line_error(load_checkpoint, evil, match="refused: holds Python objects other than tensors "
                                                 "and plain containers (Unsupported global")
    _one_line_error(load_model, evil, match="refused")
    assert not marker.exists()


def test_resolve_model(tmp_path, monkeypatch):
    models = tmp_path / "models"
    (models / "ddd17-r18").mkdir(parents=True)
    (models / "ddd17-r18" / "model.pt").write_bytes(b"x")
    (tmp_path / "emptydir").mkdir()
    monkeypatch.setattr(ckpt_mod, "MODELS_DIR", models)
    assert resolve_model("ddd17-r18") == models / "ddd17-r18" / "model.pt"
    assert resolve_model(models / "ddd17-r18") == models / "ddd17-r18" / "model.pt"
    assert resolve_model(models / "ddd17-r18" / "model.pt") == models / "ddd17-r18" / "model.pt"
    _one_line_error(resolve_model, "nope", match="known: ddd17-r18, untrained")
    _one_line_error(resolve_model, tmp_path / "emptydir", match="no model.pt")
    _one_line_error(resolve_model, tmp_path / "x" / "m.pt", match="no such checkpoint file")
    _one_line_error(resolve_model, "untrained", match="no checkpoint file")
    assert ckpt_mod.REPO_ROOT == Path(__file__).resolve().parents[1]


def test_untrained_model():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, cfg = load_model("untrained")
    assert torch.equal(torch.rand(3), expected_next)           # caller's RNG untouched
    b, _ = load_model("untrained")
    assert cfg["trained"] is False and cfg["arch"] == "deeplabv3plus" and cfg["backbone"] == "resnet18"
    assert cfg["classes"] == ["flat", "background", "object", "vegetation", "human", "vehicle"]
    assert len(cfg["colors"]) == 6 and cfg["representation"] == {"name": "voxel", "num_bins": 5,
                                                                   "normalize": True}
    assert not a.training
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_build_model_errors():
    _one_line_error(build_model, {"arch": "vit"}, match="unknown arch 'vit' (known: a2e, classifier, "
                                                        "deeplabv3plus, e2a)")
    _one_line_error(build_model, {**TINY_SEG, "backbone": "resnet9"},
                    match="unknown backbone 'resnet9' (known: resnet101, resnet18")
    _one_line_error(build_model, {**TINY_SEG, "output_stride": 32}, match="output_stride must be one of 8, 16")
    _one_line_error(build_model, {k: v for k, v in TINY_SEG.items() if k != "num_classes"},
                    match="missing 'num_classes'")
    _one_line_error(build_model, {**TINY_CLS, "in_channels": 0}, match="in_channels must be an integer >= 1")
    _one_line_error(build_model, "deeplab", match="must be a dict")
    _one_line_error(complete_config, {**TINY_SEG, "classes": ["a"]}, match="1 class names for num_classes 6")
    cfg = complete_config(TINY_CLS)
    assert cfg["task"] == "classification" and len(cfg["colors"]) == 7 and cfg["trained"] is False


# --- geometry -------------------------------------------------------------------------------

SENSOR = (26, 35)   # (H, W), small and not a multiple of anything


def test_geometry_pad_only_round_trip():
    geo = {"crop": None, "resize": None, "pad_multiple": 16}
    x = np.random.default_rng(0).standard_normal((3, *SENSOR)).astype(np.float32)
    keep = x.copy()
    net = to_network(x, geo)
    assert tuple(net.shape) == (1, 3, 32, 48) == (1, 3, *network_input_hw(geo, SENSOR))
    assert np.array_equal(net[0, :, :26, :35].numpy(), x)
    assert not net[:, :, 26:].any() and not net[:, :, :, 35:].any()
    back = to_sensor(net, geo, SENSOR)
    net += 1                                                       # never a view of the input
    assert np.array_equal(x, keep)
    assert tuple(back.shape) == (1, 3, *SENSOR) and torch.equal(back[0], torch.from_numpy(x))
    assert coverage_mask(geo, SENSOR).all()
    # a float64 / integer input becomes float32; a batch stays a batch
    assert to_network(np.ones((2, 1, *SENSOR)), geo).dtype == torch.float32
    assert tuple(to_network(torch.zeros(4, 2, *SENSOR, dtype=torch.int16), geo).shape) == (4, 2, 32, 48)


def test_geometry_crop_round_trip():
    geo = {"crop": [3, 4, 20, 30], "resize": None, "pad_multiple": 8}
    x = torch.randn(2, 5, *SENSOR)
    net = to_network(x, geo)
    assert tuple(net.shape) == (2, 5, 24, 32)
    assert torch.equal(net[:, :, :20, :30], x[:, :, 3:23, 4:34])
    back = to_sensor(net, geo, SENSOR)
    mask = torch.from_numpy(coverage_mask(geo, SENSOR))
    assert int(mask.sum()) == 600 and bool(mask[3, 4]) and not bool(mask[2, 4]) and not bool(mask[3, 34])
    assert torch.equal(back[:, :, mask], x[:, :, mask]) and not back[:, :, ~mask].any()
    assert (to_sensor(net, geo, SENSOR, fill=-1.0)[:, :, ~mask] == -1).all()
    labels = torch.randint(0, 6, (2, *SENSOR), dtype=torch.uint8)
    lnet = to_network(labels, geo, labels=True)
    assert lnet.dtype == torch.uint8 and tuple(lnet.shape) == (2, 24, 32)
    assert (lnet[:, 20:] == 255).all() and (lnet[:, :, 30:] == 255).all()
    lback = to_sensor(lnet, geo, SENSOR, labels=True)
    assert torch.equal(lback[:, mask], labels[:, mask]) and (lback[:, ~mask] == 255).all()
    # DDD17's crop on the full sensor
    ddd = default_config(input={"crop": [0, 0, 200, 346]})["input"]
    assert network_input_hw(ddd, (260, 346)) == (208, 352)


def test_geometry_resize_round_trip():
    geo = {"crop": [2, 0, 24, 32], "resize": [12, 16], "pad_multiple": 16}
    assert network_input_hw(geo, SENSOR) == (16, 16)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, SENSOR[0]), torch.linspace(0, 1, SENSOR[1]), indexing="ij")
    smooth = (yy + 2 * xx)[None, None]                              # linear ramp: bilinear keeps it
    net = to_network(smooth, geo)
    assert tuple(net.shape) == (1, 1, 16, 16) and not net[:, :, 12:].any()
    back = to_sensor(net, geo, SENSOR)
    inner = back[0, 0, 4:24, 2:30] - smooth[0, 0, 4:24, 2:30]     # away from the crop border
    assert inner.abs().max() < 0.02
    # labels made of 2x2 blocks survive a factor-2 nearest round trip exactly
    blocks = torch.randint(0, 6, (12, 16), dtype=torch.uint8).repeat_interleave(2, 0).repeat_interleave(2, 1)
    labels = torch.full(SENSOR, 7, dtype=torch.uint8)
    labels[2:26, 0:32] = blocks
    lnet = to_network(labels, geo, labels=True)
    assert torch.equal(lnet[:12, :16], blocks[::2, ::2])
    assert torch.equal(to_sensor(lnet, geo, SENSOR, labels=True)[2:26, 0:32], blocks)


def test_geometry_errors():
    _one_line_error(to_network, torch.zeros(1, 10, 10), {"crop": [0, 0, 20, 5]}, match="does not fit a 10x10")
    _one_line_error(to_network, torch.zeros(1, 10, 10), {"crop": [0, 0, 5]}, match="crop must be")
    _one_line_error(to_network, torch.zeros(1, 10, 10), {"resize": [0, 4]}, match="resize must be")
    _one_line_error(to_sensor, torch.zeros(1, 2, 16, 16), {"pad_multiple": 16}, (10, 40),
                    match="model output is 16x16")
    with pytest.raises(ValueError):
        to_network(torch.zeros(10, 10), {})


def test_instance_input_norm():
    """input_norm="instance" standardises each sample before the stem: the output ignores a
    per-sample brightness offset and contrast gain, adds no parameters, leaves the input alone,
    and survives a checkpoint round trip; raw input ("none") does not have that invariance."""
    from evstream.nn.resnet import INSTANCE_EPS, standardize

    x = torch.randn(3, 2, 16, 16) * torch.tensor([0.1, 1.0, 3.0]).view(3, 1, 1, 1) + 0.4
    keep = x.clone()
    z = standardize(x)
    assert torch.equal(x, keep)
    assert torch.allclose(z.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-5)
    var = x.var(dim=(1, 2, 3), correction=0)
    assert torch.allclose(z.var(dim=(1, 2, 3), correction=0), var / (var + INSTANCE_EPS ** 2),
                          atol=1e-5)
    assert standardize(torch.full((1, 1, 4, 4), 0.7)).abs().max() < 1e-4     # blank frame -> 0

    torch.manual_seed(0)
    cfg = {"arch": "classifier", "backbone": "tiny", "in_channels": 1, "num_classes": 4}
    plain = build_model(cfg).eval()
    torch.manual_seed(0)
    normed = build_model({**cfg, "input_norm": "instance"}).eval()
    assert plain.state_dict().keys() == normed.state_dict().keys()
    img = torch.rand(2, 1, 32, 32)
    moved = 0.5 * img - 0.6                   # a darker, lower-contrast exposure of the same frame
    with torch.inference_mode():
        d_normed = (normed(img) - normed(moved)).abs().max()
        d_plain = (plain(img) - plain(moved)).abs().max()
    # exact up to the eps term: (0.29^2 + eps^2) vs (0.145^2 + eps^2) -> ~1 % of the logits
    assert d_normed < 0.02 * plain(img).abs().max() and d_plain > 20 * d_normed
    with pytest.raises(EvstreamError, match="input_norm"):
        build_model({**cfg, "input_norm": "batch"})


def test_input_norm_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    cfg = default_config(name="cls-norm", arch="classifier", backbone="tiny", in_channels=1,
                         num_classes=4, task="classification", classes=list("abcd"),
                         colors=[[0, 0, 0]] * 4, input_norm="instance", trained=True)
    model = build_model(cfg).eval()
    save_checkpoint(tmp_path / "m.pt", model.state_dict(), cfg)
    loaded, lcfg = load_model(tmp_path / "m.pt")
    assert lcfg["input_norm"] == "instance" and loaded.backbone.input_norm == "instance"
    x = torch.rand(2, 1, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
