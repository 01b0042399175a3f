"""The command line's edges (issue 19): each case ends in a one-line error and a non-zero exit,
with no traceback, and creates nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from privsem.cli import main

SMOKE = ["--preset", "smoke", "--set", "rounds=1", "--set", "evaluation.enabled=false",
         "--quiet"]


def _refused(capsys, argv: list[str], *, match: str) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert match in err, err
    return err


def _bad_data(tmp_path: Path, name: str, content: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(content)
    return p


def test_non_utf8_config_file(tmp_path, capsys):
    cfg = _bad_data(tmp_path, "bad.yaml", "name: caf\xe9\n".encode("latin-1"))
    out = tmp_path / "run"
    _refused(capsys, ["run", str(cfg), "--out", str(out), "--quiet"],
             match="not UTF-8")
    assert not out.exists()


def test_deeply_nested_config_file(tmp_path, capsys):
    cfg = _bad_data(tmp_path, "deep.yaml", b"a: " + b"[" * 50_000 + b"]" * 50_000 + b"\n")
    out = tmp_path / "run"
    _refused(capsys, ["run", str(cfg), "--out", str(out), "--quiet"],
             match="nests")
    assert not out.exists()


@pytest.mark.parametrize("content, why", [
    ('{"prompt": "caf\xe9", "response": "x"}\n'.encode("latin-1"), "not UTF-8"),
    (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b', "response": "x"}\n', "nests deeper"),
    (b'{"prompt": "' + b"x" * (5 * 1024 * 1024) + b'", "response": "x"}\n', "longer than"),
    (b'{"prompt": "q", "response": "a", "n": ' + b"9" * 5000 + b"}\n", "digits"),
])
def test_bad_jsonl_training_file(tmp_path, capsys, content, why):
    train = _bad_data(tmp_path, "train.jsonl", content)
    out = tmp_path / "run"
    err = _refused(capsys, ["run", *SMOKE, "--set", f"clients.1.train={train}", "--out",
                            str(out)], match=why)
    assert f"{train}:1" in err  # names the file and the line
    assert not out.exists()


def test_client_id_too_long_or_not_ascii(tmp_path, capsys):
    out = tmp_path / "run"
    for bad in ("a" * 300, "caf\u00e9", "../x", "-lead"):
        _refused(capsys, ["run", *SMOKE, "--set", f"clients.0.id={bad}", "--out", str(out)],
                 match="clients")
        assert not out.exists()


def test_out_naming_an_existing_file(tmp_path, capsys):
    f = _bad_data(tmp_path, "afile", b"keep me")
    _refused(capsys, ["run", *SMOKE, "--out", str(f)], match="existing file")
    assert f.read_bytes() == b"keep me"
    _refused(capsys, ["run", *SMOKE, "--out", str(f / "sub")], match="is a file")
    _refused(capsys, ["bench", "--quick", "--out", str(f)], match="existing file")


def test_out_under_an_unwritable_folder(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root: the permission bits do not bind; use /proc
            target = Path("/proc") / "privsem-no-such-folder" / "run"
            rc = main(["run", *SMOKE, "--out", str(target)])
            err = capsys.readouterr().err.strip()
            assert rc != 0 and "Traceback" not in err and len(err.splitlines()) == 1, err
            assert not target.exists()
        else:
            _refused(capsys, ["run", *SMOKE, "--out", str(locked / "run")],
                     match="not writable")
            assert not (locked / "run").exists()
    finally:
        locked.chmod(0o700)


def test_corrupt_run_progress_file_on_resume(tmp_path, capsys):
    from privsem.config import dump_yaml, load_config

    run = tmp_path / "run"
    (run / "state").mkdir(parents=True)
    (run / "config.yaml").write_text(dump_yaml(load_config(preset="smoke")), encoding="utf-8")
    for bad in ("{not json", "[1, 2]", json.dumps({"completed": "x", "resumes": 0}),
                json.dumps({"completed": 10 ** 9, "resumes": 0}), "\xff"):
        (run / "state" / "run.json").write_text(bad, encoding="latin-1")
        _refused(capsys, ["run", "--resume", str(run), "--quiet"], match="run.json")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "state"]


def test_the_console_entry_point_prints_one_line(tmp_path):
    """The same refusal through ``python -m privsem``: exit status 2, one line on stderr."""
    f = _bad_data(tmp_path, "afile", b"x")
    done = subprocess.run([sys.executable, "-m", "privsem", "run", *SMOKE, "--out", str(f)],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2
    assert done.stderr.strip().startswith("privsem: error: --out")
    assert len(done.stderr.strip().splitlines()) == 1
