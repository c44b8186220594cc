"""Which local nodes make one cluster, and the settings that join them: pure, no I/O.

A local cluster of ``size`` nodes takes consecutive HTTP ports from ``first_port`` and
consecutive transport ports from ``first_port + 100``. One node runs with
``discovery.type: single-node`` (as es-rerank always did); several find each other
through ``discovery.seed_hosts`` (every node's transport address) and bootstrap from
the full list of node names (``cluster.initial_master_nodes``, OpenSearch's
``cluster.initial_cluster_manager_nodes``).

The layout is recorded in each node folder (:data:`RECORD_FILE`) so that a later
``status`` or ``stop`` naming only the first port acts on exactly those nodes, and a
node folder is never started as part of a cluster of another shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import ClusterError

TRANSPORT_OFFSET = 100
"""A node's transport port is its HTTP port plus this."""

RECORD_FILE = "es-rerank-cluster.json"
"""The file in each node folder that records the cluster it belongs to."""

MAX_NODES = 9


@dataclass(frozen=True)
class NodeSpec:
    """One node of a local cluster.

    Attributes:
        index: 0 for the first node.
        http_port: Its HTTP port.
        transport_port: Its transport port (``http_port + 100``).
        name: Its ``node.name``.
    """

    index: int
    http_port: int
    transport_port: int
    name: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@dataclass(frozen=True)
class Topology:
    """``size`` nodes of ``engine`` on consecutive ports from ``first_port``.

    Args:
        engine: The engine's name (``"elasticsearch"`` or ``"opensearch"``), part of each node name.
        first_port: The first node's HTTP port.
        size: How many nodes, 1 to 9.
        bootstrap_setting: The setting that lists the initial master-eligible nodes
            (``cluster.initial_master_nodes``; OpenSearch: ``cluster.initial_cluster_manager_nodes``).

    Raises:
        ClusterError: ``size`` or a port is out of range (the message names the value).
    """

    engine: str
    first_port: int
    size: int = 1
    bootstrap_setting: str = "cluster.initial_master_nodes"

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 1 <= self.size <= MAX_NODES:
            raise ClusterError(f"nodes must be an integer from 1 to {MAX_NODES}, got {self.size!r}")
        last = 65535 - TRANSPORT_OFFSET - (self.size - 1)
        if isinstance(self.first_port, bool) or not isinstance(self.first_port, int) \
                or not 1024 <= self.first_port <= last:
            raise ClusterError(f"port must be an integer from 1024 to {last} for {self.size} node(s) (HTTP ports "
                               f"port..port+{self.size - 1}, transport ports {TRANSPORT_OFFSET} above), "
                               f"got {self.first_port!r}")

    @property
    def nodes(self) -> tuple[NodeSpec, ...]:
        return tuple(NodeSpec(i, self.first_port + i, self.first_port + i + TRANSPORT_OFFSET,
                              f"es-rerank-{self.engine}-{self.first_port + i}") for i in range(self.size))

    def discovery_settings(self) -> dict[str, object]:
        """How the nodes find each other: single-node discovery for one, seed hosts and bootstrap names for more."""
        if self.size == 1:
            return {"discovery.type": "single-node"}
        return {
            "discovery.seed_hosts": [f"127.0.0.1:{n.transport_port}" for n in self.nodes],
            self.bootstrap_setting: [n.name for n in self.nodes],
        }

    def node_settings(self, node: NodeSpec, *, cluster_name: str) -> dict[str, object]:
        """The network, name and discovery settings of ``node`` (paths and the rest are the caller's)."""
        return {
            "cluster.name": cluster_name,
            "node.name": node.name,
            "network.host": "127.0.0.1",
            "http.port": node.http_port,
            "transport.port": node.transport_port,
            **self.discovery_settings(),
        }

    def record(self, node: NodeSpec) -> bytes:
        """The record written into ``node``'s folder."""
        return (json.dumps({"engine": self.engine, "first_port": self.first_port, "nodes": self.size,
                            "index": node.index}, sort_keys=True) + "\n").encode()

    @staticmethod
    def read_record(text: str | None, *, where: str) -> dict | None:
        """The record's fields, or None for no record (a folder from before records: one node).

        Raises:
            ClusterError: The record is not one es-rerank writes.
        """
        if text is None:
            return None
        try:
            got = json.loads(text)
        except ValueError as e:
            raise ClusterError(f"{where} is not valid JSON; it was not written by es-rerank") from e
        ok = isinstance(got, dict) and all(isinstance(got.get(k), int) and not isinstance(got.get(k), bool)
                                           for k in ("first_port", "nodes", "index"))
        if not ok:
            raise ClusterError(f"{where} does not hold first_port, nodes and index; it was not written by es-rerank")
        return got

    def check_record(self, node: NodeSpec, record: dict | None, *, where: str) -> None:
        """Refuse to run ``node``'s folder as part of a cluster of another shape than it was made for.

        Raises:
            ClusterError: The folder belongs to another cluster layout (the message says which and what to do).
        """
        if record is None:
            if self.size == 1:
                return
            record = {"first_port": node.http_port, "nodes": 1, "index": 0}
        if (record["first_port"], record["nodes"], record["index"]) != (self.first_port, self.size, node.index):
            raise ClusterError(
                f"{where} is node {record['index'] + 1} of a {record['nodes']}-node cluster whose first HTTP port is "
                f"{record['first_port']}, not node {node.index + 1} of {self.size} from port {self.first_port}; use "
                f"--port {record['first_port']} --nodes {record['nodes']}, or another port")
