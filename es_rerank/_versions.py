"""The Elasticsearch version this package is built and tested against.

The Python client's major.minor in ``pyproject.toml`` and the image tag in
``docker-compose.yml`` follow this value; ``tests/test_versions.py`` checks it.
"""

ES_VERSION = "9.2.8"

PACKAGE_VERSION = "0.2.0"
"""es-rerank's own version (``pyproject.toml`` holds the same; written into index markers)."""
