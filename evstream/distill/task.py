"""One training step's loss terms, per stage and setting: `distill_step` returns a dict of losses.

The trainer weights and sums the terms (`losses.total_loss` with `loss_weights(cfg)`); a key
"name/part" takes the weight of "name", so the parts are logged apart. Terms are unweighted
scalar tensors. One key is special: "discriminator" (the adversarial discriminator's own loss,
present only when loss.adversarial > 0) is not weighted with the others; the trainer adds it to
the backward as is. Its inputs are detached and the student's adversarial term uses detached
discriminator parameters, so a single backward of total + discriminator feeds each optimiser
only its own gradients.

Batch (already on the device, augmented by the trainer):
    "events" (N,C,H,W) float32, "image" (N,1,H,W) float32 in [-1, 1], "label" (N,H,W) int64 with
    255 = ignore or (N,) for classification, "valid" (N,H,W) bool: the pixels of the picture
    (False on the geometry's padding; None for classification). Absent keys are absent.

Models (`models` dict): "student", "teacher" (frozen), "e2a", "a2e", "disc" (absent when unused).

Stage 1 (`teacher_step`): teacher(image) -> CE with the labels. Stage 2: one step function per
setting (the table in settings.py names it; `distill_step` dispatches):
  paired_step      events and the APS frame of one instant, no labels. M = the frame's
                   unclipped pixels (loss.frame_clip_mask; all valid pixels when off): a pixel at
                   the black or white limit measured nothing, so terms whose target is the frame
                   or the teacher's output on it count only M.
                     s = student(events); t = teacher(frame)  (no grad: a target)
                     pixel_kd/frame = KD(s, t) over M; affinity/frame = aff(s.feat, t.feat)
                   with BMR (loss.bmr):
                     x = E2A(s) ~ frame:  recon/e2a = |x - frame| over M
                     t_x = teacher(x) (no grad): pixel_kd/recon = KD(s, t_x) (every pixel,
                                                 only outside M, or nowhere:
                                                 loss.recon_kd_where; only where t_x's top
                                                 softmax >= loss.recon_kd_min_conf),
                                                 affinity/recon = aff(s.feat, t_x.feat)
                     e = A2E(frame) ~ events: recon/a2e = balanced |e - events|
                     s_e = student(e):  pixel_kd/a2e = KD(s_e, t) over M, affinity/a2e = ...
                     consistency = KL(teacher(x) || t) over M (gradient through the teacher)
                   loss.e2a_detach: E2A reads detached features, so recon/e2a and consistency
                   train E2A alone and the student learns from the KD terms only.
                   So where the frame clipped (night, headlights, a tunnel exit, over-exposure)
                   the student learns from the teacher reading E2A's picture of the events.
  unpaired_step    events (no labels) + a labelled image of another instant.
                     s = student(events); x = E2A(s) ~ APS; t_x = teacher(x) (no grad)
                     pixel_kd/events = KD(s, t_x); affinity/events = aff(s.feat, t_x.feat)
                     e = A2E(image); s_e = student(e); t = teacher(image) (no grad)
                     ce = CE(s_e, label); pixel_kd/images = KD(s_e, t); affinity/images = ...
                     recon/e2a = |E2A(s_e) - image|      (image -> events -> image cycle)
                     recon/a2e = balanced |A2E(x) - events|   (events -> image -> events)
                     consistency = KL(teacher(E2A(s_e)) || t)
  events_gt_step   ce = CE(student(events), label)
  pseudo_aps_step  ce = CE(student(events), argmax teacher(image)) (padding ignored)
"balanced" is losses.reconstruction's "balanced_l1" (loss.recon_a2e_kind): pixels with and
without events weigh half each, so an empty output is no longer A2E's cheapest answer.
Optional adversarial (loss.adversarial > 0): a discriminator tells softmax(teacher) from
softmax(student) outputs; "adversarial" is the student's term, "discriminator" D's.

The teacher in stage 2 is frozen: requires_grad False on every parameter and eval mode
(`TaskModule.train()` keeps it there), so no gradient ever reaches it even where the graph
passes through it (consistency). BMR modules exist only in training; exports hold the student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evstream.distill import losses as L
from evstream.distill import settings as S
from evstream.distill.config import TrainCfg
from evstream.nn.registry import build_model

IGNORE = L.IGNORE_INDEX
DISC_KEY = "discriminator"


def loss_weights(cfg: TrainCfg) -> L.LossWeights:
    w = cfg.loss
    return L.LossWeights(ce=w.ce, recon=w.recon, pixel_kd=w.pixel_kd, affinity=w.affinity,
                         consistency=w.consistency, adversarial=w.adversarial)


def needs_teacher(cfg: TrainCfg) -> bool:
    return S.get(cfg.setting).teacher


def stage2_modules(cfg: TrainCfg) -> set[str]:
    """Which modules stage 2 of this config trains or uses besides the student."""
    setting = S.get(cfg.setting)
    names = set()
    if setting.teacher:
        names.add("teacher")
    if S.uses_bmr(cfg.setting, cfg.loss.bmr):
        names.add("e2a")
        if setting.bmr == "required" or (cfg.loss.recon_a2e and cfg.loss.recon > 0):
            names.add("a2e")
    if cfg.loss.adversarial > 0 and setting.bmr != "none":
        names.add("disc")
    return names


def build_bmr(names: set[str], student: nn.Module, event_channels: int, image_channels: int,
              tiny: bool, e2a_width: int = 0, a2e_width: int = 0) -> dict[str, nn.Module]:
    """E2A (student features -> image) and A2E (image -> events) sized for this student; a
    width of 0 takes the default (64 / 32, or 16 / 8 for a tiny student)."""
    out = {}
    if "e2a" in names:
        out["e2a"] = build_model({"arch": "e2a", "in_channels": student.feat_channels,
                                  "out_channels": image_channels,
                                  "low_channels": getattr(student, "low_channels", 0) or 0,
                                  "width": e2a_width or (16 if tiny else 64)})
    if "a2e" in names:
        out["a2e"] = build_model({"arch": "a2e", "in_channels": image_channels,
                                  "out_channels": event_channels,
                                  "width": a2e_width or (8 if tiny else 32)})
    return out


def build_discriminator(num_classes: int, tiny: bool) -> nn.Module:
    return L.Discriminator(num_classes, width=8 if tiny else 32)


def freeze(module: nn.Module) -> nn.Module:
    """requires_grad False everywhere and eval mode: a frozen teacher."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def set_norm_modes(module: nn.Module, freeze_bn: bool, no_dropout: bool) -> None:
    """After module.train(): BatchNorm / Dropout layers back to eval mode where asked."""
    for m in module.modules():
        if freeze_bn and isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
        if no_dropout and isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()


class TaskModule(nn.Module):
    """All models of one stage in one module whose forward(batch) is the dict of loss terms.

    Wrapping this (not the parts) in DistributedDataParallel makes every trainable parameter's
    gradient synchronised by one backward. stage 1: models = {"teacher"}, trained; stage 2:
    the teacher (if any) frozen, everything else trained.
    """

    def __init__(self, models: dict[str, nn.Module], cfg: TrainCfg, stage: int):
        super().__init__()
        self.models = nn.ModuleDict(models)
        self.cfg = cfg
        self.stage = stage
        if stage == 2 and "teacher" in self.models:
            freeze(self.models["teacher"])

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for name, m in self.models.items():
                if self.stage == 2 and name == "teacher":
                    m.eval()
                    continue
                mcfg = self.cfg.teacher if name == "teacher" else self.cfg.student
                set_norm_modes(m, mcfg.freeze_bn, mcfg.no_dropout)
        return self

    def trainable(self) -> dict[str, nn.Module]:
        if self.stage == 1:
            return {"teacher": self.models["teacher"]}
        return {k: m for k, m in self.models.items() if k != "teacher"}

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        models = dict(self.models.items())
        if self.stage == 1:
            return teacher_step(batch, models, self.cfg)
        return distill_step(batch, models, self.cfg)


# -- the steps ---------------------------------------------------------------------------------

def teacher_step(batch: dict, models: dict, cfg: TrainCfg) -> dict[str, torch.Tensor]:
    """Stage 1: the teacher learns on labelled images."""
    logits = models["teacher"](batch["image"])
    return {"ce": L.task_ce(logits, batch["label"], class_weights=cfg.loss.teacher_class_weights)}


def _kd(s: dict, t: dict, cfg: TrainCfg, mask) -> torch.Tensor:
    return L.pixel_kd(s["logits"], t["logits"], T=cfg.loss.temperature, mask=mask,
                      mode=cfg.loss.kd_mode)


def _aff(s_feat: torch.Tensor, t_feat: torch.Tensor, cfg: TrainCfg) -> torch.Tensor:
    nodes = None
    if s_feat.shape[2:] != t_feat.shape[2:]:      # e.g. classifiers of different strides
        nodes = (min(s_feat.shape[2], t_feat.shape[2]), min(s_feat.shape[3], t_feat.shape[3]))
    return L.affinity_kd(s_feat, t_feat, pool=cfg.loss.affinity_pool,
                         scale=cfg.loss.affinity_scale, nodes=nodes)


def _e2a(models: dict, s: dict, size, detach: bool = False) -> torch.Tensor:
    """E2A's image from the student's output dict; `detach` (loss.e2a_detach) cuts the graph at
    the student's features, so nothing E2A learns moves the student."""
    feat, low = s["feat"], s.get("low") if models["e2a"].low_channels else None
    if detach:
        feat, low = feat.detach(), None if low is None else low.detach()
    return models["e2a"](feat, low, size=tuple(size))


def _recon(pred, target, cfg: TrainCfg, image: bool, mask=None) -> torch.Tensor:
    """E2A's image loss (loss.recon_kind) or A2E's event loss (loss.recon_a2e_kind), over the
    pixels of `mask` where given (l1+ssim takes every pixel)."""
    kind = cfg.loss.recon_kind if image else cfg.loss.recon_a2e_kind
    return L.reconstruction(pred, target, kind, mask=mask)


def _adversarial(terms: dict, models: dict, s_logits, t_logits, cfg: TrainCfg) -> None:
    if "disc" not in models or cfg.loss.adversarial <= 0:
        return
    adv = L.adversarial_losses(models["disc"], F.softmax(s_logits, dim=1),
                               F.softmax(t_logits.detach(), dim=1), cfg.loss.adversarial_kind)
    terms["adversarial"] = adv.g_loss
    terms[DISC_KEY] = adv.d_loss


def _use(weight: float) -> bool:
    return weight > 0


def _kd_terms(terms: dict, s: dict, t: dict, cfg: TrainCfg, mask, suffix: str = "") -> None:
    """The two distillation terms of one (student, teacher) output pair, where switched on:
    pixel-wise KD of the logits and affinity KD of the "feat" maps (keys + suffix)."""
    if _use(cfg.loss.pixel_kd):
        terms["pixel_kd" + suffix] = _kd(s, t, cfg, mask)
    if _use(cfg.loss.affinity):
        terms["affinity" + suffix] = _aff(s["feat"], t["feat"], cfg)


def _unpack(batch: dict, models: dict, cfg: TrainCfg):
    """(loss cfg, teacher, student, events, image, valid mask or None) of a BMR step."""
    return (cfg.loss, models["teacher"], models["student"], batch["events"], batch["image"],
            batch.get("valid"))


def _both(mask, other: torch.Tensor) -> torch.Tensor:
    """mask & other, where a missing mask means every pixel."""
    return other if mask is None else mask & other


def events_gt_step(batch: dict, models: dict, cfg: TrainCfg) -> dict[str, torch.Tensor]:
    return {"ce": L.task_ce(models["student"](batch["events"]), batch["label"])}


def pseudo_aps_step(batch: dict, models: dict, cfg: TrainCfg) -> dict[str, torch.Tensor]:
    mask = batch.get("valid")
    with torch.no_grad():
        pseudo = models["teacher"](batch["image"]).argmax(dim=1)
    if mask is not None:
        pseudo = pseudo.masked_fill(~mask, IGNORE)
    return {"ce": L.task_ce(models["student"](batch["events"]), pseudo)}


def paired_step(batch: dict, models: dict, cfg: TrainCfg) -> dict[str, torch.Tensor]:
    """EvDistill on events and the APS frame of the same instant (no labels)."""
    w, teacher, student, events, image, mask = _unpack(batch, models, cfg)
    size = image.shape[2:]
    terms: dict[str, torch.Tensor] = {}
    s = student.forward_features(events)
    with torch.no_grad():
        t = teacher.forward_features(image)
    bmr = "e2a" in models
    # the pixels where the real frame measured something
    seen = _both(mask, L.unclipped(image)) if w.frame_clip_mask else mask
    _kd_terms(terms, s, t, cfg, seen, "/frame" if bmr else "")
    if bmr:
        x = _e2a(models, s, size, w.e2a_detach)
        if _use(w.recon) and w.recon_e2a:
            terms["recon/e2a"] = _recon(x, image, cfg, image=True, mask=seen)
        if w.recon_kd_where != "none":
            with torch.no_grad():
                t_x = teacher.forward_features(x)
            where = _both(mask, ~L.unclipped(image)) if w.recon_kd_where == "clipped" else mask
            if w.recon_kd_min_conf > 0:       # only what the teacher reads with confidence
                sure = F.softmax(t_x["logits"], dim=1).amax(dim=1) >= w.recon_kd_min_conf
                where = _both(where, sure)
            _kd_terms(terms, s, t_x, cfg, where, "/recon")
        if "a2e" in models:
            e = models["a2e"](image)
            if _use(w.recon) and w.recon_a2e:
                terms["recon/a2e"] = _recon(e, events, cfg, image=False, mask=mask)
            _kd_terms(terms, student.forward_features(e), t, cfg, seen, "/a2e")
        if _use(w.consistency):
            terms["consistency"] = L.consistency(teacher(x), t["logits"], T=w.temperature,
                                                 mask=seen)
    _adversarial(terms, models, s["logits"], t["logits"], cfg)
    return terms


def unpaired_step(batch: dict, models: dict, cfg: TrainCfg) -> dict[str, torch.Tensor]:
    """EvDistill on unlabelled events and labelled images of other instants (BMR pairs them)."""
    w, teacher, student, events, image, mask = _unpack(batch, models, cfg)
    size = image.shape[2:]
    terms: dict[str, torch.Tensor] = {}

    # events side: the student on real (unlabelled) events, the teacher on E2A's picture of them
    s = student.forward_features(events)
    x = _e2a(models, s, size, w.e2a_detach)
    with torch.no_grad():
        t_x = teacher.forward_features(x)
    _kd_terms(terms, s, t_x, cfg, mask, "/events")

    # image side: the student on A2E's events of a labelled image, the teacher on the image
    s_e = student.forward_features(models["a2e"](image))
    with torch.no_grad():
        t = teacher.forward_features(image)
    if _use(w.ce):
        terms["ce"] = L.task_ce(s_e["logits"], batch["label"])
    _kd_terms(terms, s_e, t, cfg, mask, "/images")

    # the two reconstruction cycles and the teacher's agreement on the cycled image
    need_cycle = (_use(w.recon) and w.recon_e2a) or _use(w.consistency)
    x_cyc = _e2a(models, s_e, size, w.e2a_detach) if need_cycle else None
    if _use(w.recon) and w.recon_e2a:
        terms["recon/e2a"] = _recon(x_cyc, image, cfg, image=True)
    if _use(w.recon) and w.recon_a2e:
        terms["recon/a2e"] = _recon(models["a2e"](x), events, cfg, image=False, mask=mask)
    if _use(w.consistency):
        terms["consistency"] = L.consistency(teacher(x_cyc), t["logits"], T=w.temperature,
                                             mask=mask)
    _adversarial(terms, models, s["logits"], t["logits"], cfg)
    return terms


STEPS = {"paired_step": paired_step, "unpaired_step": unpaired_step,
         "events_gt_step": events_gt_step, "pseudo_aps_step": pseudo_aps_step}


def distill_step(batch: dict, models: dict, cfg: TrainCfg) -> dict[str, torch.Tensor]:
    """Stage 2 loss terms for cfg.setting (see the module doc). Unweighted scalar tensors."""
    return STEPS[S.get(cfg.setting).step](batch, models, cfg)
