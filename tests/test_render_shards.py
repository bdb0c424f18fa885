"""Shard files: 16-bit PNG round trip, atomic shard writing, WebDataset grouping."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from render.shards import ShardWriter, decode_depth_png, encode_depth_png, iter_shard, read_manifest


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (97, 131)])
def test_png_round_trip_keeps_all_16_bits(shape):
    depth = np.random.default_rng(0).integers(0, 65536, shape).astype(np.uint16)
    data = encode_depth_png(depth)
    np.testing.assert_array_equal(decode_depth_png(data), depth)
    with Image.open(io.BytesIO(data)) as img:  # a standard 16-bit grayscale PNG for other readers
        assert img.mode == "I;16" and img.size == shape[::-1]


def test_png_refuses_other_dtypes():
    with pytest.raises(ValueError, match="uint16"):
        encode_depth_png(np.zeros((4, 4), np.float32))
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buf, format="PNG")
    with pytest.raises(ValueError, match="16-bit"):
        decode_depth_png(buf.getvalue())


def test_shard_appears_only_when_closed(tmp_path):
    writer = ShardWriter(tmp_path, 7)
    writer.add("000000001", {"depth.png": b"a", "json": b"{}"})
    assert not writer.path.exists()
    record = writer.close()
    assert record.name == "shard-000007.tar" and record.count == 1 and writer.path.exists()
    assert list(iter_shard(writer.path)) == [("000000001", {"depth.png": b"a", "json": b"{}"})]
    assert not list(tmp_path.glob(".*"))


def test_failed_shard_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, 0) as writer:
            writer.add("000000000", {"json": b"{}"})
            raise RuntimeError("worker died")
    assert list(tmp_path.iterdir()) == []


def test_keys_with_dots_are_refused(tmp_path):
    with ShardWriter(tmp_path, 0) as writer:
        with pytest.raises(ValueError, match="dots"):
            writer.add("0.1", {"json": b"{}"})
        writer.close()
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        assert tar.getnames() == []


@pytest.mark.parametrize("content", [b"[1, 2]", b"\xff\xfe\x00", b"{not json"])
def test_unreadable_manifest_is_refused_by_name(tmp_path, content):
    (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(ValueError, match=r"manifest\.json: (cannot read manifest|manifest must be a JSON object)"):
        read_manifest(tmp_path)
