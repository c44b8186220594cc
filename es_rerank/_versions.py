"""The Elasticsearch version this package is built and tested against.

The Python client's major.minor in ``pyproject.toml`` and the image tag in
``docker-compose.yml`` follow this value; ``tests/test_versions.py`` checks it.
"""

ES_VERSION = "9.2.8"
