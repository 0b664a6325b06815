"""Where the time goes, by slot: ONNX node times of a ``HybridUNet`` grouped by the part of the network they run.

torch's ONNX exporter (TorchScript, ``dynamo=False``: :func:`profilers.onnx_export.export_onnx`) names each
node by its module path, e.g. ``/enc2/enc2.0/M/scan/Conv``: stage ``enc2``, slot 0, block kind ``M``
(``HybridUNet.stages[stage][i].choices[kind]``; the exporter drops the ``stages`` and ``choices`` containers).
:func:`stage_of` reads that path; :func:`stage_summary` sums the per-scope times of an ort-cpu breakdown
(``details["breakdown"]["by_scope"]``, where ORT's fused and layout nodes already count under the node they
work for) into one row per slot, down/up sampler, the stem (``patch_embed``), the output convolution and
"other" (the skip joins ``join1-3``, the 1x1 reduce convolutions, the residual add, anything unnamed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from blocks.unet import STAGES

#: what each row is
SLOT, SAMPLER, STEM, OUTPUT, OTHER = "slot", "sampler", "stem", "output", "other"

#: ``HybridUNet``'s modules outside the slots, by attribute name (tests/test_stages.py checks them)
STEM_MODULE = "patch_embed"
OUTPUT_MODULE = "output"
#: the sampler that follows each stage in ``HybridUNet.forward`` (down after enc1-3, up after lat, dec3, dec2)
SAMPLER_AFTER: dict[str, str] = {
    "enc1": "down1_2", "enc2": "down2_3", "enc3": "down3_4", "lat": "up4_3", "dec3": "up3_2", "dec2": "up2_1",
}

_INDEX = re.compile(r"(?:.*\.)?(\d+)$")  # "enc1.0" (or "stages.enc1.0", or "0") -> 0
_KIND = re.compile(r"[A-Z]$")  # a block kind is one upper-case letter (blocks.registry)


@dataclass(frozen=True)
class StageShare:
    """One row of the summary: ``ms`` per run (ONNX Runtime's profiled pass) and its share of all of them."""

    stage: str  # "enc1[0] T", "down1_2", "stem", "output" or "other"
    part: str  # SLOT, SAMPLER, STEM, OUTPUT or OTHER
    ms: float
    share: float  # 0..1; the rows of one summary add up to 1
    nodes: int  # timed ONNX nodes counted here

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def slot_label(stage: str, index: int, kind: str) -> str:
    """``enc1[0] T``: block ``index`` of ``stage``, of kind ``kind``."""
    return f"{stage}[{index}] {kind}"


def _parts(node_name: str) -> list[str]:
    return [p for p in node_name.split("/") if p] if node_name.startswith("/") else []


def stage_of(node_name: str, kinds: Mapping[str, Sequence[str]] | None = None) -> str:
    """The row of a node (``/enc1/enc1.0/T/attn/qkv/Conv``) or a module scope (``/enc1/enc1.0/T``).

    A slot is labelled with the kind its path names (``enc1[0] T``), else with its kind in ``kinds``, else
    ``?``; a sampler by its module name (``down1_2``); then ``stem``, ``output``, and ``other`` for the rest
    (top-level ops, reduce convolutions, and names without a module path, such as a dynamo export's).
    """
    parts = _parts(node_name)
    if parts and parts[0] == "stages":  # a path that keeps the ModuleDict's name
        parts = parts[1:]
    if not parts:
        return OTHER
    head = parts[0]
    if head == STEM_MODULE:
        return STEM
    if head == OUTPUT_MODULE:
        return OUTPUT
    if head in SAMPLER_AFTER.values():
        return head
    if head not in STAGES or len(parts) < 2 or not (m := _INDEX.fullmatch(parts[1])):
        return OTHER
    index = int(m.group(1))
    kind = parts[2] if len(parts) > 2 and _KIND.fullmatch(parts[2]) else None
    if kind is None:
        known = (kinds or {}).get(head, ())
        kind = known[index] if index < len(known) else "?"
    return slot_label(head, index, kind)


def _rows(kinds: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """(label, part) of every row, in the order data flows through the network."""
    rows = [(STEM, STEM)]
    for stage in STAGES:
        rows += [(slot_label(stage, i, k), SLOT) for i, k in enumerate(kinds.get(stage, ()))]
        if stage in SAMPLER_AFTER:
            rows.append((SAMPLER_AFTER[stage], SAMPLER))
    return rows + [(OUTPUT, OUTPUT), (OTHER, OTHER)]


def stage_summary(breakdown: Mapping[str, Any], kinds: Mapping[str, Sequence[str]]) -> list[StageShare]:
    """One row per slot of ``kinds`` (block kinds per stage), sampler, stem, output and other, in data-flow order.

    ``breakdown`` is ort-cpu's (``OrtCpuProfiler.profile_ops``); its ``by_scope`` times are summed by
    :func:`stage_of` (no ``by_scope``: no rows). A row with no node is kept at 0 ms; a slot the arch does not
    have (a mismatch between the file and ``kinds``) gets a row of its own before ``other``. The shares add
    up to 1 (all zero when nothing was timed).
    """
    if "by_scope" not in breakdown:
        return []
    rows = _rows(kinds)
    ms: dict[str, float] = {label: 0.0 for label, _ in rows}
    nodes: dict[str, int] = {label: 0 for label, _ in rows}
    for e in breakdown["by_scope"]:
        label = stage_of(str(e["scope"]), kinds)
        if label not in ms:
            rows.insert(len(rows) - 1, (label, SLOT))
            ms[label], nodes[label] = 0.0, 0
        ms[label] += float(e["ms"])
        nodes[label] += int(e.get("nodes", 1))
    total = sum(ms.values())
    return [StageShare(label, part, ms[label], ms[label] / total if total > 0 else 0.0, nodes[label])
            for label, part in rows]
