"""Qualcomm AI Hub profiler against a fake client injected at the boundary (no qai-hub, no network)."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from profilers.errors import (
    DeviceUnreachable,
    MeasurementError,
    MissingToken,
    ProfilerTimeout,
    ProfilerUnavailable,
    UnknownDevice,
    UnknownProfiler,
)
from profilers.qaihub import QaiHubProfiler, call_with_timeout, parse_profile, require_token
from profilers.registry import get_profiler

FIXTURES = Path(__file__).parent / "fixtures" / "qaihub"
DEVICE = "Snapdragon 8 Elite QRD"


def load(name):
    return json.loads((FIXTURES / name).read_text())


def tiny_onnx(path, shape=(1, 3, 8, 8)):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, list(shape))
    w = helper.make_tensor("w", TensorProto.FLOAT, [shape[1], shape[1], 1, 1],
                           np.eye(shape[1], dtype=np.float32).ravel().tolist())
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["output"])], "g", [x], [y], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


class FakeJob:
    def __init__(self, job_id, status=None, target=None, profile=None, wait_s=0.0):
        self.job_id = job_id
        self.url = f"https://workbench.example/jobs/{job_id}"
        self._status = status or SimpleNamespace(success=True, message=None, code="SUCCESS")
        self._target = target
        self._profile = profile
        self.wait_s = wait_s
        self.waited_with = None

    def wait(self, timeout=None):
        self.waited_with = timeout
        if self.wait_s:
            time.sleep(self.wait_s)
        return self._status

    def get_target_model(self):
        return self._target

    def download_profile(self):
        return self._profile


class FakeHub:
    """The slice of the ``qai_hub`` module the profiler uses, recording every call."""

    def __init__(self, devices=None, profile=None, compile_status=None, get_devices_s=0.0, error=None):
        self.calls: list[tuple[str, dict]] = []
        self.devices = devices if devices is not None else load("devices.json")["devices"]
        self.profile = profile if profile is not None else load("profile_snapdragon_8_elite.json")
        self.compile_status = compile_status
        self.get_devices_s = get_devices_s
        self.error = error

    def Device(self, name):  # noqa: N802 (qai_hub's name)
        return SimpleNamespace(name=name)

    def get_devices(self):
        self.calls.append(("get_devices", {}))
        if self.error:
            raise self.error
        if self.get_devices_s:
            time.sleep(self.get_devices_s)
        return [SimpleNamespace(name=n) for n in self.devices]

    def submit_compile_job(self, **kw):
        self.calls.append(("submit_compile_job", kw))
        return FakeJob("jcompile1", status=self.compile_status, target=SimpleNamespace(model_id="mtarget"))

    def submit_inference_job(self, **kw):
        self.calls.append(("submit_inference_job", kw))
        return FakeJob("jinfer1", profile=self.profile)


class UserError(Exception):
    """Named like qai_hub.client.UserError."""


@pytest.fixture
def token(tmp_path, monkeypatch):
    ini = tmp_path / "client.ini"
    ini.write_text("[api]\napi_token = secret-token-123\napi_url = https://x\nweb_url = https://x\n")
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(ini))
    return ini


@pytest.fixture
def no_token(tmp_path, monkeypatch):
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "missing.ini"))


# -- token ----------------------------------------------------------------------------------------
def test_missing_token_fails_before_any_call(no_token, tmp_path):
    hub = FakeHub()
    prof = QaiHubProfiler(DEVICE, client=hub)
    t0 = time.perf_counter()
    with pytest.raises(MissingToken, match="qai-hub configure"):
        prof.check()
    with pytest.raises(MissingToken):
        prof.measure(tiny_onnx(tmp_path / "m.onnx"), (1, 3, 8, 8))
    assert hub.calls == [] and time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("content", ["", "[api]\napi_url = x\n", "[api]\napi_token =   \n", "not an ini ["])
def test_token_file_without_token(tmp_path, content):
    ini = tmp_path / "client.ini"
    ini.write_text(content)
    with pytest.raises(MissingToken) as e:
        require_token(ini)
    assert "secret" not in str(e.value)


def test_token_is_never_in_messages(token, capsys):
    hub = FakeHub(devices=["Other"])
    with pytest.raises(UnknownDevice) as e:
        QaiHubProfiler(DEVICE, client=hub).check()
    out = capsys.readouterr()
    assert "secret-token-123" not in str(e.value) + out.out + out.err


# -- devices --------------------------------------------------------------------------------------
def test_check_accepts_known_device(token):
    hub = FakeHub()
    QaiHubProfiler(DEVICE, client=hub).check()
    assert [c for c, _ in hub.calls] == ["get_devices"]


def test_unknown_device_suggests_close_names(token):
    with pytest.raises(UnknownDevice, match="Snapdragon 8 Elite QRD"):
        QaiHubProfiler("Snapdragon 8 Elite", client=FakeHub()).check()


def test_service_hang_is_unreachable_quickly(token):
    hub = FakeHub(get_devices_s=5.0)
    t0 = time.perf_counter()
    with pytest.raises(DeviceUnreachable, match="did not answer"):
        QaiHubProfiler(DEVICE, client=hub, connect_timeout_s=0.2).check()
    assert time.perf_counter() - t0 < 2.0


def test_internal_error_is_unreachable(token):
    class InternalError(Exception):
        pass

    with pytest.raises(DeviceUnreachable, match="Could not connect"):
        QaiHubProfiler(DEVICE, client=FakeHub(error=InternalError("Could not connect to AI Hub."))).check()


def test_user_error_about_configuration_is_missing_token(token):
    err = UserError("Failed to load client configuration file.\n...")
    with pytest.raises(MissingToken):
        QaiHubProfiler(DEVICE, client=FakeHub(error=err)).check()


def test_qai_hub_not_installed(token, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "qai_hub":
            raise ImportError("no qai_hub")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ProfilerUnavailable, match=r"ens\[qaihub\]"):
        QaiHubProfiler(DEVICE).check()


# -- measuring ------------------------------------------------------------------------------------
def test_measure_flow_and_details(token, tmp_path):
    hub = FakeHub()
    prof = get_profiler(f'qaihub:"{DEVICE}"?runtime=qnn_context_binary&compute_unit=npu', client=hub,
                        job_timeout_s=120)
    r = prof.measure(tiny_onnx(tmp_path / "m.onnx"), (1, 3, 8, 8))
    names = [c for c, _ in hub.calls]
    assert names == ["get_devices", "submit_compile_job", "submit_inference_job"]
    ckw = hub.calls[1][1]
    assert ckw["device"].name == DEVICE and ckw["model"].endswith("m.onnx")
    assert ckw["input_specs"] == {"input": ((1, 3, 8, 8), "float32")}
    assert ckw["options"] == "--target_runtime qnn_context_binary --compute_unit npu"
    ikw = hub.calls[2][1]
    assert ikw["profile"] is True and ikw["inputs"] is None and ikw["model"].model_id == "mtarget"
    times = np.asarray(load("profile_snapdragon_8_elite.json")["execution_summary"]["all_inference_times"]) / 1000
    assert r.median_ms == pytest.approx(float(np.median(times)))
    assert r.p90_ms == pytest.approx(float(np.percentile(times, 90)))
    assert r.runs == len(times) and r.device.startswith(DEVICE)
    d = r.details
    assert d["estimated_inference_ms"] == pytest.approx(12.148)
    assert d["compute_units"]["NPU"] + d["compute_units"]["GPU"] + d["compute_units"]["CPU"] == d["layers"] == 143
    assert d["compute_units"]["CPU"] > 0 and d["source"] == "reported"
    assert d["compile_job"] == "jcompile1" and d["inference_job"] == "jinfer1"
    assert r.profiler == f"qaihub:{DEVICE}?runtime=qnn_context_binary&compute_unit=npu"


def test_profile_without_all_times_uses_estimate(token, tmp_path):
    hub = FakeHub(profile=load("profile_minor0_no_all_times.json"))
    r = QaiHubProfiler(DEVICE, client=hub).measure(tiny_onnx(tmp_path / "m.onnx"), (1, 3, 8, 8))
    assert r.median_ms == pytest.approx(8.421) and math.isnan(r.p90_ms)
    assert r.details["median_from"] == "estimated_inference_time"
    assert r.details["compute_units"] == {"NPU": 40, "GPU": 0, "CPU": 2}


def test_failed_compile_job(token, tmp_path):
    hub = FakeHub(compile_status=SimpleNamespace(success=False, message="Unsupported op Loop", code="FAILED"))
    with pytest.raises(MeasurementError, match="Unsupported op Loop"):
        QaiHubProfiler(DEVICE, client=hub).measure(tiny_onnx(tmp_path / "m.onnx"), (1, 3, 8, 8))
    assert "submit_inference_job" not in [c for c, _ in hub.calls]


def test_job_wait_timeout(token, tmp_path):
    class SlowHub(FakeHub):
        def submit_compile_job(self, **kw):
            self.calls.append(("submit_compile_job", kw))

            class J(FakeJob):
                def wait(self, timeout=None):
                    raise TimeoutError("Waiting for compile job completion timed out")

            return J("jc")

    with pytest.raises(ProfilerTimeout):
        QaiHubProfiler(DEVICE, client=SlowHub()).measure(tiny_onnx(tmp_path / "m.onnx"), (1, 3, 8, 8))


def test_shape_and_precision_checks(token, tmp_path):
    hub = FakeHub()
    prof = QaiHubProfiler(DEVICE, client=hub)
    with pytest.raises(MeasurementError, match="1x3x8x8"):
        prof.measure(tiny_onnx(tmp_path / "m.onnx"), (1, 3, 16, 16))
    with pytest.raises(MeasurementError, match="Q/DQ"):
        prof.measure(tiny_onnx(tmp_path / "m.onnx"), (1, 3, 8, 8), precision="int8")
    assert [c for c, _ in hub.calls if c.startswith("submit")] == []


def test_parse_profile_units_and_errors():
    p = parse_profile(load("profile_snapdragon_8_elite.json"))
    assert p["estimated_inference_ms"] == pytest.approx(12.148)
    assert p["peak_memory_mb"] == pytest.approx(30.0)
    with pytest.raises(MeasurementError):
        parse_profile({"execution_summary": {}, "execution_detail": []})


def test_spec_errors():
    with pytest.raises(UnknownProfiler):
        QaiHubProfiler("")
    with pytest.raises(UnknownProfiler):
        QaiHubProfiler(DEVICE, runtime="coreml")
    with pytest.raises(UnknownProfiler):
        QaiHubProfiler(DEVICE, compute_unit="dsp")


def test_call_with_timeout_leaves_no_blocking_thread():
    ev = threading.Event()
    with pytest.raises(DeviceUnreachable):
        call_with_timeout(lambda: ev.wait(5), 0.05, lambda: DeviceUnreachable("slow"))
    hung = [t for t in threading.enumerate() if t.name == "qaihub-call"]
    assert all(t.daemon for t in hung)
    ev.set()
    assert call_with_timeout(lambda: 42, 1.0, lambda: DeviceUnreachable("x")) == 42
    with pytest.raises(KeyError):
        call_with_timeout(lambda: {}["k"], 1.0, lambda: DeviceUnreachable("x"))
