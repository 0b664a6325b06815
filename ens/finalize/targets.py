"""Export targets of ``ens finalize``, one object each, in a registry keyed by ``--export``.

Each target knows its Q/DQ placement and weight bits, whether its INT8 quality is measured with ONNX
Runtime's fused integer kernels (as it is deployed) or with every Q/DQ run as written (the arithmetic of a
32-bit-accumulating engine), what it needs before any training starts, and what it writes besides the
ONNX files. A new target is one class here and one :func:`register_target` line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ens.errors import EnsError

DEFAULT_QNN_DEVICE = "Snapdragon 8 Elite QRD"


@dataclass
class Deployed:
    """What a target wrote besides the ONNX files: ``info`` goes into report.json's ``export``."""

    files: list[Path] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    engine_missing: Any = None  # an ``EngineResult`` when a TensorRT engine could not be built here


class ExportTarget:
    name: ClassVar[str] = ""
    int8: ClassVar[bool] = True
    placement: ClassVar[str] = "trt"  # Q/DQ placement: "trt" (conv inputs) or "ort" (inputs and outputs)
    fused_in_ort: ClassVar[bool] = False  # INT8 quality measured with ORT's fused kernels, as deployed
    description: ClassVar[str] = ""

    def placement_for(self, requested: str = "auto") -> str:
        return self.placement if requested == "auto" else requested

    def weight_bits(self, placement: str, requested: int | None = None) -> int:
        """8-bit weights, or 7 (values in [-64, 64]) where the file runs in ONNX Runtime with fused convs
        and this CPU's u8 x s8 kernels saturate on full-range weights (``int8_pairs_saturate``)."""
        from profilers.ort_cpu import int8_pairs_saturate

        if requested is not None:
            return requested
        return 7 if self.fused_in_ort and placement == "ort" and int8_pairs_saturate() else 8

    def uint8_activations(self, placement: str) -> bool:
        """ONNX Runtime fuses QLinearConv on U8 activations; TensorRT and QNN take ModelOpt's S8."""
        return self.fused_in_ort and placement == "ort"

    def prepare(self, opts: Any, study_attrs: dict[str, Any]) -> dict[str, Any]:
        """Check what this target needs before any training (a token, a device); returns what ``deploy`` uses."""
        if self.int8:
            from ens.finalize.qat import require_modelopt

            require_modelopt()
        return {}

    def deploy(self, int8_file: Path | None, out_dir: Path, shape: tuple[int, ...], needs: dict[str, Any],
               log: Callable[[str], None]) -> Deployed:
        return Deployed()


_TARGETS: dict[str, ExportTarget] = {}


def register_target(cls: type[ExportTarget]) -> type[ExportTarget]:
    if cls.name in _TARGETS:
        raise ValueError(f"export target {cls.name!r} is already registered")
    _TARGETS[cls.name] = cls()
    return cls


def get_target(name: str) -> ExportTarget:
    try:
        return _TARGETS[name]
    except KeyError:
        raise EnsError(f"unknown --export {name!r} (choose from {', '.join(_TARGETS)})") from None


def target_names() -> list[str]:
    return list(_TARGETS)


@register_target
class TrtInt8(ExportTarget):
    name = "trt_int8"
    description = "Q/DQ ONNX and a TensorRT INT8 engine (Jetson Orin), TensorRT's Q/DQ placement"

    def prepare(self, opts: Any, study_attrs: dict[str, Any]) -> dict[str, Any]:
        super().prepare(opts, study_attrs)
        host = opts.trt_host  # --trt-host ssh://user@jetson, or a trt profiler spec
        spec = f"trt:{host}" if host and host.startswith("ssh://") else host
        return {"trt_spec": spec or study_attrs.get("profiler")}

    def deploy(self, int8_file: Path | None, out_dir: Path, shape: tuple[int, ...], needs: dict[str, Any],
               log: Callable[[str], None]) -> Deployed:
        from ens.finalize import export as ex

        assert int8_file is not None
        eng = ex.build_trt_engine(int8_file, out_dir / "model_int8.engine", needs.get("trt_spec"), log)
        if eng.built:
            return Deployed([out_dir / "model_int8.engine"], {"engine": eng.__dict__})
        script = out_dir / "build_engine.sh"
        script.write_text("#!/bin/sh\n# Build the TensorRT INT8 engine where TensorRT is installed "
                          "(Jetson: /usr/src/tensorrt/bin/trtexec).\n"
                          f"cd \"$(dirname \"$0\")\" && {eng.command}\n")
        script.chmod(0o755)
        return Deployed([script], {"engine": eng.__dict__}, engine_missing=eng)


@register_target
class OnnxInt8(ExportTarget):
    name = "onnx_int8"
    placement = "ort"
    fused_in_ort = True
    description = "Q/DQ ONNX for ONNX Runtime CPU: conv outputs quantized too, U8 activations (QLinearConv)"


@register_target
class QnnInt8(ExportTarget):
    name = "qnn_int8"
    description = "Q/DQ ONNX compiled to a QNN context binary by a Qualcomm AI Hub compile job"

    def prepare(self, opts: Any, study_attrs: dict[str, Any]) -> dict[str, Any]:
        from ens.finalize import export as ex
        from profilers.errors import ProfilerError
        from profilers.registry import get_profiler

        super().prepare(opts, study_attrs)
        device = opts.qnn_device
        if device is None and study_attrs.get("profiler"):
            try:  # a study measured on AI Hub names its device
                device = getattr(get_profiler(str(study_attrs["profiler"])).measurer, "device_name", None)
            except ProfilerError:
                device = None
        device = device or DEFAULT_QNN_DEVICE
        ex.check_qnn(device)  # no token: a clear error now, not after the training
        return {"qnn_device": device}

    def deploy(self, int8_file: Path | None, out_dir: Path, shape: tuple[int, ...], needs: dict[str, Any],
               log: Callable[[str], None]) -> Deployed:
        from ens.finalize import export as ex

        assert int8_file is not None
        qfile = out_dir / "model_int8.qnn.bin"
        return Deployed([qfile], {"qnn": ex.compile_qnn(int8_file, qfile, shape, needs["qnn_device"])})


@register_target
class OnnxFp32(ExportTarget):
    name = "onnx_fp32"
    int8 = False
    description = "the fine-tuned FP32 network as ONNX, no quantization"
