"""actors.weight_sync's tmpfs backend: files laid out once, rewritten in place, read through a mapping, fenced."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from actors import weight_sync as ws
from actors.weight_sync import TensorFile, TmpfsWeightSync, mapped, read_version


def _mixed():
    g = torch.Generator().manual_seed(0)
    return {
        "a.int8": torch.randint(-5, 5, (3,), dtype=torch.int8, generator=g),  # 3 bytes first in send order: the file reorders
        "b.bf16": torch.randn(4, 3, generator=g).to(torch.bfloat16),
        "c.f32": torch.randn(5, 2, generator=g).t(),  # not contiguous
        "d.i64": torch.arange(7),
        "e.bool": torch.tensor([True, False, True]),
        "f.f16": torch.randn(2, generator=g).half(),
    }


def test_round_trip_of_mixed_dtypes_is_exact_and_any_safetensors_reader_opens_it(tmp_path):
    sync = TmpfsWeightSync(run_id="unit-mixed", root=tmp_path)
    src = _mixed()
    h = sync.send(src.items(), version=3)
    got, version = sync.receive(h)
    assert version == 3 and list(got) == list(src)  # the send order is kept
    for k, t in src.items():
        assert got[k].dtype == t.dtype and torch.equal(got[k], t), k
    plain = load_file(h["file"])  # safetensors' own reader
    assert all(torch.equal(plain[k], src[k]) for k in src)
    assert read_version(h["file"])[1] == 3
    got["d.i64"].add_(1)  # receive() hands out private copies
    assert torch.equal(sync.receive(h)[0]["d.i64"], src["d.i64"])
    sync.close()


def test_a_slot_is_rewritten_in_place_and_a_new_layout_gets_a_new_file(tmp_path):
    sync = TmpfsWeightSync(run_id="unit-slots", root=tmp_path, keep=1)
    sd = {"w": torch.ones(4, 4), "b": torch.zeros(4)}
    h1 = sync.send(sd.items(), version=1)
    ino = os.stat(h1["file"]).st_ino
    reader = mapped(h1["file"])
    sd["w"].mul_(3)
    h2 = sync.send(sd.items(), version=2)
    assert h2["file"] == h1["file"] and os.stat(h2["file"]).st_ino == ino  # the same file: no new pages to allocate
    assert mapped(h2["file"]) is reader  # the receiver's mapping is kept too
    with reader.reading(2) as views:
        assert torch.equal(views["w"], sd["w"])
    with pytest.raises(FileNotFoundError, match="now holds version 2, not 1"):
        sync.receive_file(h1)
    h3 = sync.send([("w", torch.ones(5, 5))], version=3)  # another layout
    assert os.stat(h3["file"]).st_ino != ino
    fresh = mapped(h3["file"])
    assert fresh is not reader and list(fresh.views()) == ["w"]
    sync.close()
    assert not list(tmp_path.rglob("*.safetensors"))


def test_a_read_that_overlaps_a_write_fails_instead_of_returning_torn_weights(tmp_path):
    sync = TmpfsWeightSync(run_id="unit-fence", root=tmp_path, keep=1)
    h = sync.send([("w", torch.zeros(8))], version=1)
    reader = mapped(h["file"])
    with pytest.raises(RuntimeError, match="rewritten while it was being read"):
        with reader.reading(1) as views:
            assert float(views["w"].sum()) == 0.0
            sync.send([("w", torch.ones(8))], version=2)  # the sender writes meanwhile
    with pytest.raises(RuntimeError, match="holds version 2, not 5"):
        TensorFile.open(h["file"]).check(5)
    writer = sync._slots[0]
    writer._set(ws.SEQ_KEY, writer._field(ws.SEQ_KEY) + 1)  # as a sender killed in the middle of a write leaves it
    with pytest.raises(RuntimeError, match="being written"):
        with reader.reading(2):
            pass
    sync.close()


def test_tied_output_layer_is_written_without_a_clone_and_bad_input_is_named(tmp_path):
    emb = torch.randn(6, 2)
    sync = TmpfsWeightSync(run_id="unit-tied", root=tmp_path)
    got, _ = sync.receive(sync.send([("model.embed_tokens.weight", emb)], version=1))
    assert torch.equal(got["lm_head.weight"], emb)
    with pytest.raises(ValueError, match=r"dtype torch.complex64.*accepts"):
        sync.send([("z", torch.zeros(2, dtype=torch.complex64))], version=2)
    with pytest.raises(TypeError, match=r"\{'file': path, 'version': int\}"):
        sync.receive_file("/dev/shm/some/folder")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="header of"):
        read_version(bad)
    bad.write_bytes(b"abc")
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_version(bad)
    sync.close()


def test_a_removed_files_mapping_is_let_go(tmp_path):
    sync = TmpfsWeightSync(run_id="unit-gone", root=tmp_path)
    h = sync.send([("w", torch.ones(3))], version=1)
    mapped(h["file"])
    assert h["file"] in ws._MAPPED
    sync.close()
    other = TmpfsWeightSync(run_id="unit-gone-2", root=tmp_path)
    mapped(other.send([("w", torch.ones(3))], version=1)["file"])
    assert h["file"] not in ws._MAPPED  # the closed run's pages are not held by this process
    other.close()
