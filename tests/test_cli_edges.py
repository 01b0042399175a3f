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


# ---------------------------------------------------------------------------------------------
# Files privsem reads back from a run or deployment folder (issue 19): bounded before parsing,
# refused with an error naming the file, never a RecursionError or a traceback.

DEEP = b"[" * 100_000 + b"]" * 100_000


def test_bounded_read_file_refuses_a_large_file_before_parsing(tmp_path):
    from privsem import bounded_json

    p = _bad_data(tmp_path, "big.json", b'{"a": "' + b"x" * 4096 + b'"}')
    with pytest.raises(bounded_json.JSONBoundError, match="larger than 1024 bytes"):
        bounded_json.read_file(p, max_bytes=1024, max_depth=4)
    assert bounded_json.read_file(p, max_bytes=8192, max_depth=4) == {"a": "x" * 4096}
    with pytest.raises(bounded_json.JSONBoundError, match="nests deeper"):
        bounded_json.read_file(_bad_data(tmp_path, "deep.json", DEEP), max_bytes=10 ** 6,
                               max_depth=4)
    # json.loads alone would guess UTF-16 from the first bytes and parse this
    with pytest.raises(bounded_json.JSONBoundError, match="not UTF-8"):
        bounded_json.read_file(_bad_data(tmp_path, "u16.json", '{"a": 1}'.encode("utf-16")),
                               max_bytes=1024, max_depth=4)


@pytest.mark.parametrize("content, why", [
    (DEEP, "nests deeper"),
    (b'{"alice": "' + b"ab" * 600_000 + b'"}', "larger than"),
    (b'["alice"]', "list"),
    (b'{"al ice": "abcd"}', "client ids"),
    (b'{"alice": "not hex"}', "hex string"),
    (b'{"alice": 7}', "hex string"),
    (b'{"alice": ""}', "hex string"),
    (b'{"alice": "' + b"9" * 5000 + b'"}', "hex string"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_a_bad_deployment_registry(tmp_path, content, why):
    from privsem.errors import ConfigError
    from privsem.runtime.flower.deploy import read_registry

    p = _bad_data(tmp_path, "registry.json", content)
    with pytest.raises(ConfigError, match=why) as e:
        read_registry(p)
    assert "registry.json" in str(e.value)


def test_a_good_deployment_registry(tmp_path):
    from privsem.runtime.flower.deploy import read_registry

    p = _bad_data(tmp_path, "registry.json", b'{"alice": "00ff", "bob-2": "ab"}')
    assert read_registry(p) == {"alice": b"\x00\xff", "bob-2": b"\xab"}


def _audit_run(tmp_path: Path) -> Path:
    from privsem.config import dump_yaml, load_config

    run = tmp_path / "run"
    (run / "state").mkdir(parents=True)
    (run / "config.yaml").write_text(dump_yaml(load_config(preset="smoke")), encoding="utf-8")
    return run


def test_a_deeply_nested_run_progress_file_for_an_audit(tmp_path):
    from privsem.audits.folder import open_run
    from privsem.errors import DataError

    run = _audit_run(tmp_path)
    (run / "state" / "run.json").write_bytes(b'{"completed": ' + DEEP + b', "resumes": 0}')
    with pytest.raises(DataError, match="run.json.*nests deeper"):
        open_run(run)
    (run / "state" / "run.json").write_bytes(b'{"completed": 1, "resumes": 0}')
    assert open_run(run).completed == 1


def test_a_deeply_nested_or_oversized_canary_file(tmp_path, monkeypatch):
    from privsem.audits import planting
    from privsem.errors import DataError

    run = _audit_run(tmp_path)
    path = planting.canaries_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(DEEP)
    with pytest.raises(DataError, match="canaries.json.*nests deeper"):
        planting.load_planted(run)
    monkeypatch.setattr(planting, "MAX_CANARY_FILE_BYTES", 16)
    path.write_bytes(b'{"canaries": [], "client": "alice"}')
    with pytest.raises(DataError, match="larger than 16 bytes"):
        planting.load_planted(run)


def test_a_deeply_nested_audit_result_is_a_problem_in_the_report(tmp_path):
    from privsem.reports.audit import AUDIT_DIR, load_audits

    run = _audit_run(tmp_path)
    (run / AUDIT_DIR).mkdir()
    (run / AUDIT_DIR / "canary_audit.json").write_bytes(DEEP)
    files = load_audits(run)
    assert files.canary is None
    assert any("canary_audit.json" in p and "nests deeper" in p for p in files.problems), \
        files.problems


def test_a_deeply_nested_metrics_line_is_set_aside_on_resume(tmp_path):
    from privsem.runtime.inprocess import _metrics_up_to

    good = [json.dumps({"round": r, "client": "alice", "loss": 1.0}) for r in (1, 2)]
    bad = b'{"round": 1, "x": ' + DEEP + b"}"
    (tmp_path / "metrics.jsonl").write_bytes(
        ("\n".join(good) + "\n").encode() + bad + b"\n")
    _metrics_up_to(tmp_path, 1)
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == good[:1]
    discarded = (tmp_path / "metrics.discarded.jsonl").read_bytes().splitlines()
    assert discarded == [good[1].encode(), bad]
