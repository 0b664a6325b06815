"""The search's picks checked on whole held-out images, as the papers evaluate.

A trial is scored on the zoo's held-out patches (32 of 48 px at tiny): fast enough for 30+ trials a minute,
but a teacher whose attention pools over the whole image is handicapped there. On the shipped derain zoo the
teacher scores 31.04 dB on the two whole held-out images and 26.53 dB on the patches, 9 of 16 random T/M/E
hybrids lie within 0.3 dB of it on the patches and 2 on whole images (Kendall tau 0.25 between the two
rankings; ``bench/bench_val_patch.py``), and the three derain trials one ``bench/run_all.py`` run picked within
0.3 dB on the patches lost 0.60-0.63 dB on whole images (record ``run_all-2026-12-04b.json``; deblur's and
denoise's held, 0.16-0.23 dB; in the next run every task's picks held).

``ens search --whole-check K`` scores the all-T trial and the ``K`` trials fastest by the study's latency within
``--zoo-front-target`` dB of it on the patches (``finalists.pick_finalists``) on the whole held-out images, and
keeps the result in the study's user attr ``whole_check``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import optuna
import torch

from ens.evaluate import evaluate
from ens.search.finalists import pick_finalists
from search_spaces.arch import Arch

STUDY_ATTR = "whole_check"


@dataclass(frozen=True)
class WholeImageScore:
    trial: int
    arch: str
    patch_loss_db: float  # all-T's PSNR minus this trial's, on the held-out patches (the study's score)
    whole_psnr: float
    whole_loss_db: float  # the same on the whole held-out images
    within_target: bool  # whole_loss_db <= the target


def check_on_whole_images(study: optuna.Study, k: int, target_db: float, zoo: Any, task: Any,
                          pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
                          log: Callable[[str], None] = print) -> list[WholeImageScore]:
    """Score all-T and the ``k`` fastest trials within ``target_db`` (patches) on ``pairs``; store and return them.

    ``zoo``: the study's :class:`ens.zoo.store.Zoo`; ``pairs``: whole (degraded, clean) images, [C, H, W] each."""
    ref, picked = pick_finalists(study, k, target_db)
    record: dict[str, Any] = {"target_db": target_db, "images": len(pairs), "all_t_trial": ref.number,
                              "all_t_psnr": None, "rows": []}
    if not picked:
        study.set_user_attr(STUDY_ATTR, record)
        log(f"whole images: no trial within {target_db:g} dB of all-T to check")
        return []
    net = zoo.supernet().eval()

    def score(arch: str) -> float:
        net.set_kinds(Arch.parse(arch).block_kinds(zoo.config))
        return evaluate(net, pairs, task, with_ssim=False).psnr

    with torch.no_grad():
        t_psnr = score(ref.user_attrs["arch"])
        rows = []
        for t in picked:
            p = score(t.user_attrs["arch"])
            rows.append(WholeImageScore(t.number, t.user_attrs["arch"],
                                        round(ref.user_attrs["psnr"] - t.user_attrs["psnr"], 4), round(p, 4),
                                        round(t_psnr - p, 4), t_psnr - p <= target_db))
    study.set_user_attr(STUDY_ATTR, {**record, "all_t_psnr": round(t_psnr, 4), "rows": [asdict(r) for r in rows]})
    held = [r for r in rows if r.within_target]
    log(f"whole images: {len(held)} of {len(rows)} trials within {target_db:g} dB of all-T on the patches stay "
        f"within it on {len(pairs)} whole held-out image(s)"
        + (f" (the fastest: trial {held[0].trial}, which loses {held[0].whole_loss_db:.2f} dB)" if held else
           f" (the closest loses {min(r.whole_loss_db for r in rows):.2f} dB)"))
    return rows
