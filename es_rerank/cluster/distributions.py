"""The server distributions a local node can run: Elasticsearch's and OpenSearch's.

Each distribution is one object holding its facts (Maven artifact, scripts, environment
variables, main class, settings) and the few steps that differ (plugins to install,
JVM options to adjust); :class:`~es_rerank.cluster.local.LocalCluster` runs either
through this one interface. (The query side of each engine is :mod:`es_rerank.engines`;
both are keyed by the names in :data:`es_rerank.config.ENGINE_NAMES`.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

from .._versions import ES_VERSION, OPENSEARCH_VERSION
from . import analysis_plugin, maven


@dataclass(frozen=True)
class PluginSpec:
    """A plugin a distribution needs, and how to get its zip.

    Attributes:
        name: The plugin's folder under ``plugins/`` (its descriptor name).
        version: The ``version`` its descriptor must show; another is reinstalled.
        make_bundle: ``(dist, java_home, workdir) -> zip path``.
    """

    name: str
    version: str
    make_bundle: Callable[[Path, Path, Path], Path] = field(compare=False, repr=False)


@dataclass(frozen=True)
class Distribution:
    """Facts about one engine's Maven Central distribution. Subclasses add the steps that differ."""

    name: str
    display: str
    default_version: str
    default_port: int
    artifact: str
    main_class: str
    script: str
    plugin_script: str
    keystore_script: str
    config_file: str
    keystore_file: str
    java_home_var: str
    conf_var: str
    java_opts_var: str
    version_key: str
    bootstrap_setting: str = "cluster.initial_master_nodes"  # lists the first master-eligible nodes
    settings: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    def coordinates(self, version: str) -> str:
        """Maven coordinates of the server distribution."""
        return self.artifact.format(version=version)

    def plugins(self, version: str) -> tuple[PluginSpec, ...]:
        """Plugins to install into the distribution before the node starts."""
        return ()

    def jvm_options(self, text: str, *, node_dir: Path, dist: Path) -> str:
        """The distribution's ``jvm.options`` adjusted for a node folder outside it."""
        return text

    def plugin_cli_env(self) -> dict[str, str]:
        """Extra environment for the plugin installer."""
        return {}


class ElasticsearchDistribution(Distribution):
    def plugins(self, version: str) -> tuple[PluginSpec, ...]:
        def bundle(dist: Path, java_home: Path, workdir: Path) -> Path:
            return analysis_plugin.build(dist, java_home=java_home, es_version=version, workdir=workdir)

        return (PluginSpec(analysis_plugin.PLUGIN_NAME, analysis_plugin.plugin_version(), bundle),)

    def plugin_cli_env(self) -> dict[str, str]:
        # the installer scans classes and ran out of memory with its default heap
        return {"CLI_JAVA_OPTS": "-Xmx512m"}


class OpenSearchDistribution(Distribution):
    KNN_ARTIFACT = "org.opensearch.plugin:opensearch-knn:{version}.0:zip"

    def plugins(self, version: str) -> tuple[PluginSpec, ...]:
        coordinates = self.KNN_ARTIFACT.format(version=version)

        def bundle(dist: Path, java_home: Path, workdir: Path) -> Path:
            return maven.fetch(coordinates, workdir)

        return (PluginSpec("opensearch-knn", f"{version}.0", bundle),)

    def jvm_options(self, text: str, *, node_dir: Path, dist: Path) -> str:
        # OpenSearch's launcher runs from the distribution folder, which the node user may
        # not write: point the relative log, dump and agent paths at absolute ones, and let
        # the heap come from OPENSEARCH_JAVA_OPTS alone
        logs, data = node_dir / "logs", node_dir / "data"
        text = re.sub(r"(file=|ErrorFile=|-Xloggc:)logs/", lambda m: f"{m.group(1)}{logs}/", text)
        text = re.sub(r"HeapDumpPath=data\b", f"HeapDumpPath={data}", text)
        text = re.sub(r"-javaagent:agent/", f"-javaagent:{dist}/agent/", text)
        return re.sub(r"(?m)^(-Xm[sx]\S*)$", r"# \1 (es-rerank: the heap is set in OPENSEARCH_JAVA_OPTS)", text)


ELASTICSEARCH = ElasticsearchDistribution(
    name="elasticsearch",
    display="Elasticsearch",
    default_version=ES_VERSION,
    default_port=9200,
    artifact="org.elasticsearch.distribution.integ-test-zip:elasticsearch:{version}:zip",
    main_class="org.elasticsearch.bootstrap.Elasticsearch",
    script="elasticsearch",
    plugin_script="elasticsearch-plugin",
    keystore_script="elasticsearch-keystore",
    config_file="elasticsearch.yml",
    keystore_file="elasticsearch.keystore",
    java_home_var="ES_JAVA_HOME",
    conf_var="ES_PATH_CONF",
    java_opts_var="ES_JAVA_OPTS",
    version_key="elasticsearch.version",
    settings=MappingProxyType({"xpack.security.enabled": False}),
)

OPENSEARCH = OpenSearchDistribution(
    name="opensearch",
    display="OpenSearch",
    default_version=OPENSEARCH_VERSION,
    default_port=9202,
    artifact="org.opensearch.distribution.integ-test-zip:opensearch:{version}:zip",
    main_class="org.opensearch.bootstrap.OpenSearch",
    script="opensearch",
    plugin_script="opensearch-plugin",
    keystore_script="opensearch-keystore",
    config_file="opensearch.yml",
    keystore_file="opensearch.keystore",
    java_home_var="OPENSEARCH_JAVA_HOME",
    conf_var="OPENSEARCH_PATH_CONF",
    java_opts_var="OPENSEARCH_JAVA_OPTS",
    version_key="opensearch.version",
    bootstrap_setting="cluster.initial_cluster_manager_nodes",
)

DISTRIBUTIONS: dict[str, Distribution] = {d.name: d for d in (ELASTICSEARCH, OPENSEARCH)}
"""The local server distribution of each name in :data:`es_rerank.config.ENGINE_NAMES`."""
