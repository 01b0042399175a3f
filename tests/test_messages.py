"""Wire format: round trips, malformed frames, no pickle, bounded sizes; stage transitions."""

import pickle
import struct

import numpy as np
import pytest

from privsem.errors import MessageError, ProtocolAbort
from privsem.protocol.messages import (
    MAGIC,
    ConsensusBroadcast,
    EmbeddingUpload,
    RoundSpec,
    Stage,
    StageMachine,
    decode,
    encode,
)


def _upload():
    return EmbeddingUpload(session_id="s", round=1, client="a", noise_std=0.5,
                           matrix=np.arange(12, dtype=np.float32).reshape(3, 4))


def test_round_trip():
    up = _upload()
    back = decode(encode(up), EmbeddingUpload)
    assert back.client == "a" and np.array_equal(back.matrix, up.matrix)
    spec = RoundSpec(round=2, run="0" * 32, session_id="x", cohort=("a", "b"), prompt_ids=("p1",),
                     prompt_set_hash="h", dim=384, params={"clip": 1.0})
    assert decode(encode(spec)) == spec
    cb = ConsensusBroadcast(session_id="x", round=1, contributors=("a",),
                            noise_std_of_consensus=0.1, consensus=np.zeros((2, 3), np.float32),
                            agreement=np.ones(2, np.float32),
                            weight=np.full(2, 0.5, np.float32))
    back_cb = decode(encode(cb))
    assert np.array_equal(back_cb.agreement, cb.agreement)
    assert np.array_equal(back_cb.weight, cb.weight)


def test_wrong_expected_type():
    with pytest.raises(MessageError, match="expected round_spec"):
        decode(encode(_upload()), RoundSpec)


@pytest.mark.parametrize("mangle", [
    lambda f: f[:-3],  # truncated array
    lambda f: f + b"xx",  # trailing bytes
    lambda f: b"XXXX" + f[4:],  # bad magic
    lambda f: f[:4] + struct.pack("<I", 10**9) + f[8:],  # oversized header length
    lambda f: f[:4] + struct.pack("<I", 5) + f[8:],  # header length cutting JSON
    lambda f: pickle.dumps(_upload()),  # a pickle is never accepted
    lambda f: MAGIC + struct.pack("<I", 2) + b"{}",  # no version
    lambda f: b"",
])
def test_malformed_frames_raise_message_error(mangle):
    with pytest.raises(MessageError):
        decode(mangle(encode(_upload())))


def test_array_descriptor_lies_are_caught():
    frame = encode(_upload())
    hlen = struct.unpack("<I", frame[4:8])[0]
    header = frame[8:8 + hlen].replace(b'"shape":[3,4]', b'"shape":[4,4]')
    bad = MAGIC + struct.pack("<I", len(header)) + header + frame[8 + hlen:]
    with pytest.raises(MessageError, match="size does not match"):
        decode(bad)
    header = frame[8:8 + hlen].replace(b'"dtype":"<f4"', b'"dtype":"|O8"')
    bad = MAGIC + struct.pack("<I", len(header)) + header + frame[8 + hlen:]
    with pytest.raises(MessageError, match="descriptor"):
        decode(bad)


def test_stage_machine_refuses_transitions_not_in_table():
    sm = StageMachine("client a")
    sm.advance(Stage.SPEC)
    with pytest.raises(ProtocolAbort, match="spec -> labels"):
        sm.advance(Stage.LABELS)
    sm.advance(Stage.UPLOAD)
    sm.advance(Stage.CONSENSUS)
    sm.advance(Stage.DONE)
    sm.advance(Stage.SPEC)
