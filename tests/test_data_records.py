"""Record encoding and the metadata filter language."""

import numpy as np
import pytest

from swallow_jax.data import filters
from swallow_jax.data import records


def test_record_round_trip():
  tokens = [128000, 5, 128255, 128001]
  rec = records.encode_record(tokens, meta={"subset": "stories", "score": 3})
  got, mask = records.decode_record(rec, "text")
  assert got.tolist() == tokens and got.dtype == np.int32 and mask is None
  assert records.read_meta(rec) == {"score": 3, "subset": "stories"}
  rec = records.encode_record(tokens, [0, 1, 1, 0])
  got, mask = records.decode_record(rec, "chat")
  assert got.tolist() == tokens and mask.tolist() == [0, 1, 1, 0]
  assert records.read_meta(rec) == {} and len(rec) == 4 + 4 * 4 + 4
  with pytest.raises(ValueError, match="loss_mask"):
    records.encode_record(tokens, [1])


@pytest.mark.parametrize("expr,meta,keep", [
    ("subset not in [web_samples_v1, web_samples_v2]", {"subset": "stories"}, True),
    ("subset not in [web_samples_v1, web_samples_v2]", {"subset": "web_samples_v2"}, False),
    ("subset not in [web_samples_v1]", {}, True),
    ("lang == ja", {"lang": "ja"}, True),
    ("lang == ja", {}, False),
    ("lang != ja", {}, True),
    ('format in ["text book", wikihow] and audience != children',
     {"format": "text book", "audience": "adults"}, True),
    ('format in ["text book", wikihow] and audience != children',
     {"format": "wikihow", "audience": "children"}, False),
    ("score == 3", {"score": 3}, True),
    ("flag == true", {"flag": True}, True),
])
def test_filter(expr, meta, keep):
  f = filters.parse_filter(expr)
  assert f(meta) is keep
  assert f.fields <= {"subset", "lang", "format", "audience", "score", "flag"}


@pytest.mark.parametrize("expr", ["subset ~ x", "subset in x", "subset in [a,,b]",
                                  "subset in [a,]", "subset == a b", "== x"])
def test_filter_syntax_errors(expr):
  with pytest.raises(ValueError, match="filter"):
    filters.parse_filter(expr)


def test_no_filter():
  assert filters.parse_filter(None) is None and filters.parse_filter("  ") is None


def test_shard_source_names_a_corrupt_shard_and_record(tmp_path):
  writer = records.ShardWriter(str(tmp_path), 3)
  for i in range(5):
    writer.write(records.encode_record([i, i + 1]), 2)
  manifest = {"shards": writer.close()}
  source = records.ShardSource(str(tmp_path), manifest)
  assert len(source) == 5
  assert records.decode_record(source[4], "text")[0].tolist() == [4, 5]
  shard = tmp_path / records.shard_name(1)
  data = shard.read_bytes()
  shard.write_bytes(data[:len(data) // 2])  # a copy cut short
  source = records.ShardSource(str(tmp_path), manifest)
  assert records.decode_record(source[0], "text")[0].tolist() == [0, 1]
  with pytest.raises(ValueError, match=rf"{shard}: record 1: corrupt ArrayRecord shard"):
    source[4]
