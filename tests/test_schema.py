"""Mappings: loaded from mappings/chunks.json, placeholders filled, mismatches named."""

import pytest

from es_rerank.errors import ConfigError, MappingMismatchError
from es_rerank.schema import check_mapping, load_mapping


def test_load_fills_placeholders():
    body = load_mapping(384, analyzer="standard", hnsw_m=24, hnsw_ef_construction=128)
    vec = body["mappings"]["properties"]["embedding"]
    assert vec == {"type": "dense_vector", "dims": 384, "index": True, "similarity": "cosine",
                   "index_options": {"type": "hnsw", "m": 24, "ef_construction": 128}}
    assert body["mappings"]["properties"]["text"] == {"type": "text", "analyzer": "standard"}
    assert "{{" not in repr(body)


@pytest.mark.parametrize("kwargs,match", [({"dims": 0}, "dims must be >= 1"),
                                          ({"dims": 3, "vector_index_type": "flat-ish"}, "vector_index_type")])
def test_load_rejects(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        load_mapping(**kwargs)


def test_check_accepts_own_mapping():
    check_mapping("i", load_mapping(384)["mappings"], dims=384)


def test_check_names_dims_mismatch():
    with pytest.raises(MappingMismatchError, match=r"embedding dims are 768 in the index but the configured embedder produces 384"):
        check_mapping("i", load_mapping(768)["mappings"], dims=384)


def test_check_names_missing_and_wrong_fields():
    mapping = {"properties": {"text": {"type": "keyword"}}}
    with pytest.raises(MappingMismatchError) as err:
        check_mapping("docs", mapping, dims=384)
    msg = str(err.value)
    assert "index 'docs'" in msg and "field 'text' is keyword, expected text" in msg
    assert "field 'embedding' is missing" in msg
