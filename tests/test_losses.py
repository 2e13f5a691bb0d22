"""EvDistill loss terms on hand-computed cases (evstream.distill.losses)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from evstream.distill.losses import (
    AFFINITY_POOL_SCALE,
    Discriminator,
    LossWeights,
    adversarial_losses,
    affinity_kd,
    affinity_matrix,
    consistency,
    pixel_kd,
    pool_nodes,
    reconstruction,
    ssim,
    task_ce,
    total_loss,
)

torch.set_num_threads(1)
LN3 = math.log(3.0)


def px(*classes: float) -> torch.Tensor:
    """Logits of one pixel as a (1, K, 1, 1) tensor."""
    return torch.tensor(classes, dtype=torch.float32).reshape(1, -1, 1, 1)


# ---------------------------------------------------------------- task_ce

def test_task_ce_hand_example_with_ignored_pixels():
    # 2x2 image, K = 2; every pixel's logits are [0, ln 3] -> p = [1/4, 3/4]
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = LN3
    labels = torch.tensor([[[1, 0], [255, 255]]])
    # valid pixels: label 1 -> -ln(3/4), label 0 -> -ln(1/4); ignored ones do not count
    expected = (math.log(4 / 3) + math.log(4)) / 2
    assert task_ce(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_task_ce_all_ignored_is_zero_with_a_graph():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.full((2, 4, 4), 255)
    loss = task_ce(logits, labels)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_task_ce_classification_and_bad_labels():
    logits = torch.tensor([[0.0, LN3], [0.0, LN3]])
    assert task_ce(logits, torch.tensor([1, 0])).item() == pytest.approx(
        (math.log(4 / 3) + math.log(4)) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="outside"):
        task_ce(logits, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="shape"):
        task_ce(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))


# ---------------------------------------------------------------- pixel_kd

def test_pixel_kd_zero_when_student_equals_teacher():
    t = torch.randn(2, 5, 3, 4)
    assert pixel_kd(t.clone(), t).item() == pytest.approx(0.0, abs=1e-7)
    assert pixel_kd(t.clone(), t, T=4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_pixel_kd_hand_values_and_temperature():
    teacher, student = px(0.0, LN3), px(0.0, 0.0)       # p_t = [1/4, 3/4], p_s = [1/2, 1/2]
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert kl > 0
    assert pixel_kd(student, teacher).item() == pytest.approx(kl, rel=1e-6)
    # T = 2: p_t = softmax([0, ln3 / 2]) = [1, sqrt 3] / (1 + sqrt 3), times T^2 = 4
    a = 1 / (1 + math.sqrt(3))
    b = math.sqrt(3) / (1 + math.sqrt(3))
    kl2 = a * math.log(a / 0.5) + b * math.log(b / 0.5)
    assert pixel_kd(student, teacher, T=2.0).item() == pytest.approx(4 * kl2, rel=1e-6)
    # "ce" mode: cross-entropy = KL + H(p_t)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert pixel_kd(student, teacher, mode="ce").item() == pytest.approx(kl + h, rel=1e-6)


def test_pixel_kd_mask_averages_over_valid_pixels_only():
    teacher = torch.cat([px(0.0, LN3), px(5.0, -5.0)], dim=3)   # (1, 2, 1, 2)
    student = torch.zeros(1, 2, 1, 2)
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    mask = torch.tensor([[[True, False]]])
    assert pixel_kd(student, teacher, mask=mask).item() == pytest.approx(kl, rel=1e-6)
    none = pixel_kd(student.requires_grad_(), teacher, mask=torch.zeros(1, 1, 2, dtype=bool))
    assert none.item() == 0.0
    none.backward()


def test_pixel_kd_gradients_reach_the_student_only_when_teacher_is_detached():
    torch.manual_seed(0)
    student, teacher = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, 5, 5)
    pixel_kd(student(x), teacher(x)).backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert teacher.weight.grad is None
    student.zero_grad()
    pixel_kd(student(x), teacher(x), detach_teacher=False).backward()
    assert teacher.weight.grad is not None and teacher.weight.grad.abs().sum() > 0


def test_pixel_kd_rejects_mismatch_and_bad_temperature():
    with pytest.raises(ValueError, match="shapes differ"):
        pixel_kd(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="T must be"):
        pixel_kd(torch.zeros(1, 3), torch.zeros(1, 3), T=0.0)


def test_losses_do_not_modify_their_inputs():
    torch.manual_seed(1)
    s, t = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    fs, ft = torch.randn(2, 4, 6, 6), torch.randn(2, 7, 6, 6)
    keep = [a.clone() for a in (s, t, fs, ft)]
    pixel_kd(s, t, T=3.0)
    consistency(s, t, T=2.0)
    affinity_kd(fs, ft)
    reconstruction(s, t, "l1+ssim")
    task_ce(s, torch.zeros(2, 8, 8, dtype=torch.long))
    for a, b in zip((s, t, fs, ft), keep):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- affinity_kd

def test_affinity_two_node_hand_example():
    # nodes as a (1, C=2, 1, 2) map; pooling to the same 1x2 grid leaves them as they are
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # (1,0), (0,1)
    teacher = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).T.reshape(1, 2, 1, 2)  # (1,0), (1,1)
    a_t = affinity_matrix(teacher)
    c = 1 / math.sqrt(2)
    assert torch.allclose(a_t, torch.tensor([[[1.0, c], [c, 1.0]]]), atol=1e-6)
    # a_s = identity; squared differences: 0, c^2, c^2, 0 -> mean (1/2 + 1/2) / 4 = 1/4
    assert affinity_kd(student, teacher, nodes=(1, 2)).item() == pytest.approx(0.25, rel=1e-6)


def test_affinity_zero_for_identical_features_and_scale_invariant():
    torch.manual_seed(2)
    f = torch.randn(2, 8, 12, 10)
    assert affinity_kd(f.clone(), f).item() == pytest.approx(0.0, abs=1e-10)
    assert affinity_kd(f * 37.5, f).item() == pytest.approx(0.0, abs=1e-10)
    g = torch.randn(2, 8, 12, 10)
    base = affinity_kd(f, g, nodes=3, pool="avg")
    assert base.item() > 0.01
    scaled = affinity_kd(f * 0.001, g * 250.0, nodes=3, pool="avg")
    assert scaled.item() == pytest.approx(base.item(), rel=1e-5)


def test_affinity_channel_counts_may_differ_and_grids_must_match():
    torch.manual_seed(3)
    s, t = torch.randn(1, 3, 8, 8, requires_grad=True), torch.randn(1, 16, 8, 8)
    loss = affinity_kd(s, t, nodes=4)
    loss.backward()
    assert loss.item() > 0 and s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="node grids"):
        # 8 -> kernel 4 -> 2 nodes a side; 9 -> kernel 4, ceil -> 3 nodes a side
        affinity_kd(torch.randn(1, 3, 8, 8), torch.randn(1, 3, 9, 9), scale=0.5)
    # the same maps pooled to a fixed grid are fine
    affinity_kd(torch.randn(1, 3, 8, 8), torch.randn(1, 3, 9, 9), nodes=2)


def test_affinity_pooling_follows_the_structured_kd_rule():
    f = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    # scale 0.5 on 4x4: kernel = stride = 2 -> 2x2 grid of block maxima
    assert pool_nodes(f, scale=0.5).flatten().tolist() == [5.0, 7.0, 13.0, 15.0]
    assert pool_nodes(f, scale=0.5, pool="avg").flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    # EvDistill's 0.8 on 5x5: kernel int(4.0) = 4, ceil_mode -> 2x2, the last row/column partial
    g = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5)
    assert AFFINITY_POOL_SCALE == 0.8
    assert pool_nodes(g).flatten().tolist() == [18.0, 19.0, 23.0, 24.0]
    # fixed grid
    assert pool_nodes(g, nodes=1).flatten().tolist() == [24.0]


def test_affinity_gradient_skips_detached_teacher():
    torch.manual_seed(4)
    s_net, t_net = nn.Conv2d(2, 4, 1), nn.Conv2d(2, 6, 1)
    x = torch.randn(2, 2, 6, 6)
    affinity_kd(s_net(x), t_net(x), nodes=3).backward()
    assert s_net.weight.grad is not None and t_net.weight.grad is None


# ---------------------------------------------------------------- reconstruction / consistency

def test_reconstruction_l1_l2_values():
    pred = torch.tensor([[[[0.0, 1.0], [2.0, -3.0]]]])
    target = torch.zeros_like(pred)
    assert reconstruction(pred, target, "l1").item() == pytest.approx(6 / 4)
    assert reconstruction(pred, target, "l2").item() == pytest.approx(14 / 4)
    assert reconstruction(pred, pred.clone(), "l1+ssim").item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="kind"):
        reconstruction(pred, target, "l3")


def test_reconstruction_balanced_l1_hand_values_and_the_empty_answer():
    # one sample, 2 channels, 2x2 pixels; only pixel (0, 0) holds events
    target = torch.zeros(1, 2, 2, 2)
    target[0, 0, 0, 0] = 1.0
    zeros = torch.zeros_like(target)
    # active pixel: mean |0 - (1, 0)| = 0.5; empty pixels: 0 -> 0.5 * 0.5 + 0.5 * 0
    assert reconstruction(zeros, target, "balanced_l1").item() == pytest.approx(0.25)
    assert reconstruction(target, target, "balanced_l1").item() == 0.0
    # plain L1 prefers the empty answer to a blurred one that is right where events are;
    # balanced L1 does not
    blur = torch.full_like(target, 0.2)
    blur[0, 0, 0, 0] = 1.0
    assert reconstruction(zeros, target, "l1") < reconstruction(blur, target, "l1")
    assert reconstruction(zeros, target, "balanced_l1") > \
        reconstruction(blur, target, "balanced_l1")
    # blur: active pixel error (0 + 0.2) / 2 = 0.1, empty pixels 0.2 -> 0.5 * 0.1 + 0.5 * 0.2
    assert reconstruction(blur, target, "balanced_l1").item() == pytest.approx(0.15)
    # the mask drops pixels; a sample without events (or without empty pixels) uses one side
    mask = torch.tensor([[[True, False], [False, False]]])
    assert reconstruction(zeros, target, "balanced_l1", mask=mask).item() == pytest.approx(0.5)
    two = torch.cat([target, zeros])                          # second sample: no events at all
    pred = torch.cat([zeros, torch.full_like(zeros, 0.1)])
    assert reconstruction(pred, two, "balanced_l1").item() == pytest.approx((0.25 + 0.1) / 2)
    g = torch.zeros_like(target, requires_grad=True)
    reconstruction(g, target, "balanced_l1").backward()
    assert g.grad[0, 0, 0, 0] < 0                              # pushed towards the event
    with pytest.raises(ValueError, match="balanced_l1 needs"):
        reconstruction(torch.zeros(4), torch.zeros(4), "balanced_l1")


def test_reconstruction_ssim_on_constant_images():
    # constant images: variances and covariance are 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b = 0.5, -0.5
    pred, target = torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b)
    c1 = (0.01 * 2.0) ** 2
    s = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(pred, target).item() == pytest.approx(s, rel=1e-5)
    expected = 0.85 * (1 - s) / 2 + 0.15 * abs(a - b)
    assert reconstruction(pred, target, "l1+ssim").item() == pytest.approx(expected, rel=1e-5)
    # an image smaller than the 11-pixel window still works (the window shrinks)
    assert ssim(pred[..., :5, :6], pred[..., :5, :6]).item() == pytest.approx(1.0, abs=1e-6)


def test_consistency_zero_when_equal_and_hand_value():
    t = torch.randn(2, 6, 4, 4)
    assert consistency(t.clone(), t).item() == pytest.approx(0.0, abs=1e-7)
    recon, real = px(0.0, 0.0), px(0.0, LN3)              # KL(p_real || p_recon)
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert consistency(recon, real).item() == pytest.approx(kl, rel=1e-6)


def test_consistency_gradient_goes_to_the_reconstruction_side():
    recon = torch.randn(1, 3, 4, 4, requires_grad=True)
    real = torch.randn(1, 3, 4, 4, requires_grad=True)
    consistency(recon, real).backward()
    assert recon.grad.abs().sum() > 0 and real.grad is None


# ---------------------------------------------------------------- adversarial

def test_adversarial_losses_hand_values_with_an_identity_discriminator():
    d = nn.Identity()                     # D(x) = x: the inputs are the scores
    teacher, student = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    ls = adversarial_losses(d, student, teacher, "lsgan")
    assert ls.d_loss.item() == pytest.approx(0.0)            # ((1-1)^2 + 0^2) / 2
    assert ls.g_loss.item() == pytest.approx(0.5)            # (0 - 1)^2 / 2
    bce = adversarial_losses(d, student, teacher, "bce")
    assert bce.d_loss.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(2)) / 2,
                                              rel=1e-6)
    assert bce.g_loss.item() == pytest.approx(math.log(2), rel=1e-6)


def test_adversarial_losses_feed_one_side_each():
    torch.manual_seed(5)
    d = Discriminator(4, width=8, depth=2)
    s_net = nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, 16, 16)
    student = s_net(x).softmax(1)
    teacher = torch.randn(2, 4, 16, 16).softmax(1)
    out = adversarial_losses(d, student, teacher)
    out.d_loss.backward(retain_graph=True)
    assert all(p.grad is not None for p in d.parameters())
    assert s_net.weight.grad is None                 # D's loss never reaches the student
    d.zero_grad(set_to_none=True)
    out.g_loss.backward()
    assert s_net.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.parameters())   # the student's loss never reaches D


def test_discriminator_shapes():
    d = Discriminator(6, width=8, depth=3)
    assert d(torch.randn(2, 6, 32, 32)).shape == (2, 1, 4, 4)
    assert d(torch.randn(2, 6)).shape == (2, 1, 1, 1)


# ---------------------------------------------------------------- weights / total

def test_loss_weights_defaults_and_validation():
    w = LossWeights()
    assert (w.ce, w.recon, w.pixel_kd, w.affinity, w.consistency, w.adversarial) == \
        (10.0, 10.0, 20.0, 0.1, 10.0, 0.0)
    with pytest.raises(ValueError, match="affinity"):
        LossWeights(affinity=-1.0)
    with pytest.raises(ValueError, match="ce"):
        LossWeights(ce=float("nan"))


def test_total_loss_weighting():
    x = torch.tensor(1.0, requires_grad=True)
    terms = {"ce": x * 1.0, "recon/e2a": torch.tensor(0.5), "recon/a2e": torch.tensor(0.25),
             "pixel_kd": torch.tensor(0.1), "affinity": torch.tensor(2.0),
             "adversarial": torch.tensor(float("nan"))}          # weight 0: left out
    total, logged = total_loss(terms, LossWeights())
    # 10*1 + 10*0.5 + 10*0.25 + 20*0.1 + 0.1*2 = 19.7
    assert total.item() == pytest.approx(19.7, rel=1e-6)
    assert set(logged) == {"ce", "recon/e2a", "recon/a2e", "pixel_kd", "affinity", "total"}
    assert logged["recon/a2e"] == pytest.approx(2.5)
    assert logged["pixel_kd"] == pytest.approx(2.0)
    assert logged["total"] == pytest.approx(19.7, rel=1e-6)
    assert all(isinstance(v, float) for v in logged.values())
    total.backward()
    assert x.grad.item() == pytest.approx(10.0)
    custom, _ = total_loss({"ce": torch.tensor(1.0), "affinity": torch.tensor(1.0)},
                           LossWeights(ce=0.5, affinity=3.0))
    assert custom.item() == pytest.approx(3.5)


def test_total_loss_rejects_unknown_and_empty():
    with pytest.raises(ValueError, match="unknown loss term 'pixelkd'"):
        total_loss({"pixelkd": torch.tensor(1.0)}, LossWeights())
    with pytest.raises(ValueError, match="non-zero weight"):
        total_loss({"adversarial": torch.tensor(1.0)}, LossWeights())
    with pytest.raises(ValueError, match="scalar"):
        total_loss({"ce": torch.ones(2)}, LossWeights())


def test_one_distillation_step_reduces_the_loss():
    """The terms together train a tiny student towards a fixed teacher (a smoke test that the
    graph is wired: losses fall after a few SGD steps)."""
    torch.manual_seed(6)
    teacher = nn.Conv2d(2, 3, 3, padding=1).requires_grad_(False)
    student = nn.Conv2d(2, 3, 3, padding=1)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    x = torch.randn(4, 2, 16, 16)
    labels = teacher(x).argmax(1)
    labels[:, :4] = 255
    w = LossWeights(ce=1.0, pixel_kd=1.0, affinity=1.0)
    history = []
    for _ in range(15):
        s, t = student(x), teacher(x)
        total, logged = total_loss({"ce": task_ce(s, labels), "pixel_kd": pixel_kd(s, t),
                                    "affinity": affinity_kd(s, t, nodes=4)}, w)
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(logged["total"])
    assert history[-1] < 0.7 * history[0]


def test_task_ce_class_weights_hand_example():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 255])
    ce = [math.log(1 + math.exp(-2.0)), math.log(2.0)]
    assert task_ce(logits, labels).item() == pytest.approx(sum(ce) / 2, rel=1e-6)
    got = task_ce(logits, labels, class_weights=[1.0, 3.0]).item()
    assert got == pytest.approx((ce[0] + 3 * ce[1]) / 4, rel=1e-6)
    with pytest.raises(ValueError, match="class_weights"):
        task_ce(logits, labels, class_weights=[1.0])
