"""The ledger: durable, composes events, refuses over budget, detects damage and rollback (T29).

Crash and resume of whole rounds (T28) is tested in tests/test_resume.py.
"""

import json
import math

import pytest

from privsem.errors import BudgetExceeded, LedgerCorrupted
from privsem.privacy.analysis import dpsgd_event, epsilon, gaussian_event
from privsem.privacy.ledger import Ledger


def _charge(ledger, rnd, budget=10.0, client="a"):
    return ledger.charge(client=client, round=rnd, unit="client", mechanism="embedding_gaussian",
                         event=gaussian_event(noise_multiplier=1.0), delta=1e-5, budget=budget)


def test_entries_persist_and_compose(tmp_path):
    p = tmp_path / "ledger.jsonl"
    led = Ledger(p)
    for r in (1, 2, 3):
        _charge(led, r)
    led.charge(client="a", round=1, unit="record", mechanism="dp_sgd",
               event=dpsgd_event(noise_multiplier=1.0, sample_rate=0.1, steps=10), delta=1e-5,
               budget=10.0)
    again = Ledger(p)
    assert len(again.entries) == 4
    want = epsilon([gaussian_event(noise_multiplier=1.0, count=3)], delta=1e-5)
    assert again.spent("a", "client", delta=1e-5) == pytest.approx(want)
    assert again.entries[2].epsilon_after == pytest.approx(want)
    assert again.spent("b", "client", delta=1e-5) == 0.0


def test_refused_charge_writes_nothing(tmp_path):
    led = Ledger(tmp_path / "l.jsonl")
    first = _charge(led, 1)
    with pytest.raises(BudgetExceeded, match="would bring client-level"):
        _charge(led, 2, budget=first.epsilon_after)  # a second release must exceed
    assert len(Ledger(tmp_path / "l.jsonl").entries) == 1


def test_infinite_epsilon_exceeds_every_finite_budget(tmp_path):
    led = Ledger(tmp_path / "l.jsonl")
    with pytest.raises(BudgetExceeded):
        led.charge(client="a", round=1, unit="client", mechanism="x",
                   event=gaussian_event(noise_multiplier=0.0), delta=1e-5, budget=1e9)
    led.charge(client="a", round=1, unit="client", mechanism="x",
               event=gaussian_event(noise_multiplier=0.0), delta=1e-5, budget=math.inf)
    # the entry holds ε = budget = Infinity, and the ledger still loads (DP off is a real run)
    again = Ledger(tmp_path / "l.jsonl")
    assert again.entries[0].budget == math.inf and again.entries[0].epsilon_after == math.inf


def test_T29_truncated_ledger_fails_closed(tmp_path):
    p = tmp_path / "l.jsonl"
    led = Ledger(p)
    _charge(led, 1)
    _charge(led, 2)
    p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(LedgerCorrupted, match="truncated"):
        Ledger(p)


@pytest.mark.parametrize("field,value", [("epsilon_after", 0.0), ("round", 7),
                                         ("event", {"type": "no_op"})])
def test_T29_edited_entry_fails_closed(tmp_path, field, value):
    p = tmp_path / "l.jsonl"
    led = Ledger(p)
    _charge(led, 1)
    _charge(led, 2)
    lines = p.read_text().splitlines()
    d = json.loads(lines[0])
    d[field] = value
    lines[0] = json.dumps(d, sort_keys=True)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(LedgerCorrupted, match=":1: entry fails its integrity check"):
        Ledger(p)


def test_T29_deleted_middle_entry_fails_closed(tmp_path):
    p = tmp_path / "l.jsonl"
    led = Ledger(p)
    for r in (1, 2, 3):
        _charge(led, r)
    lines = p.read_text().splitlines()
    p.write_text(lines[0] + "\n" + lines[2] + "\n")
    with pytest.raises(LedgerCorrupted):
        Ledger(p)


def _three(p):
    led = Ledger(p)
    for r in (1, 2, 3):
        _charge(led, r)
    return led


def test_T29_rollback_to_an_earlier_valid_ledger_fails_closed(tmp_path):
    p = tmp_path / "l.jsonl"
    _three(p)
    lines = p.read_text().splitlines(keepends=True)
    p.write_text("".join(lines[:2]))  # a valid chain: what the file held before round 3
    with pytest.raises(LedgerCorrupted, match="rolled back"):
        Ledger(p)


def test_T29_deleted_ledger_with_its_head_left_fails_closed(tmp_path):
    p = tmp_path / "l.jsonl"
    _three(p)
    p.unlink()
    with pytest.raises(LedgerCorrupted, match="rolled back or deleted"):
        Ledger(p)


def test_T29_deleted_head_fails_closed(tmp_path):
    p = tmp_path / "l.jsonl"
    _three(p)
    (tmp_path / "l.jsonl.head").unlink()
    with pytest.raises(LedgerCorrupted, match="head.*missing"):
        Ledger(p)


def test_T29_a_different_history_of_the_same_length_fails_closed(tmp_path):
    p = tmp_path / "l.jsonl"
    _three(p)
    head = (tmp_path / "l.jsonl.head").read_text()
    other = tmp_path / "other.jsonl"
    led = Ledger(other)
    for r in (1, 2, 3):
        _charge(led, r, client="b")
    p.write_bytes(other.read_bytes())
    (tmp_path / "l.jsonl.head").write_text(head)
    with pytest.raises(LedgerCorrupted, match="differs from the one its head records"):
        Ledger(p)


def test_T29_head_one_behind_after_a_crash_is_accepted_and_repaired(tmp_path):
    p = tmp_path / "l.jsonl"
    head = tmp_path / "l.jsonl.head"
    led = Ledger(p)
    _charge(led, 1)
    after_first = head.read_text()
    _charge(led, 2)
    after_second = head.read_text()
    _charge(led, 3)
    before = json.loads(head.read_text())
    # A crash after the append was fsync'd but before the head moved.
    head.write_text(after_second)
    again = Ledger(p)
    assert len(again.entries) == 3
    assert json.loads(head.read_text()) == before
    # Two entries beyond the head cannot come from one crash.
    head.write_text(after_first)
    with pytest.raises(LedgerCorrupted, match="beyond its head"):
        Ledger(p)


def test_cutting_the_last_entry_and_rehashing_is_refused(tmp_path):
    """Issue 19: without the key, an attacker who removes the last entry and recomputes the
    chain's head (sequence and hash of the new last entry) is refused; the key is 0600."""
    p = tmp_path / "l.jsonl"
    led = _three(p)
    key = tmp_path / "l.jsonl.key"
    assert key.stat().st_mode & 0o777 == 0o600
    lines = p.read_text().splitlines(keepends=True)
    p.write_text("".join(lines[:2]))
    last = led.entries[1]
    forged = {"seq": last.seq, "hash": last.hash, "mac": "0" * 64}
    (tmp_path / "l.jsonl.head").write_text(json.dumps(forged))
    with pytest.raises(LedgerCorrupted, match="MAC does not verify"):
        Ledger(p)
    # an unkeyed head (as before keyed heads) is refused, not accepted as a downgrade
    (tmp_path / "l.jsonl.head").write_text(json.dumps({"seq": last.seq, "hash": last.hash}))
    with pytest.raises(LedgerCorrupted, match="seq, hash and mac"):
        Ledger(p)
    # and so is deleting the key along with the head
    key.unlink()
    with pytest.raises(LedgerCorrupted, match="key.*missing|missing"):
        Ledger(p)


@pytest.mark.parametrize("line, why", [
    (b"[1, 2, 3]", "not an entry object"),
    (b"42", "not an entry object"),
    (b"null", "not an entry object"),
    (b'{"seq": Infinity}', "integrity check"),
    (b"[" * 100_000 + b"]" * 100_000, "integrity check"),
    (b'"' + b"x" * (300 * 1024) + b'"', "more than an entry holds"),
    (b"\xff\xfe not utf-8", "integrity check"),
])
def test_malformed_lines_are_refused_naming_file_and_line(tmp_path, line, why):
    p = tmp_path / "l.jsonl"
    _three(p)
    lines = p.read_bytes().splitlines(keepends=True)
    p.write_bytes(lines[0] + line + b"\n" + b"".join(lines[2:]))
    with pytest.raises(LedgerCorrupted, match=rf"l.jsonl:2: .*{why}"):
        Ledger(p)


@pytest.mark.parametrize("head", [
    '{"seq": Infinity, "hash": "00", "mac": "00"}',
    '{"seq": 1e400, "hash": "00", "mac": "00"}',
    "[1, 2]",
    '{"seq": true, "hash": "' + "0" * 64 + '", "mac": "' + "0" * 64 + '"}',
    '{"seq": -1, "hash": "' + "0" * 64 + '", "mac": "' + "0" * 64 + '"}',
    "\u0000",
    "x" * 5000,
])
def test_malformed_heads_are_refused(tmp_path, head):
    p = tmp_path / "l.jsonl"
    _three(p)
    (tmp_path / "l.jsonl.head").write_text(head)
    with pytest.raises(LedgerCorrupted, match="l.jsonl.head: unreadable"):
        Ledger(p)


def test_T29_corrupted_ledger_is_never_reset(tmp_path):
    p = tmp_path / "l.jsonl"
    _three(p)
    raw = p.read_bytes()
    p.write_bytes(raw[:-20])
    for _ in range(2):
        with pytest.raises(LedgerCorrupted):
            Ledger(p)
    assert p.read_bytes() == raw[:-20]  # refusing to load never rewrites or empties the file
