"""Spec strings carry only the options their profiler declares; code-only options stay keyword arguments."""

from __future__ import annotations

import pytest

from ens.cli import main
from profilers.errors import UnknownProfiler
from profilers.registry import get_profiler, profiler_help, profiler_names, profiler_spec_keys


def never_run(argv, timeout):
    raise AssertionError(f"nothing may run while a spec is parsed: {argv}")


# -- which keys a spec string may carry ------------------------------------------------------------
@pytest.mark.parametrize("spec,key", [
    ("trt:ssh://x@127.0.0.1:1?runner=x", "runner"),
    ("trt:ssh://u@h?ssh_options=ProxyCommand=touch%20/tmp/pwned", "ssh_options"),
    ("trt?trtexec_args=--plugins=/tmp/evil.so", "trtexec_args"),
    ("qaihub:Snapdragon 8 Elite QRD?client=x", "client"),
    ("qaihub:Snapdragon 8 Elite QRD?config=/tmp/other.ini", "config"),
    ("qaihub:Snapdragon 8 Elite QRD?compile_options=--x", "compile_options"),
    ("lut:trt:ssh://u@h?ssh_options=ProxyCommand=x", "ssh_options"),
])
def test_code_only_options_are_refused_in_a_spec(spec, key):
    name = spec.removeprefix("lut:").split(":")[0].split("?")[0]
    with pytest.raises(UnknownProfiler) as e:
        get_profiler(spec)
    msg = str(e.value)
    assert msg.startswith(f"unknown option(s) for {name}: {key} (a spec string takes: ")
    assert ", ".join(profiler_spec_keys(name)) in msg


def test_refusal_lists_the_allowed_keys():
    with pytest.raises(UnknownProfiler) as e:
        get_profiler("trt:ssh://x@127.0.0.1:1?runner=x")
    for key in ("trtexec", "warmup", "runs", "use_cuda_graph", "no_data_transfers", "build_timeout_s"):
        assert key in str(e.value)
    assert "runner" not in profiler_spec_keys("trt") and "ssh_options" not in profiler_spec_keys("trt")
    with pytest.raises(UnknownProfiler, match=r"proxy: x \(a spec string takes: no options\)"):
        get_profiler("proxy?x=1")


def test_cli_refuses_a_code_only_option_in_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["profile", "--arch", "enc:T,E,T|lat:E|dec:T,E,E|ref:T", "--preset", "tiny", "--shape", "1x3x32x32",
              "--profiler", "trt:ssh://x@127.0.0.1:1?runner=x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown option(s) for trt: runner" in err and "not callable" not in err


def test_keyword_arguments_still_set_code_only_options():
    prof = get_profiler("trt:ssh://u@h?runs=7", runner=never_run, ssh_options=["IdentitiesOnly=yes"],
                        trtexec_args=["--useSpinWait"])
    assert prof.runner is never_run and prof.ssh_options == ("IdentitiesOnly=yes",)
    assert prof.trtexec_args == ("--useSpinWait",) and prof.runs == 7
    hub = get_profiler("qaihub:Snapdragon 8 Elite QRD", client=object(), config="/tmp/client.ini")
    assert hub.config == "/tmp/client.ini"


def test_every_profiler_declares_and_documents_its_keys():
    import profilers.registry as registry

    helps = profiler_help()
    for name in ("ort-cpu", "trt", "qaihub", "proxy", "lut"):
        keys = profiler_spec_keys(name)
        assert "[spec options: " in helps[name] and all(k in helps[name] for k in keys)
        assert all(f"``{name}``" in registry.__doc__ and k in registry.__doc__ for k in keys)
    assert profiler_spec_keys("lut") == () and profiler_spec_keys("proxy") == ()
    assert set(profiler_names()) >= {"ort-cpu", "trt", "qaihub", "proxy", "lut"}


def test_lut_options_are_the_inner_profilers():
    assert get_profiler("lut:ort-cpu?threads=1").inner.threads == 1
    with pytest.raises(UnknownProfiler, match="unknown option.s. for ort-cpu: bogus"):
        get_profiler("lut:ort-cpu?bogus=1")


# -- values from a string are checked ---------------------------------------------------------------
@pytest.mark.parametrize("spec", [
    "ort-cpu?threads=two", "ort-cpu?threads=0", "ort-cpu?runs=1.5", "ort-cpu?warmup=-1",
    "ort-cpu?breakdown=maybe", "ort-cpu?spin=2", "ort-cpu?breakdown=",
    "trt?runs=many", "trt?runs=0", "trt?warmup=-5", "trt?use_cuda_graph=2", "trt?no_data_transfers=y",
    "trt:ssh://u@h?keep_remote_files=sure", "trt?build_timeout_s=nan", "trt?connect_timeout_s=abc",
    "trt?copy_timeout_s=0", "trt?check_timeout_s=-1", "trt?trtexec=/usr/bin/trtexec",
    "qaihub:S8?job_timeout_s=inf", "qaihub:S8?connect_timeout_s=soon",
])
def test_bad_values_are_unknown_profiler(spec):
    with pytest.raises(UnknownProfiler):
        get_profiler(spec, runner=never_run) if spec.startswith("trt") else get_profiler(spec)


@pytest.mark.parametrize("text,want", [("1", True), ("true", True), ("Yes", True), ("on", True),
                                       ("0", False), ("false", False), ("NO", False), ("off", False)])
def test_bools_take_the_usual_words(text, want):
    assert get_profiler(f"trt?use_cuda_graph={text}").use_cuda_graph is want
    assert get_profiler(f"ort-cpu?breakdown={text}").breakdown is want


def test_typed_values_reach_the_profiler():
    p = get_profiler("trt:ssh://u@h?warmup=5&runs=50&build_timeout_s=99.5&connect_timeout_s=2.5"
                     "&keep_remote_files=yes")
    assert (p.warmup, p.runs, p.build_timeout_s, p.connect_timeout_s, p.keep_remote_files) == (5, 50, 99.5, 3, True)
    q = get_profiler("qaihub:S8?runtime=onnx&compute_unit=npu&job_timeout_s=60")
    assert (q.runtime, q.compute_unit, q.job_timeout_s) == ("onnx", "npu", 60.0)
