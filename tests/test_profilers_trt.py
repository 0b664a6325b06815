"""TensorRT profiler: command construction, trtexec output parsing, SSH failures. Loopback only."""

from __future__ import annotations

import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from profilers.cache import CacheKey
from profilers.errors import (
    DeviceUnreachable,
    MeasurementError,
    ProfilerTimeout,
    ProfilerUnavailable,
    UnknownProfiler,
)
from profilers.registry import get_profiler
from profilers.trt import (
    JETPACK_TRTEXEC,
    SshTarget,
    TrtProfiler,
    parse_trtexec_output,
    scp_command,
    ssh_command,
    trtexec_command,
    trtexec_timing_args,
)

FIXTURES = Path(__file__).parent / "fixtures" / "trtexec"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def tiny_onnx(path, shape=(1, 3, 8, 8)):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, list(shape))
    w = helper.make_tensor("w", TensorProto.FLOAT, [shape[1], shape[1], 1, 1],
                           np.eye(shape[1], dtype=np.float32).ravel().tolist())
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["output"])], "g", [x], [y], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


class FakeRunner:
    """Records argument lists; answers by the first word of the remote command."""

    def __init__(self, answers=None, raise_on=None):
        self.calls: list[tuple[list[str], float]] = []
        self.answers = answers or {}
        self.raise_on = raise_on or {}

    def __call__(self, argv, timeout):
        argv = list(argv)
        self.calls.append((argv, timeout))
        assert all(isinstance(a, str) for a in argv)
        if argv[0] == "ssh":
            remote = shlex.split(argv[-1])
            word = remote[0] if remote[0] not in ("command",) else "command"
            if Path(remote[0]).name == "trtexec":
                word = "trtexec"
        else:
            word = argv[0]
        if word in self.raise_on:
            raise self.raise_on[word]
        rc, out, err = self.answers.get(word, (0, "", ""))
        if callable(out):
            out = out(argv)
        return subprocess.CompletedProcess(argv, rc, out, err)


# -- spec and command construction ----------------------------------------------------------------
def test_ssh_target_parse():
    t = SshTarget.parse("ssh://nvidia@orin.local:2222/home/nvidia/ens?trtexec=/usr/src/tensorrt/bin/trtexec")
    assert (t.user, t.host, t.port, t.remote_dir, t.trtexec) == (
        "nvidia", "orin.local", 2222, "/home/nvidia/ens", "/usr/src/tensorrt/bin/trtexec")
    assert t.destination == "nvidia@orin.local"
    assert SshTarget.parse(t.url) == t
    bare = SshTarget.parse("jetson")
    assert bare.user is None and bare.port is None and bare.remote_dir == "/tmp/ens-trt"
    assert SshTarget.parse("ssh://[fe80::1]").host == "[fe80::1]"


@pytest.mark.parametrize("bad", ["ssh://-oProxyCommand=x@h", "ssh://u@-h", "ssh://u@h/tmp/a b",
                                 "ssh://u@h/tmp/$(id)", "ssh://u@h/../etc", "ssh://u@h?trtexec=-x",
                                 "ssh://u@h?foo=1", "ssh://u:secret@h", "ssh://u@h:notaport"])
def test_ssh_target_rejects_unsafe(bad):
    with pytest.raises(UnknownProfiler):
        SshTarget.parse(bad)


def test_ssh_command_is_an_argument_list_with_safe_options():
    t = SshTarget.parse("ssh://nvidia@orin:2222")
    argv = ssh_command(t, ["trtexec", "--onnx=/tmp/a b.onnx", "--saveEngine=/tmp/x;rm -rf ~"], connect_timeout=7)
    assert argv[:5] == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=7"]
    assert argv[argv.index("-p") + 1] == "2222"
    dd = argv.index("--")
    assert argv[dd + 1] == "nvidia@orin" and len(argv) == dd + 3
    # ssh hands the last word to the remote shell: it must split back into the same arguments
    assert shlex.split(argv[-1]) == ["trtexec", "--onnx=/tmp/a b.onnx", "--saveEngine=/tmp/x;rm -rf ~"]


def test_scp_command():
    t = SshTarget.parse("ssh://nvidia@orin:2222/data/ens")
    argv = scp_command(t, "model.onnx", "/data/ens/ens-0123.onnx", connect_timeout=5)
    assert argv[0] == "scp" and "BatchMode=yes" in argv and "ConnectTimeout=5" in argv
    assert argv[argv.index("-P") + 1] == "2222"
    dd = argv.index("--")
    assert Path(argv[dd + 1]).is_absolute() and argv[dd + 1].endswith("model.onnx")
    assert argv[dd + 2] == "nvidia@orin:/data/ens/ens-0123.onnx"
    with pytest.raises(ValueError):
        scp_command(t, "m.onnx", "/data/$(id).onnx")


def test_trtexec_command_precisions():
    base = ["trtexec", "--onnx=/r/m.onnx"]
    fp16 = trtexec_command("trtexec", "/r/m.onnx", "/r/m.engine", "fp16")
    assert fp16 == base + ["--fp16", "--saveEngine=/r/m.engine"]
    assert trtexec_command("trtexec", "/r/m.onnx", "/r/m.engine", "int8") == base + [
        "--int8", "--fp16", "--saveEngine=/r/m.engine"]
    assert trtexec_command("trtexec", "/r/m.onnx", "/r/m.engine", "fp32") == base + ["--saveEngine=/r/m.engine"]
    assert trtexec_command("t", "a", "b", "fp16", ["--useSpinWait"])[-1] == "--useSpinWait"
    with pytest.raises(ValueError):
        trtexec_command("t", "a", "b", "bf16")


# -- parsing --------------------------------------------------------------------------------------
def test_parse_trt10_fp16_summary():
    p = parse_trtexec_output(fixture("orin_trt10_fp16.txt"))
    g = p["gpu_compute_ms"]
    assert g["median"] == pytest.approx(3.09082) and g["p90"] == pytest.approx(3.12305)
    assert g["min"] == pytest.approx(3.02979) and g["p99"] == pytest.approx(3.31689)
    assert p["latency_ms"]["median"] == pytest.approx(3.16211)  # not the H2D/D2H lines
    assert p["h2d_ms"]["median"] == pytest.approx(0.0546875)
    assert p["throughput_qps"] == pytest.approx(321.376)
    assert p["queries"] == 967 and p["walltime_s"] == pytest.approx(3.00894)
    assert p["total_gpu_compute_s"] == pytest.approx(2.99636)
    assert p["trt_version"] == "10.3.0" and p["gpu"] == "Orin" and p["passed"]


def test_parse_trt84_summary_without_p90():
    p = parse_trtexec_output(fixture("orin_trt84_int8.txt"))
    g = p["gpu_compute_ms"]
    assert g["median"] == pytest.approx(6.27344) and "p90" not in g and g["p99"] == pytest.approx(7.09863)
    assert p["latency_ms"]["median"] == pytest.approx(6.37695)
    assert p["trt_version"] == "8.4.1" and p["queries"] == 470


def test_parse_failed_output_is_a_clear_error():
    with pytest.raises(MeasurementError) as e:
        parse_trtexec_output(fixture("trt10_parse_failed.txt"))
    assert "FAILED" in str(e.value) and "Failed to parse onnx file" in str(e.value)


@pytest.mark.parametrize("text", ["", "garbage\n", "[I] GPU Compute Time: min = 1 ms, max = 2 ms\n",
                                  fixture("orin_trt10_fp16.txt").split("=== Performance summary ===")[0]])
def test_parse_malformed_output(text):
    with pytest.raises(MeasurementError):
        parse_trtexec_output(text)


# -- remote flow with an injected runner ----------------------------------------------------------
def answers_ok(trt_out=None):
    return {
        "command": (0, "/usr/src/tensorrt/bin/trtexec\n", ""),
        "mkdir": (0, "", ""),
        "scp": (0, "", ""),
        "trtexec": (0, trt_out or fixture("orin_trt10_fp16.txt"), ""),
        "rm": (0, "", ""),
    }


def test_remote_measure_flow(tmp_path):
    runner = FakeRunner(answers_ok())
    prof = get_profiler("trt:ssh://nvidia@orin.local/tmp/ens", runner=runner, build_timeout_s=99)
    prof.check()
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    r = prof.measure(onnx_path, (1, 3, 8, 8))
    assert r.median_ms == pytest.approx(3.09082) and r.p90_ms == pytest.approx(3.12305)
    assert r.runs == 967 and r.precision == "fp16" and r.device == "ssh:nvidia@orin.local"
    assert r.details["source"] == "reported" and r.details["metric"] == "GPU Compute Time"
    kinds = [shlex.split(a[-1])[0] if a[0] == "ssh" else a[0] for a, _ in runner.calls]
    assert kinds == ["command", "mkdir", "scp", "/usr/src/tensorrt/bin/trtexec", "rm"]
    trt_argv, trt_timeout = runner.calls[3]
    remote = shlex.split(trt_argv[-1])
    assert remote[1].startswith("--onnx=/tmp/ens/ens-") and "--fp16" in remote
    assert any(a.startswith("--saveEngine=/tmp/ens/") for a in remote)
    assert trt_timeout == 99
    assert all(t > 0 for _, t in runner.calls)


def test_remote_int8_needs_qdq_graph(tmp_path):
    prof = TrtProfiler("ssh://u@h", runner=FakeRunner(answers_ok()))
    with pytest.raises(MeasurementError, match="Q/DQ"):
        prof.measure(tiny_onnx(tmp_path / "m.onnx"), (1, 3, 8, 8), precision="int8")


def test_trtexec_not_found_remotely():
    runner = FakeRunner({"command": (1, "", "")})
    with pytest.raises(ProfilerUnavailable, match="trtexec not found"):
        TrtProfiler("ssh://u@h", runner=runner).check()
    tried = [shlex.split(a[-1])[-1] for a, _ in runner.calls]
    assert tried == ["trtexec", JETPACK_TRTEXEC]


def test_unreachable_host_via_exit_255():
    runner = FakeRunner({"command": (255, "", "ssh: connect to host h port 22: Connection refused\n")})
    with pytest.raises(DeviceUnreachable, match="Connection refused"):
        TrtProfiler("ssh://u@h", runner=runner).check()


def test_timeout_is_profiler_timeout(tmp_path):
    runner = FakeRunner(answers_ok(), raise_on={"trtexec": subprocess.TimeoutExpired("ssh", 5)})
    prof = TrtProfiler("ssh://u@h", runner=runner)
    with pytest.raises(ProfilerTimeout):
        prof.measure(tiny_onnx(tmp_path / "m.onnx"), (1, 3, 8, 8))
    assert [shlex.split(a[-1])[0] for a, _ in runner.calls if a[0] == "ssh"][-1] == "rm"  # cleaned up


def test_trtexec_failure_is_measurement_error(tmp_path):
    ans = answers_ok()
    ans["trtexec"] = (1, fixture("trt10_parse_failed.txt"), "")
    with pytest.raises(MeasurementError, match="Failed to parse onnx file"):
        TrtProfiler("ssh://u@h", runner=FakeRunner(ans)).measure(tiny_onnx(tmp_path / "m.onnx"), (1, 3, 8, 8))


def test_shape_mismatch_is_caught_before_copying(tmp_path):
    runner = FakeRunner(answers_ok())
    with pytest.raises(MeasurementError, match="1x3x8x8"):
        TrtProfiler("ssh://u@h", runner=runner).measure(tiny_onnx(tmp_path / "m.onnx"), (1, 3, 16, 16))
    assert runner.calls == []


def test_old_trtexec_p90_is_nan(tmp_path):
    runner = FakeRunner(answers_ok(fixture("orin_trt84_int8.txt")))
    r = TrtProfiler("ssh://u@h", runner=runner).measure(tiny_onnx(tmp_path / "m.onnx"), (1, 3, 8, 8))
    assert r.median_ms == pytest.approx(6.27344) and math.isnan(r.p90_ms) and "percentile(90%)" in r.details["note"]


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client")
def test_real_ssh_to_closed_loopback_port_is_unreachable():
    prof = TrtProfiler("ssh://nobody@127.0.0.1:1", connect_timeout_s=3, check_timeout_s=20)
    with pytest.raises(DeviceUnreachable, match="127.0.0.1"):
        prof.check()


def test_missing_ssh_binary_is_unavailable():
    def runner(argv, timeout):
        raise FileNotFoundError(argv[0])

    with pytest.raises(ProfilerUnavailable, match="ssh"):
        TrtProfiler("ssh://u@h", runner=runner).check()


# -- local --------------------------------------------------------------------------------------------
def test_local_without_tensorrt_or_trtexec_is_clear(monkeypatch):
    import profilers.trt as trt_mod

    monkeypatch.setattr(trt_mod, "_tensorrt_importable", lambda: False)
    monkeypatch.setattr(trt_mod.shutil, "which", lambda name: None)
    with pytest.raises(ProfilerUnavailable, match="trt:ssh://"):
        TrtProfiler().check()


def test_local_trtexec_on_path(monkeypatch, tmp_path):
    import profilers.trt as trt_mod

    monkeypatch.setattr(trt_mod, "_tensorrt_importable", lambda: False)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails
    monkeypatch.setattr(trt_mod, "_torch_gpu_name", lambda: None)
    monkeypatch.setattr(trt_mod.shutil, "which", lambda name: "/opt/trt/bin/trtexec" if name == "trtexec" else None)
    runner = FakeRunner({"/opt/trt/bin/trtexec": (0, fixture("orin_trt10_fp16.txt"), "")})
    prof = TrtProfiler(runner=runner)
    prof.check()
    r = prof.measure(tiny_onnx(tmp_path / "m.onnx"), (1, 3, 8, 8))
    # no GPU name could be read; the version is the banner of the trtexec that measures
    assert r.median_ms == pytest.approx(3.09082) and r.device == "local-gpu|trt-10.3.0"
    argv = runner.calls[0][0]
    assert argv[0] == "/opt/trt/bin/trtexec" and argv[1] == f"--onnx={(tmp_path / 'm.onnx').resolve()}"
    assert runner.calls[1][0] == ["/opt/trt/bin/trtexec", "--help"]


# -- trtexec timing flags -----------------------------------------------------------------------------
def test_remote_trtexec_gets_warmup_runs_and_cuda_graph_from_the_spec(tmp_path):
    runner = FakeRunner(answers_ok())
    prof = get_profiler("trt:ssh://u@h?warmup=5&runs=50&use_cuda_graph=1", runner=runner)
    prof.measure(tiny_onnx(tmp_path / "m.onnx"), (1, 3, 8, 8))
    remote = [shlex.split(a[-1]) for a, _ in runner.calls if a[0] == "ssh"]
    trtexec_argv = next(r for r in remote if r[0] == JETPACK_TRTEXEC)
    for flag in ("--warmUp=5", "--iterations=50", "--avgRuns=50", "--duration=0", "--useCudaGraph"):
        assert flag in trtexec_argv
    assert "--noDataTransfers" not in trtexec_argv


def test_local_trtexec_gets_the_timing_flags_then_the_callers_args(monkeypatch, tmp_path):
    import profilers.trt as trt_mod

    monkeypatch.setattr(trt_mod, "_tensorrt_importable", lambda: False)
    monkeypatch.setattr(trt_mod.shutil, "which", lambda name: "/opt/trt/bin/trtexec" if name == "trtexec" else None)
    runner = FakeRunner({"/opt/trt/bin/trtexec": (0, fixture("orin_trt10_fp16.txt"), "")})
    prof = get_profiler("trt?no_data_transfers=yes", runner=runner, trtexec_args=["--useSpinWait"])
    prof.measure(tiny_onnx(tmp_path / "m.onnx"), (1, 3, 8, 8))
    argv = runner.calls[0][0]
    tail = ["--warmUp=200", "--iterations=200", "--avgRuns=200", "--duration=0", "--noDataTransfers", "--useSpinWait"]
    assert argv[-len(tail):] == tail and "--useCudaGraph" not in argv


def test_trtexec_timing_args():
    assert trtexec_timing_args(0, 1) == ["--warmUp=0", "--iterations=1", "--avgRuns=1", "--duration=0"]
    assert trtexec_timing_args(10, 5, True, True)[-2:] == ["--useCudaGraph", "--noDataTransfers"]


def test_trt_spec_keeps_the_measurement_flags():
    for spec in ("trt?use_cuda_graph=1", "trt:ssh://u@h?trtexec=/opt/trtexec&no_data_transfers=1",
                 "trt:ssh://u@h?use_cuda_graph=1&no_data_transfers=1"):
        p = get_profiler(spec)
        assert p.spec == spec and get_profiler(p.spec).spec == spec
    assert get_profiler("trt?use_cuda_graph=yes&warmup=5&runs=9").spec == "trt?use_cuda_graph=1"


# -- the local device: GPU name and TensorRT version ----------------------------------------------------
def fake_local(monkeypatch, gpu=None, trt_version=None, torch_gpu=None, trtexec_banner=None):
    """A machine whose nvidia-smi names ``gpu``, torch ``torch_gpu``, and tensorrt / trtexec are that version."""
    import profilers.trt as trt_mod

    tools = {"nvidia-smi": "/usr/bin/nvidia-smi" if gpu else None,
             "trtexec": "/usr/bin/trtexec" if trtexec_banner else None}
    monkeypatch.setattr(trt_mod.shutil, "which", lambda name: tools.get(name))
    monkeypatch.setattr(trt_mod, "_torch_gpu_name", lambda: torch_gpu)
    module = SimpleNamespace(__version__=trt_version) if trt_version else None
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return FakeRunner({"/usr/bin/nvidia-smi": (0, f"{gpu}\n", ""), "/usr/bin/trtexec": (0, trtexec_banner, "")})


def test_local_device_names_the_gpu_and_the_tensorrt_version(monkeypatch):
    h200 = TrtProfiler(runner=fake_local(monkeypatch, gpu="NVIDIA H200", trt_version="10.3.0"))
    assert h200.device == "NVIDIA H200|trt-10.3.0"
    runner = fake_local(monkeypatch, gpu="NVIDIA A100-SXM4-80GB", trt_version="10.3.0")
    a100 = TrtProfiler(runner=runner)
    assert a100.device == "NVIDIA A100-SXM4-80GB|trt-10.3.0"
    assert CacheKey.make("arch", h200, "1x3x8x8", "fp16") != CacheKey.make("arch", a100, "1x3x8x8", "fp16")
    assert h200.device == "NVIDIA H200|trt-10.3.0"  # read once: lookup and store use the same key
    assert runner.calls[0][0] == ["/usr/bin/nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"]
    newer = TrtProfiler(runner=fake_local(monkeypatch, gpu="NVIDIA H200", trt_version="10.8.0"))
    assert newer.device == "NVIDIA H200|trt-10.8.0"


def test_local_device_follows_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    runner = fake_local(monkeypatch, gpu="NVIDIA H200", trt_version="10.3.0")
    assert TrtProfiler(runner=runner).device == "NVIDIA H200|trt-10.3.0"
    assert runner.calls[0][0][-2:] == ["-i", "3"]


def test_local_device_fallbacks(monkeypatch):
    banner = "&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec --help\n"
    assert TrtProfiler(runner=fake_local(monkeypatch, torch_gpu="Orin", trtexec_banner=banner)).device == (
        "Orin|trt-8.6.1")
    assert TrtProfiler(runner=fake_local(monkeypatch)).device == "local-gpu|trt-unknown"
    failing = fake_local(monkeypatch, gpu="NVIDIA H200")
    failing.answers["/usr/bin/nvidia-smi"] = (9, "", "NVIDIA-SMI has failed")
    assert TrtProfiler(runner=failing).device == "local-gpu|trt-unknown"
    assert TrtProfiler("ssh://u@orin:2222", runner=fake_local(monkeypatch, gpu="X")).device == "ssh:u@orin:2222"
