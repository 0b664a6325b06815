"""Export targets are objects in a registry; the TensorRT engine builder lives once, in profilers/trt.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from ens.errors import EnsError
from ens.finalize.targets import ExportTarget, get_target, register_target, target_names
from profilers.errors import MeasurementError


def test_each_target_knows_its_placement_bits_and_runtime(monkeypatch):
    import profilers.ort_cpu as oc

    assert set(target_names()) >= {"onnx_fp32", "onnx_int8", "trt_int8", "qnn_int8"}
    onnx, trt, qnn, fp32 = (get_target(n) for n in ("onnx_int8", "trt_int8", "qnn_int8", "onnx_fp32"))
    assert (onnx.placement, trt.placement, qnn.placement) == ("ort", "trt", "trt")
    assert onnx.fused_in_ort and not trt.fused_in_ort and not qnn.fused_in_ort
    assert onnx.uint8_activations("ort") and not onnx.uint8_activations("trt") and not trt.uint8_activations("ort")
    assert not fp32.int8 and onnx.int8 and trt.int8 and qnn.int8
    for saturates, want in ((True, 7), (False, 8)):
        monkeypatch.setattr(oc, "int8_pairs_saturate", lambda s=saturates: s)
        assert onnx.weight_bits("ort") == want
        assert trt.weight_bits("trt") == qnn.weight_bits("trt") == 8 == onnx.weight_bits("trt")
    assert onnx.weight_bits("ort", requested=8) == 8 and onnx.placement_for("trt") == "trt"
    with pytest.raises(EnsError, match="unknown --export 'tflite'"):
        get_target("tflite")


def test_a_new_target_is_one_class():
    @register_target
    class TestOnlyTarget(ExportTarget):
        name = "test_only_int8"
        placement = "ort"
        description = "registered by a test"

    t = get_target("test_only_int8")
    assert t.int8 and t.placement_for() == "ort" and "test_only_int8" in target_names()
    with pytest.raises(ValueError, match="already registered"):
        register_target(TestOnlyTarget)


def test_trt_host_option_becomes_a_profiler_spec():
    class Opts:
        trt_host = "ssh://nvidia@orin.local"

    trt = get_target("trt_int8")
    assert trt.prepare.__func__ is not ExportTarget.prepare
    assert trt.prepare(Opts(), {"profiler": "lut:ort-cpu"})["trt_spec"] == "trt:ssh://nvidia@orin.local"
    Opts.trt_host = None
    assert trt.prepare(Opts(), {"profiler": "lut:trt:ssh://a@b"})["trt_spec"] == "lut:trt:ssh://a@b"


def test_remote_engine_build_cleans_up_when_trtexec_fails(tmp_path):
    from profilers.trt import TrtProfiler

    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"onnx")
    calls: list[list[str]] = []

    class Proc:
        def __init__(self, rc=0, out=""):
            self.returncode, self.stdout, self.stderr = rc, out, "boom"

    def runner(argv, timeout):
        calls.append(list(argv))
        joined = " ".join(argv)
        if "command -v" in joined:
            return Proc(0, "/usr/bin/trtexec\n")
        return Proc(1 if "trtexec --onnx" in joined else 0)

    prof = TrtProfiler("ssh://nvidia@orin.local/tmp/e", runner=runner)
    with pytest.raises(MeasurementError, match="trtexec failed on nvidia@orin.local"):
        prof.build_engine(onnx_file, tmp_path / "m.engine")
    assert "rm -f" in " ".join(calls[-1]) and "/tmp/e/ens-final-" in " ".join(calls[-1])
    assert not Path(tmp_path / "m.engine").exists()
