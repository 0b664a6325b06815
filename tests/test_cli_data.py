"""``ens tasks`` and ``ens data preview|check``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ens.cli import main
from ens.data import read_image
from ens.data.fakes import make_gopro, make_paired


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_tasks_table_and_json(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    code, out, _ = _run(["tasks"], capsys)
    assert code == 0
    for word in (
        "deblur",
        "derain",
        "denoise",
        "denoise_real",
        "sr_x2",
        "motion_blur",
        "rain_streaks",
        "gopro",
        "sidd",
    ):
        assert word in out
    code, out, _ = _run(["tasks", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["derain"]["y_channel"] is True and rows["deblur"]["layouts"] == ["gopro", "paired"]
    assert rows["denoise_real"]["degradation"] == "poisson_gaussian"


def test_preview_writes_a_grid(tmp_path, capsys):
    out = tmp_path / "preview.png"
    code, stdout, err = _run(
        ["data", "preview", "--task", "deblur", "--out", str(out), "--n", "4", "--size", "48"], capsys
    )
    assert code == 0, err
    img = read_image(out)
    assert img.shape[0] > 2 * 48 and img.shape[1] > 4 * 48
    assert img.std() > 0.05 and "wrote" in stdout


def test_preview_from_a_folder(tmp_path, capsys):
    root = make_gopro(tmp_path / "gopro", size=(48, 56))
    out = tmp_path / "p.jpg"
    code, _, err = _run(
        [
            "data",
            "preview",
            "-t",
            "deblur",
            "--data",
            str(root),
            "-o",
            str(out),
            "--n",
            "2",
            "--size",
            "32",
            "--split",
            "val",
        ],
        capsys,
    )
    assert code == 0, err
    assert out.is_file()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["data", "preview", "--task", "fog"], "unknown task 'fog'"),
        (["data", "preview", "--task", "deblur", "--out", "/nonexistent-dir/p.png"], "/nonexistent-dir"),
        (["data", "preview", "--task", "deblur", "--out", "p.gif"], "p.gif"),
        (["data", "preview", "--task", "deblur", "--split", "test"], "--split"),
        (["data", "preview", "--task", "deblur", "--data", "/no/such/data"], "/no/such/data"),
    ],
)
def test_preview_errors_are_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert needle in err and err.strip().count("\n") == 0 and "Traceback" not in err


def test_preview_bad_dataset_names_the_file(tmp_path, capsys):
    root = make_paired(tmp_path / "d", n=3)
    (root / "input" / "img000.png").write_bytes(b"not an image")
    (root / "input" / "img001.png").write_bytes(b"not an image")
    (root / "input" / "img002.png").write_bytes(b"not an image")
    code, _, err = _run(
        [
            "data",
            "preview",
            "--task",
            "derain",
            "--data",
            str(root),
            "--out",
            str(tmp_path / "p.png"),
            "--size",
            "16",
            "--n",
            "2",
        ],
        capsys,
    )
    assert code == 2 and "input/img00" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "p.png").exists()


def test_check(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    root = make_paired(tmp_path / "rain", n=5, size=(70, 80))
    code, out, err = _run(["data", "check", "--task", "derain", "--data", str(root)], capsys)
    assert code == 0, err
    assert "paired" in out and "ok" in out
    from ens.data.fakes import write_png8

    write_png8(root / "input" / "img003.png", np.zeros((70, 81, 3)))
    code, _, err = _run(["data", "check", "--task", "derain", "--data", str(root)], capsys)
    assert code == 2 and "size mismatch" in err and "img003.png" in err
    code, _, err = _run(["data", "check", "--task", "deblur", "--data", str(make_gopro(tmp_path / "g"))], capsys)
    assert code == 2 and "smaller than the 64x64 patch" in err
