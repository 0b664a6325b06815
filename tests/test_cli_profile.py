"""``ens profile`` and ``ens calibrate`` through ens.cli.main: output, JSON, one-line errors (exit 2)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

import profilers.onnx_export
from ens.cli import main
from profilers.registry import profiler_names, register_profiler

_FAKES = Path(__file__).parent / "fixtures" / "profiling_fakes.py"
_spec = importlib.util.spec_from_file_location("profiling_fakes_cli", _FAKES)
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)

if "fake-additive" not in profiler_names():
    register_profiler("fake-additive", "test only")(lambda arg, options: F.AdditiveProfiler(**options))

ARCH = "enc:T,E,T|lat:E|dec:T,E,E|ref:T"
SMALL = ["--preset", "tiny", "--shape", "1x3x32x32"]


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def run_ok(args, capsys):
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out, out.err


def test_profile_proxy_json(capsys):
    out, _ = run_ok(["profile", "--arch", ARCH, "--profiler", "proxy", "--json", *SMALL], capsys)
    d = json.loads(out)
    assert d["median_ms"] == 4 and d["device"] == "proxy" and d["details"]["unit"] == "transformer blocks"
    assert d["arch"] == ARCH and d["input_shape"] == [1, 3, 32, 32]


def test_profile_ort_cpu_table_then_cache(capsys):
    out, _ = run_ok(["profile", "--arch", ARCH, "--runs", "2", *SMALL], capsys)
    assert "median" in out and "ort-cpu" in out and "measured" in out
    out, _ = run_ok(["profile", "--arch", ARCH, "--runs", "2", "--json", *SMALL], capsys)
    assert json.loads(out)["details"]["cache"] == "hit"


def test_profile_breakdown_and_keep_onnx(capsys, tmp_path):
    out, _ = run_ok(["profile", "--arch", ARCH, "--runs", "2", "--breakdown", "--onnx", str(tmp_path / "m.onnx"),
                     *SMALL], capsys)
    assert "per operator" in out and "Conv" in out and (tmp_path / "m.onnx").is_file()
    assert "by slot" in out and "enc1[0] T" in out and "dec1[0] E" in out and "down1_2" in out


def test_profile_breakdown_json_has_one_row_per_slot(capsys):
    out, _ = run_ok(["profile", "--arch", ARCH, "--runs", "2", "--breakdown", "--json", *SMALL], capsys)
    bd = json.loads(out)["details"]["breakdown"]
    rows = bd["stages"]
    slots = [r["stage"] for r in rows if r["part"] == "slot"]
    assert slots == ["enc1[0] T", "enc2[0] E", "enc3[0] T", "lat[0] E", "dec3[0] T", "dec2[0] E", "dec1[0] E",
                     "ref[0] T"]  # ARCH, in the order data flows
    assert [r["stage"] for r in rows if r["part"] != "slot"] == [
        "stem", "down1_2", "down2_3", "down3_4", "up4_3", "up3_2", "up2_1", "output", "other"]
    assert 100 * sum(r["share"] for r in rows) == pytest.approx(100, abs=0.5)
    assert sum(r["ms"] for r in rows) == pytest.approx(bd["total_kernel_ms"], rel=1e-6)
    assert all(r["nodes"] > 0 for r in rows) and "" not in {s["scope"] for s in bd["by_scope"]}


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--shape", "1x3xbad"], "bad shape"),
        (["--profiler", "nope"], "unknown profiler"),
        (["--arch", "enc:T|lat"], "malformed arch"),
        (["--arch", "enc:T,Q,T|lat:E|dec:T,E,E|ref:T"], "unknown block kind"),
        (["--preset", "huge"], "unknown preset"),
        (["--profiler", "proxy", "--breakdown"], "ort-cpu"),
        (["--profiler", "lut:ort-cpu"], "ens calibrate"),
        (["--profiler", "lut:proxy"], "measured profiler (ort-cpu, trt, qaihub), not proxy"),
        (["--profiler", "ort-cpu", "--precision", "fp16"], "does not support precision"),
    ],
)
def test_profile_user_errors_are_one_line(capsys, args, msg):
    base = {"--arch": ARCH, "--shape": "1x3x32x32", "--preset": "tiny"}
    argv = ["profile"]
    given = {args[i] for i in range(0, len(args), 1) if args[i].startswith("--")}
    for k, v in base.items():
        if k not in given:
            argv += [k, v]
    code, out, err = run(argv + args, capsys)
    assert code == 2
    assert msg in err.lower() or msg in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3  # one message (rich may wrap it)


def test_profile_qaihub_without_token(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "none.ini"))
    code, _, err = run(["profile", "--arch", ARCH, "--profiler", 'qaihub:"Snapdragon 8 Elite QRD"', *SMALL], capsys)
    assert code == 2 and "API token" in err


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client")
def test_profile_trt_unreachable_host(capsys):
    code, _, err = run(["profile", "--arch", ARCH, "--profiler", "trt:ssh://nobody@127.0.0.1:1", *SMALL], capsys)
    assert code == 2 and "cannot reach" in err


@pytest.fixture
def fast_exports(monkeypatch):
    monkeypatch.setattr(profilers.onnx_export, "export_onnx", F.fake_export)


def test_calibrate_and_verify_json(capsys, fast_exports, tmp_path):
    table = tmp_path / "t.json"
    out, _ = run_ok(["calibrate", "--profiler", "fake-additive", "--kinds", "T,E", "--table", str(table),
                     "--verify", "5", "--json", *SMALL], capsys)
    s = json.loads(out)
    assert s["table"] == str(table) and table.is_file() and s["networks_measured"] == 1 + 2 + 16
    assert s["archs"] == 5 and s["within_10pct"] == 1.0 and s["median_abs_error_pct"] < 1e-6
    assert s["calibration_s"] > 0 and s["measure_all_s"] > 0 and "calibration_vs_measure_all" in s
    assert s["repeatability"] == {"archs": 5, "median_abs_diff_pct": 0.0, "within_10pct": 1.0, "within_5pct": 1.0}
    assert s["drift"]["anchors"] == 2 and s["drift"]["now_vs_calibration"] == pytest.approx(1.0)
    saved = json.loads(table.read_text())["verify"]  # the measured error travels with the table
    assert saved["archs"] == 5 and saved["median_abs_error_pct"] == s["median_abs_error_pct"]
    assert saved["repeatability"] == s["repeatability"]
    # a second run reuses the table for --verify
    out, err = run_ok(["calibrate", "--profiler", "fake-additive", "--kinds", "T,E", "--table", str(table),
                       "--verify", "3", *SMALL], capsys)
    assert "using the table" in err and "prediction error" in out


def test_verify_measures_its_own_noise_floor(fast_exports, tmp_path):
    """On a noisy device the table cannot be shown closer than two measurements of one file agree: verify
    measures the first archs twice in its batch and reports how far the pairs disagree."""
    from blocks import get_preset
    from ens.profiling import verify
    from profilers.lut import calibrate_table

    cfg = get_preset("tiny")
    quiet = F.AdditiveProfiler()
    table = calibrate_table(quiet, cfg, (1, 3, 32, 32), ["T", "E"])
    noisy = F.AdditiveProfiler(noise=0.3)
    rep = verify(table, noisy, cfg, (1, 3, 32, 32), n=8, repeat=4)
    assert noisy.batches == 1 and noisy.calls == 8 + 4 + 2, "the repeats and the T, E anchors: one batch"
    s = rep.summary()
    assert [r["arch"] for r in rep.repeats] == [r["arch"] for r in rep.rows[:4]]
    diffs = [abs(r["second_ms"] - r["first_ms"]) / r["first_ms"] for r in rep.repeats]
    assert s["repeatability"]["archs"] == 4 and s["repeatability"]["median_abs_diff_pct"] > 0
    assert s["repeatability"]["within_10pct"] == pytest.approx(sum(d <= 0.1 for d in diffs) / 4)
    assert s["within_10pct"] < 1.0, "the noise shows in the table's error too"
    assert "repeatability" not in verify(table, quiet, cfg, (1, 3, 32, 32), n=3).summary()


def test_verify_takes_the_machines_drift_out_with_the_calibration_networks(fast_exports):
    """A machine that runs 30% slower than when the table was calibrated: every raw error is -23%, the uniform
    networks measured again in the batch show the 1.3x, and with it taken out the table is exact again."""
    from blocks import get_preset
    from ens.profiling import verify
    from profilers.lut import calibrate_table

    cfg = get_preset("tiny")
    table = calibrate_table(F.AdditiveProfiler(), cfg, (1, 3, 32, 32), ["T", "E"])
    assert table.measurements["uniform:T"]["min_ms"] > 0, "the table keeps each network's fastest run too"

    class Slower(F.AdditiveProfiler):
        def measure(self, onnx_path, input_shape, precision=None):
            r = super().measure(onnx_path, input_shape, precision)
            return dataclasses.replace(r, median_ms=1.3 * r.median_ms)

    s = verify(table, Slower(), cfg, (1, 3, 32, 32), n=6).summary()
    assert s["within_10pct"] == 0.0 and s["mean_error_pct"] == pytest.approx(100 * (1 / 1.3 - 1))
    assert s["drift"]["now_vs_calibration"] == pytest.approx(1.3)
    assert s["drift"]["within_10pct"] == 1.0 and s["drift"]["median_abs_error_pct"] == pytest.approx(0, abs=1e-9)
    assert "drift" not in verify(table, Slower(), cfg, (1, 3, 32, 32), n=2, anchors=False).summary()


def test_calibrate_rich_output(capsys, fast_exports):
    out, _ = run_ok(["calibrate", "--profiler", "lut:fake-additive", "--kinds", "E", *SMALL], capsys)
    assert "latency table" in out and "skeleton" in out and "scale" in out


@pytest.mark.parametrize("args,msg", [(["--profiler", "proxy"], "needs a measured profiler"),
                                      (["--kinds", "Q"], "unknown block kind"),
                                      (["--shape", "x"], "bad shape")])
def test_calibrate_user_errors(capsys, args, msg):
    code, _, err = run(["calibrate", "--preset", "tiny", "--shape", "1x3x32x32", *args], capsys)
    assert code == 2 and msg in err and "Traceback" not in err


def test_profile_with_a_calibrated_table_predicts_without_exporting(capsys, fast_exports, monkeypatch):
    run_ok(["calibrate", "--profiler", "fake-additive", "--kinds", "T,E", *SMALL], capsys)

    def no_export(*a, **k):
        raise AssertionError("a table prediction must not export")

    monkeypatch.setattr(profilers.onnx_export, "export_onnx", no_export)
    out, _ = run_ok(["profile", "--arch", ARCH, "--profiler", "lut:fake-additive", "--json", *SMALL], capsys)
    d = json.loads(out)
    from blocks import get_preset
    from search_spaces import Arch

    want = F.additive_latency(Arch.parse(ARCH).block_kinds(get_preset("tiny")))
    assert d["details"]["source"] == "predicted" and d["median_ms"] == pytest.approx(want)
    out, _ = run_ok(["profile", "--arch", ARCH, "--profiler", "lut:fake-additive", *SMALL], capsys)
    assert "predicted breakdown" in out and "skeleton" in out


def test_calibrate_min_statistic(capsys, fast_exports, tmp_path):
    out, _ = run_ok(["calibrate", "--profiler", "fake-additive", "--kinds", "T,E", "--statistic", "min",
                     "--table", str(tmp_path / "t.json"), "--verify", "2", "--json", *SMALL], capsys)
    s = json.loads(out)
    assert s["statistic"] == "min" and s["within_10pct"] == 1.0
    code, _, err = run(["calibrate", "--statistic", "mode", *SMALL], capsys)
    assert code == 2 and "median or min" in err
