"""A local single-node Elasticsearch or OpenSearch, fetched from Maven Central (no Docker).

Example:
    >>> from es_rerank.cluster import LocalCluster
    >>> cluster = LocalCluster()            # doctest: +SKIP
    >>> cluster.start()                     # doctest: +SKIP
    'http://127.0.0.1:9200'

See :mod:`es_rerank.cluster.local` for the folder layout and the safety rules.
"""

from .distributions import DISTRIBUTIONS
from .local import CLUSTER_NAME, SERVICE_USER, LocalCluster, ServiceUser, default_home, find_java, java_major

__all__ = ["CLUSTER_NAME", "DISTRIBUTIONS", "SERVICE_USER", "LocalCluster", "ServiceUser", "default_home", "find_java",
           "java_major"]
