"""Confusion matrix / mIoU / pixel accuracy, top-k accuracy and the table, on hand examples
(evstream.distill.metrics), plus a real two-process gloo all_reduce."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from evstream.distill.metrics import ConfusionMatrix, TopKAccuracy, format_table

torch.set_num_threads(1)

# 2x3 image, 3 classes, one ignored pixel (whose prediction, 2, must not count)
TARGET = [[0, 0, 1], [2, 255, 1]]
PRED = [[0, 1, 1], [2, 2, 0]]
# counted pixels (target, pred): (0,0) (0,1) (1,1) (2,2) (1,0)
MATRIX = [[1, 1, 0],
          [1, 1, 0],
          [0, 0, 1]]
# IoU_0 = 1 / (2 + 2 - 1), IoU_1 = 1 / (2 + 2 - 1), IoU_2 = 1 / (1 + 1 - 1)
IOU = [1 / 3, 1 / 3, 1.0]


def test_confusion_matrix_hand_example_with_ignore():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([PRED]), torch.tensor([TARGET], dtype=torch.uint8))
    assert cm.matrix.tolist() == MATRIX
    assert cm.total() == 5
    assert cm.per_class_iou() == pytest.approx(IOU)
    assert cm.miou() == pytest.approx(5 / 9)
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)


def test_numpy_input_and_logits_give_the_same_counts():
    cm_np = ConfusionMatrix(3)
    cm_np.update(np.array(PRED, dtype=np.int64), np.array(TARGET, dtype=np.uint8))
    assert cm_np.matrix.tolist() == MATRIX
    logits = torch.nn.functional.one_hot(torch.tensor([PRED]), 3).permute(0, 3, 1, 2).float()
    cm_logits = ConfusionMatrix(3)
    cm_logits.update(logits, torch.tensor([TARGET]))
    assert cm_logits.matrix.tolist() == MATRIX


def test_miou_convention_absent_classes_are_nan_and_skipped():
    # a 4th class that appears in neither target nor prediction: IoU NaN, mean unchanged
    cm = ConfusionMatrix(4)
    cm.update(np.array(PRED), np.array(TARGET))
    iou = cm.per_class_iou()
    assert math.isnan(iou[3]) and iou[:3] == pytest.approx(IOU)
    assert cm.miou() == pytest.approx(5 / 9)
    # predicted somewhere but never in the target: IoU 0, and it counts in the mean
    pred = np.array(PRED)
    pred[0, 0] = 3
    cm2 = ConfusionMatrix(4)
    cm2.update(pred, np.array(TARGET))
    # class 0 now: TP 0 -> IoU 0; class 3: TP 0, FP 1 -> IoU 0; classes 1, 2 as before
    assert cm2.per_class_iou() == pytest.approx([0.0, 1 / 3, 1.0, 0.0])
    assert cm2.miou() == pytest.approx((1 / 3 + 1) / 4)


def test_empty_matrix_is_nan_not_an_error():
    cm = ConfusionMatrix(3)
    cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 255))
    assert cm.total() == 0
    assert math.isnan(cm.miou()) and math.isnan(cm.pixel_accuracy())
    assert all(math.isnan(v) for v in cm.per_class_iou())


def test_bad_values_raise_but_predictions_at_ignored_pixels_do_not():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="target value 7"):
        cm.update(np.zeros((2, 2), dtype=int), np.full((2, 2), 7))
    with pytest.raises(ValueError, match="predicted value 255"):
        cm.update(np.full((2, 2), 255), np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 3), dtype=int), np.zeros((2, 2), dtype=int))
    cm.update(np.array([[255, 1]]), np.array([[255, 1]]))   # 255 predicted where ignored
    assert cm.matrix.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_merge_of_two_halves_equals_one_matrix_over_all_data():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 6, size=(6, 17, 23))
    target[rng.random(target.shape) < 0.1] = 255
    pred = rng.integers(0, 6, size=target.shape)
    whole = ConfusionMatrix(6)
    whole.update(pred, target)
    a, b = ConfusionMatrix(6), ConfusionMatrix(6)
    a.update(pred[:2], target[:2])
    b.update(torch.from_numpy(pred[2:]), torch.from_numpy(target[2:]))
    a.merge(b)
    assert torch.equal(a.matrix, whole.matrix)
    assert a.miou() == whole.miou()
    c = ConfusionMatrix(6)
    c.merge(whole.matrix.numpy())
    assert torch.equal(c.matrix, whole.matrix)
    with pytest.raises(ValueError, match="shape"):
        c.merge(ConfusionMatrix(5))


def test_summary_is_json_able():
    cm = ConfusionMatrix(4)
    cm.update(np.array(PRED), np.array(TARGET))
    s = cm.summary(["a", "b", "c", "d"])
    assert s["per_class_iou"]["d"] is None and s["pixels"] == 5
    assert json.loads(json.dumps(s))["miou"] == pytest.approx(5 / 9)


# ---------------------------------------------------------------- top-k

def test_topk_hand_example():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.05],    # target 1: rank 1
                           [0.4, 0.1, 0.3, 0.2],     # target 2: rank 2
                           [0.1, 0.2, 0.3, 0.4]])    # target 0: rank 4
    acc = TopKAccuracy(ks=(1, 2, 5))
    acc.update(scores, torch.tensor([1, 2, 0]))
    r = acc.result()
    assert r["top1"] == pytest.approx(1 / 3)
    assert r["top2"] == pytest.approx(2 / 3)
    assert r["top5"] == pytest.approx(1.0)       # k = 5 > 4 classes: clamped, always a hit
    acc.update(scores.numpy()[:1], np.array([0]))   # rank 3 of 4
    assert acc.result() == pytest.approx({"top1": 1 / 4, "top2": 2 / 4, "top5": 4 / 4})
    assert acc.total() == 4


def test_topk_default_merge_and_errors():
    rng = np.random.default_rng(1)
    scores, target = rng.normal(size=(40, 10)), rng.integers(0, 10, 40)
    whole, a, b = TopKAccuracy(), TopKAccuracy(), TopKAccuracy()
    whole.update(scores, target)
    a.update(scores[:15], target[:15])
    b.update(scores[15:], target[15:])
    a.merge(b)
    assert a.result() == whole.result()
    order = np.argsort(-scores, axis=1)
    assert whole.result()["top1"] == pytest.approx(np.mean(order[:, 0] == target))
    assert whole.result()["top5"] == pytest.approx(
        np.mean([t in row[:5] for t, row in zip(target, order)]))
    assert math.isnan(TopKAccuracy().result()["top1"])
    with pytest.raises(ValueError, match="outside"):
        whole.update(scores[:1], np.array([10]))


# ---------------------------------------------------------------- table

def test_format_table_exact_text():
    text = format_table([0.5, float("nan"), 0.25], ["flat", "vegetation", "car"])
    assert text == "\n".join([
        "class         IoU",
        "-----------------",
        "flat        50.00",
        "vegetation      -",
        "car         25.00",
        "-----------------",
        "mean        37.50",
    ])
    with pytest.raises(ValueError, match="2 values for 3 classes"):
        format_table([0.1, 0.2], ["a", "b", "c"])


# ---------------------------------------------------------------- DDP

def _ddp_rank(rank: int, world: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        rng = np.random.default_rng(42)
        target = rng.integers(0, 4, size=(4, 8, 8))
        pred = rng.integers(0, 4, size=(4, 8, 8))
        scores, labels = rng.normal(size=(4, 4)), rng.integers(0, 4, 4)
        cm, acc = ConfusionMatrix(4), TopKAccuracy(ks=(1, 2))
        cm.update(pred[rank::world], target[rank::world])     # each rank sees its share
        acc.update(scores[rank::world], labels[rank::world])
        cm.all_reduce()
        acc.all_reduce()
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump({"matrix": cm.matrix.tolist(), "counts": acc.counts.tolist()}, f)
    finally:
        dist.destroy_process_group()


def test_all_reduce_over_two_gloo_processes(tmp_path):
    out = tmp_path / "result.json"
    mp.spawn(_ddp_rank, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    rng = np.random.default_rng(42)
    target = rng.integers(0, 4, size=(4, 8, 8))
    pred = rng.integers(0, 4, size=(4, 8, 8))
    scores, labels = rng.normal(size=(4, 4)), rng.integers(0, 4, 4)
    cm, acc = ConfusionMatrix(4), TopKAccuracy(ks=(1, 2))
    cm.update(pred, target)
    acc.update(scores, labels)
    got = json.loads(out.read_text())
    assert got["matrix"] == cm.matrix.tolist()
    assert got["counts"] == acc.counts.tolist()
    # without a process group all_reduce leaves the counts alone
    before = cm.matrix.clone()
    cm.all_reduce()
    assert torch.equal(cm.matrix, before)
