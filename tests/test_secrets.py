"""A storage password never reaches the screen, a log, a report or any file ens writes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.test_cli_search import _run

PASSWORD = "Sup3rS3cret-pw"


def _with_password(url: str) -> str:
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{PASSWORD}@{host}"  # the test server trusts loopback: any password is accepted


def _files_holding(root: Path, needle: bytes) -> list[str]:
    hits = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            if p.is_file() and needle in p.read_bytes():
                hits.append(str(p))
    return hits


def test_no_verb_prints_or_writes_the_storage_password(postgres_url, micro_zoo, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(micro_zoo, tmp_path / "zoo" / "deblur-tiny")
    url = _with_password(postgres_url)
    outputs = []
    runs = [
        ["search", "--storage", url, "--study-name", "sec", "--profiler", "proxy", "--trials", "2", "--workers", "0",
         "--shape", "1x3x32x32"],
        ["report", url, "--study-name", "sec", "--out", "rep"],
        ["report", url, "--study-name", "nope", "--out", "rep2"],  # an error naming the storage
        ["finalize", url, "--study-name", "sec", "--export", "onnx_fp32", "--trial", "0", "--finetune-steps", "0",
         "--qat-steps", "0", "--train-patches", "2", "--batch-size", "1", "--eval-images", "0", "--out", "final"],
    ]
    for argv in runs:
        code, out, err = _run(argv, capsys)
        outputs.append((argv[0], code, out + err))
    assert [c for _, c, _ in outputs] == [0, 0, 2, 0], outputs
    assert "***" in outputs[0][2] and "***" in outputs[2][2]  # the URL is shown, redacted
    for verb, _, text in outputs:
        assert PASSWORD not in text, verb
    assert (tmp_path / "final" / "report.json").is_file()
    assert _files_holding(tmp_path, PASSWORD.encode()) == []
    assert _files_holding(Path(os.environ["ENS_CACHE_DIR"]), PASSWORD.encode()) == []


def test_redact_covers_urls_inside_messages():
    from studies.storage import redact

    msg = f"cannot open postgresql+psycopg2://u:{PASSWORD}@db:5432/x; also mysql://v:{PASSWORD}@h/y"
    assert PASSWORD not in redact(msg) and redact(msg).count("***") == 2
    assert redact("sqlite:///a/b.db") == "sqlite:///a/b.db" and redact("postgresql://u@h/d") == "postgresql://u@h/d"
