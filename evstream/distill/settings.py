"""The training settings of stage 2, as a table: what data the student sees and who supervises it.

Each `Setting` says which parts of a sample stage 2 reads, whether events and images come from
the same instant, whether a teacher is needed, what BMR (E2A/A2E) does there, whether labels are
used, and which step function (evstream.distill.task) turns a batch into loss terms. The trainer,
the config checks and the CLI read this table; nothing else branches on a setting's name.

    paired      EvDistill as the paper ran it on DDD17 and MVSEC: events and the APS frame of the
                same instant, NO labels. BMR crafts pairs: E2A reconstructs the frame from the
                student's event features (supervised by the real frame), A2E turns the frame
                into events (supervised by the real window). The frozen teacher distils on the
                real frame and on E2A's reconstruction, and its prediction on the reconstruction
                is held to its prediction on the frame; pixel-wise distribution matching (KL)
                and affinity-graph KD on every pair. loss.bmr=false leaves pixel + affinity KD
                on the real frames only (the "without BMR" ablation).
    unpaired    the N-Caltech101 setting: unlabelled events plus labelled images of OTHER
                instants (or another dataset). BMR is what pairs them: the teacher reads
                E2A(student(events)) on the events side, the student reads A2E(image) on the
                image side (with the image's label and the teacher's prediction on the image).
                Old name: "paper" (accepted as an alias).
    events_gt   baseline (upper reference): the student on events with ground-truth labels.
    pseudo_aps  baseline "KD with APS frames": the student on events with the teacher's argmax
                labels of the paired APS frame (no ground truth).
"""

from __future__ import annotations

from dataclasses import dataclass

from evstream.errors import EvstreamError


@dataclass(frozen=True)
class Setting:
    name: str
    parts: tuple[str, ...]        # sample parts stage 2 reads ("events", "image", "label")
    pairing: str                  # "same instant" | "unpaired" (images of other samples)
    teacher: bool                 # needs a (frozen) teacher in stage 2
    bmr: str                      # "required" | "optional" (loss.bmr) | "none"
    labels: bool                  # ground-truth labels reach the student
    step: str                     # the step function's name in evstream.distill.task
    needs_why: str                # the reason named when a dataset lacks a part


SETTINGS_TABLE: dict[str, Setting] = {s.name: s for s in (
    Setting("paired", ("events", "image"), "same instant", True, "optional", False,
            "paired_step", "events and APS frames of the same instant"),
    Setting("unpaired", ("events", "image", "label"), "unpaired", True, "required", True,
            "unpaired_step", "events and labelled images"),
    Setting("events_gt", ("events", "label"), "same instant", False, "none", True,
            "events_gt_step", "labelled events"),
    Setting("pseudo_aps", ("events", "image"), "same instant", True, "none", False,
            "pseudo_aps_step", "events with paired APS frames"),
)}
ALIASES = {"paper": "unpaired"}
SETTINGS = tuple(SETTINGS_TABLE)
CHOICES = SETTINGS + tuple(ALIASES)


def canonical(name: str) -> str:
    """The setting's table name (aliases resolved) or a one-line error."""
    name = ALIASES.get(name, name)
    if name not in SETTINGS_TABLE:
        raise EvstreamError(f"config setting: {name!r} is not one of {', '.join(SETTINGS)} "
                            f"(or the alias {', '.join(ALIASES)})")
    return name


def get(name: str) -> Setting:
    return SETTINGS_TABLE[canonical(name)]


def uses_bmr(name: str, bmr_switch: bool) -> bool:
    s = get(name)
    return s.bmr == "required" or (s.bmr == "optional" and bmr_switch)
