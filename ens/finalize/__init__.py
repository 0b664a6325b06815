"""``ens finalize``: QDR quantization-aware distillation of a Pareto trial and its INT8 export.

Public API:

- :func:`run_finalize` ``(FinalizeOptions, log=print) -> FinalizeResult`` (:mod:`ens.finalize.pipeline`)
- :func:`pick_trial` ``(study, trial=None, latency_budget=None, pick=None) -> Picked`` (:mod:`.pick`)
- :class:`QDRConfig`, :func:`finetune_fp32`, :func:`qdr_train` (:mod:`.qat`)
- losses and LMR (:mod:`.losses`), the SPARK policy (:mod:`.spark`), exports and checks (:mod:`.export`),
  the report and model card (:mod:`.report`), the export targets (:mod:`.targets`)
"""

from ens.finalize.export import EngineNotBuilt, ExportError
from ens.finalize.pick import Picked, PickError, knee_index, pick_trial
from ens.finalize.pipeline import FinalizeOptions, FinalizeResult, run_finalize
from ens.finalize.qat import ABLATIONS, QATUnavailable, QDRConfig, finetune_fp32, qdr_train
from ens.finalize.targets import ExportTarget, get_target, register_target, target_names

__all__ = [
    "ABLATIONS",
    "ExportTarget",
    "EngineNotBuilt",
    "ExportError",
    "FinalizeOptions",
    "FinalizeResult",
    "PickError",
    "Picked",
    "QATUnavailable",
    "QDRConfig",
    "finetune_fp32",
    "get_target",
    "knee_index",
    "pick_trial",
    "qdr_train",
    "register_target",
    "run_finalize",
    "target_names",
]
