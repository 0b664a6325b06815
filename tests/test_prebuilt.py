"""Prebuilt zoos: which zoo a command uses, and the zoos that ship inside the package."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from ens.zoo import prebuilt
from ens.zoo.manifest import ZooError, ZooManifest
from ens.zoo.prebuilt import prebuilt_dir, prebuilt_names, resolve_zoo, study_zoo_dir
from ens.zoo.store import Zoo

SHIPPED = ("deblur-tiny", "derain-tiny", "denoise-tiny")


@pytest.fixture
def fake_prebuilt(micro_zoo, tmp_path, monkeypatch):
    root = tmp_path / "prebuilt"
    shutil.copytree(micro_zoo, root / "deblur-tiny")
    monkeypatch.setattr(prebuilt, "PREBUILT_ROOT", root)
    return root


def test_resolution_order(fake_prebuilt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = resolve_zoo("deblur", "tiny", None, None)
    assert c.origin == "prebuilt" and c.path == fake_prebuilt / "deblur-tiny"
    assert resolve_zoo("deblur", "tiny", None, None, from_scratch=True).origin == "build"
    assert resolve_zoo("derain", "tiny", None, None).origin == "build", "no prebuilt zoo for derain here"
    assert resolve_zoo("deblur", "tiny", "/data/GoPro", None).path == Path("zoo/deblur-tiny"), "--data: own zoo"
    assert resolve_zoo("deblur", "tiny", None, "myzoos").path == Path("myzoos/deblur-tiny"), "--zoo: own zoo"
    shutil.copytree(fake_prebuilt / "deblur-tiny", tmp_path / "zoo" / "deblur-tiny")
    local = resolve_zoo("deblur", "tiny", None, None)
    assert local.origin == "local" and local.path == Path("zoo/deblur-tiny"), "a local zoo wins over the prebuilt"


def test_search_uses_the_prebuilt_zoo_and_says_so(fake_prebuilt, tmp_path, monkeypatch):
    from ens.search.driver import SearchOptions, run_search

    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    study, s = run_search(SearchOptions(task="deblur", profiler="proxy", trials=3, workers=0, storage="study.db",
                                        shape="1x3x32x32", sampler="random"), log=lines.append)
    zid = Zoo.load(fake_prebuilt / "deblur-tiny").zoo_id
    said = [m for m in lines if m.startswith("using the prebuilt zoo")]
    assert len(said) == 1 and zid in said[0], lines
    assert study.user_attrs["zoo_origin"] == "prebuilt" and study.user_attrs["zoo_id"] == zid
    assert not (tmp_path / "zoo").exists(), "nothing was built"

    # finalize finds it again when the recorded folder has gone (another install)
    attrs = {**study.user_attrs, "zoo_dir": str(tmp_path / "gone")}
    said.clear()
    assert study_zoo_dir(attrs, None, said.append) == fake_prebuilt / "deblur-tiny"
    assert said and zid in said[0]
    assert study_zoo_dir({**attrs, "zoo_origin": "local"}, None, said.append) is None
    assert study_zoo_dir(attrs, "elsewhere", said.append) == Path("elsewhere")


def test_manifest_weights_must_stay_inside_the_zoo_and_carry_a_hash(micro_zoo, tmp_path):
    z = tmp_path / "z"
    shutil.copytree(micro_zoo, z)
    shutil.copy(z / "zoo.safetensors", tmp_path / "outside.safetensors")
    raw = json.loads((z / "manifest.json").read_text())
    for bad in ("../outside.safetensors", str(tmp_path / "outside.safetensors")):
        (z / "manifest.json").write_text(json.dumps({**raw, "weights": bad}))
        with pytest.raises(ZooError, match="must be a file name inside the zoo"):
            Zoo.load(z)
    (z / "manifest.json").write_text(json.dumps({**raw, "weights_sha256": ""}))
    with pytest.raises(ZooError, match="no weights_sha256"):
        Zoo.load(z)


# -- the zoos that ship --------------------------------------------------------------------------


def test_the_embedded_tasks_ship_a_zoo_within_the_size_budget():
    assert set(SHIPPED) <= set(prebuilt_names())
    total = sum(f.stat().st_size for f in prebuilt.PREBUILT_ROOT.rglob("*") if f.is_file())
    assert total <= 25 * 2**20, f"prebuilt zoos take {total / 2**20:.1f} MiB"


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_zoo_loads_with_its_hash_and_slots_checked(name, tmp_path):
    task, preset = name.split("-")
    d = prebuilt_dir(task, preset)
    zoo = Zoo.load(d)  # verifies sha256 and that slots and tensor shapes match this code
    m = zoo.manifest
    assert (m.task, m.preset, m.data_source) == (task, preset, "embedded:scikit-image")
    assert m.build["command"].startswith(f"ens zoo build --task {task} --preset {preset}")
    assert m.build["wall_time_s"] > 600, "trained well past a first command's budget"
    assert m.build["machine"]["cores"] >= 1 and m.build["machine"]["cpu"]
    assert len(m.weights_sha256) == 64
    assert m.rank["n"] == 16 and -1 <= m.rank["tau"] <= 1
    assert m.teacher["curve"] and m.teacher["curve"][-1]["step"] == m.teacher["steps"]
    # a flipped byte is caught before the weights are used
    bad = tmp_path / name
    shutil.copytree(d, bad)
    data = bytearray((bad / m.weights).read_bytes())
    data[-1] ^= 0x01
    (bad / m.weights).write_bytes(bytes(data))
    with pytest.raises(ZooError, match="checksum"):
        Zoo.load(bad)


def test_a_shipped_recipe_rebuilds_at_reduced_steps_through_the_cli(tmp_path, monkeypatch):
    """The manifest's own command, step counts cut down, run through ``ens zoo build``."""
    from ens.cli import main

    m = ZooManifest.read(prebuilt_dir("denoise", "tiny"))
    argv = shlex.split(m.build["command"])
    assert argv[:3] == ["ens", "zoo", "build"]
    reduced = {"--steps": "2", "--distill-steps": "2", "--calib-steps": "0", "--rank-steps": "0",
               "--out": str(tmp_path / "zoo")}
    args = [reduced.get(argv[i - 1], a) if i > 0 else a for i, a in enumerate(argv)][1:]
    args += ["--quality-crop", "64"]  # a quick report on the centres of the held-out images
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    rebuilt = Zoo.load(tmp_path / "zoo" / "denoise-tiny")
    assert rebuilt.manifest.slots == m.slots and rebuilt.manifest.kinds == m.kinds
    assert rebuilt.manifest.config == m.config
    assert rebuilt.manifest.build["command"].startswith("ens zoo build --task denoise --preset tiny")
    assert "--steps 2 " in rebuilt.manifest.build["command"]


def test_each_shipped_extension_reruns_through_the_cli(tmp_path, monkeypatch):
    """The commands that added kinds to a prebuilt zoo (``--from-zoo``), cut down, run through ``ens zoo build``."""
    from ens.cli import main

    m = ZooManifest.read(prebuilt_dir("derain", "tiny"))
    for step in m.build.get("extended", []):
        argv = shlex.split(step["command"])
        assert "--from-zoo" in argv and "--kinds" in argv
        reduced = {"--distill-steps": "2", "--rank-steps": "0", "--out": str(tmp_path / "zoo")}
        args = [reduced.get(argv[i - 1], a) if i > 0 else a for i, a in enumerate(argv)][1:]
        monkeypatch.chdir(tmp_path)
        with pytest.raises(SystemExit) as exc:
            main([*args, "--quality-crop", "64", "--force"])
        assert exc.value.code == 0
        rebuilt = Zoo.load(tmp_path / "zoo" / "derain-tiny")
        # ``--from-zoo derain-tiny`` names the shipped zoo, which now holds every kind: it is the base
        assert rebuilt.manifest.kinds == m.kinds and rebuilt.manifest.build["extended"][-1]["from"] == m.zoo_id


def test_zoo_list_names_each_figure_and_counts_every_build_run(capsys, monkeypatch):
    """``ens zoo list`` labels each uniform network's delta (eight numbers in a row said nothing) and times the
    whole build, extensions included."""
    from ens.cli import main

    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit) as exc:
        main(["zoo", "list"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in SHIPPED:
        m = ZooManifest.read(prebuilt_dir(*name.split("-")))
        row = next(line for line in out.splitlines() if line.startswith(f"│ {name}"))
        assert all(f"all-{k} " in row for k in m.kinds[1:]) and "mixed " in row
        runs = 1 + len(m.build.get("extended", []))
        total = (m.build["wall_time_s"] + sum(e["wall_time_s"] for e in m.build.get("extended", []))) / 60
        assert f"{total:.0f} min" in row and (runs == 1 or f"({runs} runs)" in row)
