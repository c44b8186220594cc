"""The server versions this package is built and tested against.

The Python client's major.minor in ``pyproject.toml`` and the image tags in
``docker-compose.yml`` follow these values; ``tests/test_versions.py`` and
``tests/test_compose.py`` check them. The local cluster (``es-rerank cluster start``)
fetches these versions from Maven Central; OpenSearch's k-NN plugin must match its
server exactly (``<OPENSEARCH_VERSION>.0``).
"""

ES_VERSION = "9.2.8"
OPENSEARCH_VERSION = "3.5.0"

PACKAGE_VERSION = "0.2.0"
"""es-rerank's own version (``pyproject.toml`` holds the same; written into index markers)."""
