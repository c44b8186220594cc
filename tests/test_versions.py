"""The server versions, the client pin and the compose images move together."""

import re
from importlib.metadata import version
from pathlib import Path

from es_rerank._versions import ES_VERSION, OPENSEARCH_VERSION

ROOT = Path(__file__).resolve().parent.parent


def _major_minor(v: str) -> tuple[int, int]:
    major, minor = v.split(".")[:2]
    return int(major), int(minor)


def test_installed_client_matches_server_major_minor():
    assert _major_minor(version("elasticsearch")) == _major_minor(ES_VERSION)


def test_pyproject_pin_matches_server():
    major, minor = _major_minor(ES_VERSION)
    assert f'"elasticsearch>={major}.{minor},<{major}.{minor + 1}"' in (ROOT / "pyproject.toml").read_text()


def test_compose_image_matches_server():
    compose = (ROOT / "docker-compose.yml").read_text()
    assert re.search(rf"elasticsearch/elasticsearch:{re.escape(ES_VERSION)}\b", compose)


def test_compose_opensearch_image_matches_server():
    compose = (ROOT / "docker-compose.yml").read_text()
    assert re.search(rf"opensearchproject/opensearch:{re.escape(OPENSEARCH_VERSION)}\b", compose)


def test_one_list_of_engine_names():
    """The query engines and the local distributions are keyed by config's one list of names."""
    from es_rerank.cluster import DISTRIBUTIONS
    from es_rerank.config import ENGINE_CHOICES, ENGINE_NAMES
    from es_rerank.engines import ENGINES

    assert tuple(ENGINES) == tuple(DISTRIBUTIONS) == ENGINE_NAMES == ("elasticsearch", "opensearch")
    assert ENGINE_CHOICES == ("auto", *ENGINE_NAMES)
    assert all(ENGINES[n].name == DISTRIBUTIONS[n].name == n for n in ENGINE_NAMES)


def test_local_cluster_defaults_follow_versions():
    from es_rerank.cluster import DISTRIBUTIONS

    assert DISTRIBUTIONS["elasticsearch"].default_version == ES_VERSION
    assert DISTRIBUTIONS["opensearch"].default_version == OPENSEARCH_VERSION
    # the k-NN plugin must match its server exactly
    (knn,) = DISTRIBUTIONS["opensearch"].plugins(OPENSEARCH_VERSION)
    assert knn.version == f"{OPENSEARCH_VERSION}.0"
