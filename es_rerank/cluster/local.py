"""A local single-node Elasticsearch or OpenSearch for machines without a Docker engine.

The server comes from Maven Central (the engines' ``integ-test-zip`` distributions), which
ships no JDK: a Java 21+ JDK is looked up on the machine. Both engines refuse to run as
root, so when started by root the node runs as the system user ``esrerank``. The node
binds 127.0.0.1 with ``discovery.type: single-node`` and security off: it is for
development and CI, never for production.

Layout of the cluster folder (``ES_RERANK_CLUSTER_DIR``)::

    .es-rerank-created            what es-rerank created here (see safefs)
    elasticsearch-9.2.8/          a distribution, owned by the caller (root), read-only to the node
    opensearch-3.5.0/
    elasticsearch-node-9200/      one node per engine and port, owned by the caller, mode 0750
        config/                   written by es-rerank at each start; read-only to the node
        data/ logs/ run/          owned by the node user, mode 0750, files 0640
        launcher.log              the launcher's output

The node user can write only its data, logs and run folders; root never follows a
link, changes an owner or deletes anything there (see :mod:`.safefs`), and signals a
process only when it is provably this node (see :mod:`.procs`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ..config import SettingInfo
from ..errors import ClusterError
from . import maven, procs, safefs
from .distributions import DISTRIBUTIONS, Distribution
from .topology import RECORD_FILE, TRANSPORT_OFFSET, NodeSpec, Topology

logger = logging.getLogger(__name__)

CLUSTER_NAME = "es-rerank-local"
SERVICE_USER = "esrerank"
MIN_JAVA = 21
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# settings es-rerank owns: overriding them could expose an unsecured node or move its data
_PROTECTED_PREFIXES = ("network.", "path.", "discovery.", "xpack.security.", "cluster.initial_master_nodes",
                       "cluster.initial_cluster_manager_nodes")
_PROTECTED_KEYS = {"cluster.name", "node.name", "http.port", "transport.port", "http.host", "http.bind_host",
                   "http.publish_host", "transport.host", "transport.bind_host", "transport.publish_host"}
_SETTING_KEY = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


def default_home(env: Mapping[str, str] | None = None) -> Path:
    """Where local clusters live: ``ES_RERANK_CLUSTER_DIR``, else a per-user folder.

    Root's home is not readable by the service user, so root gets ``/var/lib/es-rerank``.

    Args:
        env: The environment to read. Defaults to ``os.environ``.
    """
    env = os.environ if env is None else env
    if env.get("ES_RERANK_CLUSTER_DIR"):
        return Path(env["ES_RERANK_CLUSTER_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/es-rerank")
    cache = env.get("XDG_CACHE_HOME")
    return (Path(cache) if cache else Path.home() / ".cache") / "es-rerank"


def explain_cluster(env: Mapping[str, str] | None = None) -> list[SettingInfo]:
    """The local cluster's variables in effect (``es-rerank cluster``), each with where it came from.

    Args:
        env: The environment to read. Defaults to ``os.environ``.

    Returns:
        One row per variable, as :func:`es_rerank.config.explain` gives for the main settings.
    """
    env = os.environ if env is None else env

    def row(name: str, var: str, default: str) -> SettingInfo:
        value = env.get(var, "")
        return SettingInfo(name, var, value, "environment") if value else SettingInfo(name, var, default, "default")

    engine = env.get("ES_RERANK_CLUSTER_ENGINE") or "elasticsearch"
    port = str(DISTRIBUTIONS[engine].default_port) if engine in DISTRIBUTIONS else "9200"
    java = next((v for v in ("ES_JAVA_HOME", "JAVA_HOME") if env.get(v)), None)
    if java == "JAVA_HOME":
        jdk = SettingInfo("java_home", "ES_JAVA_HOME", env[java], "environment (JAVA_HOME)")
    else:
        jdk = row("java_home", "ES_JAVA_HOME", "(not set: a JDK 21+ under /usr/lib/jvm, found at start)")
    return [
        row("cluster_engine", "ES_RERANK_CLUSTER_ENGINE", "elasticsearch"),
        row("cluster_port", "ES_RERANK_CLUSTER_PORT", port),
        row("cluster_nodes", "ES_RERANK_CLUSTER_NODES", "1 (or as recorded in the first node's folder)"),
        row("cluster_heap", "ES_RERANK_CLUSTER_HEAP", "1g"),
        row("cluster_dir", "ES_RERANK_CLUSTER_DIR", str(default_home(env))),
        jdk,
    ]


def java_major(java_home: Path) -> int | None:
    """The major Java version of a JDK folder, read from its ``release`` file."""
    release = java_home / "release"
    if not release.is_file():
        return None
    match = re.search(r'^JAVA_VERSION="(\d+)', release.read_text(errors="replace"), re.M)
    return int(match.group(1)) if match else None


def find_java(min_major: int = MIN_JAVA, *, env_vars: tuple[str, ...] = ("ES_JAVA_HOME", "JAVA_HOME")) -> Path:
    """Find a JDK of at least ``min_major``: the folders in ``env_vars``, then /usr/lib/jvm.

    Args:
        min_major: Lowest acceptable major version. Defaults to 21.
        env_vars: Environment variables naming a JDK, tried first. Defaults to
            ``ES_JAVA_HOME`` and ``JAVA_HOME``.

    Raises:
        ClusterError: No suitable JDK was found (the message lists what was seen).
    """
    seen: list[str] = []
    candidates: list[Path] = [Path(os.environ[v]) for v in env_vars if os.environ.get(v)]
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        candidates.extend(sorted(jvm.iterdir(), reverse=True))
    for home in candidates:
        major = java_major(home)
        seen.append(f"{home} (Java {major})")
        if major is not None and major >= min_major and (home / "bin" / "java").exists():
            return home
    raise ClusterError(f"Java {min_major}+ is needed; none found. Seen: {', '.join(seen) or 'nothing'}. "
                       f"Install a JDK and set {env_vars[0]}.")


@dataclass(frozen=True)
class ServiceUser:
    """The system user a node runs as when es-rerank runs as root."""

    name: str
    uid: int
    gid: int


def _service_user(create: bool) -> ServiceUser | None:
    """The service user when running as root (created on demand), else None."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        if not create:
            return None
        logger.info("creating system user %s to run the node", SERVICE_USER)
        proc = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                               "--shell", "/usr/sbin/nologin", SERVICE_USER], capture_output=True, text=True)
        if proc.returncode != 0 and proc.returncode != 9:  # 9: it appeared meanwhile
            raise ClusterError(f"could not create the system user {SERVICE_USER}: {proc.stderr.strip()}")
        entry = pwd.getpwnam(SERVICE_USER)
    return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _http(url: str, timeout: float = 2.0) -> tuple[dict, Mapping[str, str]] | None:
    """GET ``url``: its JSON body and headers, or None when nothing answers with JSON."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read().decode()), resp.headers
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _yaml_scalar(value: object) -> str:
    # JSON scalars and flow lists are valid YAML; strings get escaped quotes
    return json.dumps(value)


class LocalCluster:
    """A local Elasticsearch or OpenSearch of one or more nodes under ``home``, from 127.0.0.1:``port``.

    The constructor only validates and stores; nothing is fetched or started before
    :meth:`start` (or :meth:`prepare`).

    Args:
        engine: ``"elasticsearch"`` or ``"opensearch"``. Defaults to
            ``ES_RERANK_CLUSTER_ENGINE`` or ``"elasticsearch"``.
        version: Server version. Defaults to the version this package pins for the engine
            (``es_rerank._versions``).
        home: Folder for distributions and nodes. Defaults to :func:`default_home`.
        port: HTTP port of the first node (the transport port is ``port + 100``; further nodes
            take the next ports). Defaults to ``ES_RERANK_CLUSTER_PORT``, else 9200 for
            Elasticsearch and 9202 for OpenSearch.
        heap: JVM heap (``-Xms``/``-Xmx``), e.g. ``"512m"``. Defaults to
            ``ES_RERANK_CLUSTER_HEAP`` or ``"1g"``.
        extra_settings: More node settings, written into the node's config file at each
            start, e.g. ``{"thread_pool.write.queue_size": 1}``. Settings es-rerank owns
            (network, paths, ports, discovery, security, names) are refused. Defaults to none.
        nodes: How many nodes (1 to 9), each with its own folder, heap and ports, joined into
            one cluster. Defaults to ``ES_RERANK_CLUSTER_NODES``, else the count recorded in the
            first node's folder, else 1 (a single node with ``discovery.type: single-node``).

    Example:
        >>> from es_rerank.cluster import LocalCluster
        >>> cluster = LocalCluster(engine="opensearch", port=9202)   # doctest: +SKIP
        >>> cluster.start()                                          # doctest: +SKIP
        'http://127.0.0.1:9202'
        >>> cluster.stop()                                           # doctest: +SKIP
        True
    """

    def __init__(self, engine: str | None = None, version: str | None = None, home: str | Path | None = None,
                 port: int | None = None, heap: str | None = None,
                 extra_settings: Mapping[str, object] | None = None, nodes: int | None = None) -> None:
        if engine is None:
            engine = os.environ.get("ES_RERANK_CLUSTER_ENGINE") or "elasticsearch"
        if engine not in DISTRIBUTIONS:
            raise ClusterError(f"engine must be one of {sorted(DISTRIBUTIONS)}, got {engine!r}")
        self._distribution: Distribution = DISTRIBUTIONS[engine]
        self._version = self._distribution.default_version if version is None else version
        if not re.fullmatch(r"\d+\.\d+\.\d+", self._version):
            raise ClusterError(f"version must look like 9.2.8, got {self._version!r}")
        home_path = default_home() if home is None else Path(home)
        self._home = Path(os.path.abspath(home_path))
        if re.search(r"\s", str(self._home)):
            raise ClusterError(f"the cluster folder must not contain white space (JVM options are split on it), "
                               f"got {str(self._home)!r}")
        if port is None:
            env_port = os.environ.get("ES_RERANK_CLUSTER_PORT")
            if env_port and not env_port.strip().isdigit():
                raise ClusterError(f"ES_RERANK_CLUSTER_PORT must be a port number, got {env_port!r}")
            port = int(env_port) if env_port else self._distribution.default_port
        if isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65535 - TRANSPORT_OFFSET:
            raise ClusterError(f"port must be an integer from 1024 to {65535 - TRANSPORT_OFFSET} (the transport "
                               f"port is port + {TRANSPORT_OFFSET}), got {port!r}")
        self._port = port
        if heap is None:
            heap = os.environ.get("ES_RERANK_CLUSTER_HEAP") or "1g"
        if not re.fullmatch(r"[1-9][0-9]*[kKmMgG]", heap):
            raise ClusterError(f"heap must be a JVM size such as 512m or 1g, got {heap!r}")
        self._heap = heap
        self._extra = MappingProxyType(self._check_settings(extra_settings or {}))
        if nodes is None:
            env_nodes = os.environ.get("ES_RERANK_CLUSTER_NODES")
            if env_nodes and not env_nodes.strip().isdigit():
                raise ClusterError(f"ES_RERANK_CLUSTER_NODES must be a number of nodes, got {env_nodes!r}")
            nodes = int(env_nodes) if env_nodes else None
        if nodes is not None:
            Topology(self._distribution.name, port, nodes)  # validates the count and the ports it takes
        self._nodes_arg = nodes

    @staticmethod
    def _check_settings(settings: Mapping[str, object]) -> dict[str, object]:
        checked: dict[str, object] = {}
        for key, value in settings.items():
            if not isinstance(key, str) or not _SETTING_KEY.fullmatch(key):
                raise ClusterError(f"extra setting names must be dotted words, got {key!r}")
            if key in _PROTECTED_KEYS or key.startswith(_PROTECTED_PREFIXES):
                raise ClusterError(f"extra setting {key!r} is set by es-rerank itself and cannot be overridden")
            scalars = (str, int, float, bool)
            ok = isinstance(value, scalars) or (isinstance(value, (list, tuple))
                                                and all(isinstance(v, scalars) for v in value))
            if not ok:
                raise ClusterError(f"extra setting {key!r} must be a string, number, boolean or list of them, "
                                   f"got {value!r}")
            checked[key] = list(value) if isinstance(value, tuple) else value
        return checked

    # -- names and paths -----------------------------------------------------------

    @property
    def engine(self) -> str:
        return self._distribution.name

    @property
    def version(self) -> str:
        return self._version

    @property
    def home(self) -> Path:
        return self._home

    @property
    def port(self) -> int:
        return self._port

    @property
    def heap(self) -> str:
        return self._heap

    @property
    def extra_settings(self) -> Mapping[str, object]:
        return self._extra

    @property
    def url(self) -> str:
        """The first node's URL (any node of the cluster answers for all)."""
        return f"http://127.0.0.1:{self._port}"

    @functools.cached_property
    def topology(self) -> Topology:
        """The nodes: as given (or ``ES_RERANK_CLUSTER_NODES``), else as recorded in the first node's folder, else 1.

        Raises:
            ClusterError: The record in the first node's folder is not one es-rerank writes,
                or the folder is a later node of another cluster.
        """
        size = self._nodes_arg
        if size is None:
            first = NodeSpec(0, self._port, self._port + TRANSPORT_OFFSET, "")
            where = str(self._node_dir(first) / RECORD_FILE)
            record = Topology.read_record(safefs.read_text(self._node_dir(first) / RECORD_FILE), where=where)
            if record is not None and record["index"] != 0:
                raise ClusterError(f"{where}: this is node {record['index'] + 1} of a cluster whose first HTTP port "
                                   f"is {record['first_port']}; use --port {record['first_port']}")
            size = record["nodes"] if record is not None else 1
        return Topology(self._distribution.name, self._port, size, self._distribution.bootstrap_setting)

    @property
    def nodes(self) -> tuple[NodeSpec, ...]:
        return self.topology.nodes

    def _node_dir(self, node: NodeSpec) -> Path:
        return self._home / f"{self._distribution.name}-node-{node.http_port}"

    def _pid_file(self, node: NodeSpec) -> Path:
        return self._node_dir(node) / "run" / f"{self._distribution.name}.pid"

    def _log_file(self, node: NodeSpec) -> Path:
        return self._node_dir(node) / "logs" / f"{CLUSTER_NAME}.log"

    @property
    def dist_dir(self) -> Path:
        return self._home / f"{self._distribution.name}-{self._version}"

    @property
    def node_dir(self) -> Path:
        """The first node's folder."""
        return self._home / f"{self._distribution.name}-node-{self._port}"

    @property
    def node_dirs(self) -> list[Path]:
        return [self._node_dir(n) for n in self.nodes]

    @property
    def pid_file(self) -> Path:
        return self.node_dir / "run" / f"{self._distribution.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.node_dir / "logs" / f"{CLUSTER_NAME}.log"

    @property
    def launcher_log(self) -> Path:
        return self.node_dir / "launcher.log"

    def __repr__(self) -> str:
        return (f"LocalCluster(engine={self.engine!r}, version={self.version!r}, home={str(self.home)!r}, "
                f"port={self.port}, heap={self.heap!r})")

    # -- what answers on the port ---------------------------------------------------

    def _probe(self, node: NodeSpec | None = None) -> tuple[dict, str] | None:
        """Health JSON and engine name (or ``"unknown"``) of whatever answers on a node's port (the first's by default)."""
        got = _http(f"{self.url if node is None else node.url}/_cluster/health")
        if got is None:
            return None
        body, headers = got
        if headers.get("X-Elastic-Product") == "Elasticsearch":
            return body, "elasticsearch"
        if headers.get("X-OpenSearch-Version"):
            return body, "opensearch"
        return body, "unknown"

    def info(self) -> dict | None:
        """Cluster health JSON when a node answers on the port, else None."""
        probe = self._probe()
        return None if probe is None else probe[0]

    def is_ours(self, info: dict | None) -> bool:
        """Whether a health answer comes from an es-rerank node (any engine)."""
        return bool(info) and info.get("cluster_name") == CLUSTER_NAME

    def _identity(self, node: NodeSpec | None = None) -> procs.NodeIdentity | None:
        user = _service_user(create=False)
        if os.geteuid() == 0 and user is None:
            return None  # as root, nodes only ever run as the service user: none can exist
        uid = os.geteuid() if user is None else user.uid
        main_class = self._distribution.main_class
        node_dir = self.node_dir if node is None else self._node_dir(node)
        return procs.NodeIdentity(main_class=main_class, node_dir=node_dir, uid=uid)

    def pid(self, node: NodeSpec | None = None) -> int | None:
        """A node's pid (the first's by default) when it is provably that node (see :mod:`.procs`)."""
        node = self.nodes[0] if node is None else node
        identity = self._identity(node)
        if identity is None:
            return None
        pid = procs.read_pid(safefs.read_text(self._pid_file(node)))
        if pid is not None and identity.matches(pid):
            return pid
        found = identity.find()
        return found[0] if found else None

    def status(self) -> dict:
        """Describe the cluster and each of its nodes.

        Returns:
            ``engine``, ``version`` (the running node's, else the configured one),
            ``url`` (the first node's), ``running`` (a search engine answers on every
            node's port), ``managed`` (they are es-rerank nodes of this engine),
            ``health`` (green/yellow/red or None, from the first node that answers),
            ``pid`` (the first node's, only a process provably that node), ``home``,
            ``node_dir`` (the first node's), ``plugins`` (the running node's, else those
            installed in the distribution), and ``nodes``: per node ``name``, ``url``,
            ``transport_port``, ``running``, ``managed``, ``pid`` and ``node_dir``.
        """
        per_node, answers = [], []
        for node in self.nodes:
            probe = self._probe(node)
            managed = probe is not None and self.is_ours(probe[0]) and probe[1] == self._distribution.name
            per_node.append({"name": node.name, "url": node.url, "transport_port": node.transport_port,
                             "running": probe is not None, "managed": managed, "pid": self.pid(node),
                             "node_dir": str(self._node_dir(node))})
            if probe is not None:
                answers.append((node, probe))
        version, plugins = self._version, self._installed_plugins()
        if answers:
            node, probe = answers[0]
            found = _http(f"{node.url}/_nodes/_local/plugins?filter_path=nodes.*.version,nodes.*.plugins.name")
            for info in ((found[0] if found else {}).get("nodes") or {}).values():
                version = info.get("version", version)
                plugins = sorted(p["name"] for p in info.get("plugins") or [])
        return {
            "engine": answers[0][1][1] if answers else self._distribution.name,
            "version": version,
            "url": self.url,
            "running": len(answers) == len(per_node),
            "managed": bool(answers) and all(n["managed"] for n in per_node),
            "health": answers[0][1][0].get("status") if answers else None,
            "number_of_nodes": answers[0][1][0].get("number_of_nodes") if answers else None,
            "pid": per_node[0]["pid"],
            "home": str(self._home),
            "node_dir": str(self.node_dir),
            "plugins": plugins,
            "nodes": per_node,
        }

    def _installed_plugins(self) -> list[str]:
        folder = self.dist_dir / "plugins"
        st = safefs.lstat_or_none(folder)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return []
        return sorted(e.name for e in os.scandir(folder) if e.is_dir(follow_symlinks=False))

    def log_tail(self, lines: int = 40, node: NodeSpec | None = None) -> str:
        """The last lines of a node's server log (the first node's by default), else of its launcher's output."""
        folder = self.node_dir if node is None else self._node_dir(node)
        for path in (folder / "logs" / f"{CLUSTER_NAME}.log", folder / "launcher.log"):
            text = safefs.read_text(path, limit=256 * 1024)
            if text:
                return "\n".join(text.splitlines()[-lines:])
        return "(no server log found)"

    # -- preparing the folders ----------------------------------------------------------

    @contextmanager
    def _workdir(self) -> Iterator[Path]:
        path = Path(tempfile.mkdtemp(prefix=".es-rerank-work-", dir=self._home))
        try:
            yield path
        finally:
            safefs.remove_tree(path)

    def _run_tool(self, argv: list[str], env: Mapping[str, str], what: str) -> None:
        proc = subprocess.run(argv, env=dict(env), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              cwd=self.dist_dir)
        if proc.returncode != 0:
            raise ClusterError(f"{what} failed (exit {proc.returncode}):\n"
                               + "\n".join((proc.stdout + proc.stderr).splitlines()[-20:]))

    def _tool_env(self, java: Path, **extra: str) -> dict[str, str]:
        return {"PATH": PATH, "LANG": "C.UTF-8", self._distribution.java_home_var: str(java), **extra}

    def _unpack(self) -> None:
        started = time.monotonic()
        with self._workdir() as work:
            archive = self._fetch_archive(work)
            staging = work / "unpack"
            staging.mkdir()
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        raise ClusterError(f"{archive} holds a symlink ({info.filename}); not unpacking it")
                    target = zf.extract(info, staging)
                    if mode and not info.is_dir():
                        os.chmod(target, mode & 0o755)
            tops = list(staging.iterdir())
            if len(tops) != 1 or not tops[0].is_dir():
                raise ClusterError(f"{archive} should hold one top folder, found {[p.name for p in tops]}")
            for folder in [tops[0], *(p for p in tops[0].rglob("*") if p.is_dir() and not p.is_symlink())]:
                os.chmod(folder, 0o755)
            # listed first: a crash in between leaves a listed name with nothing there (unpacked
            # again next time), never an unlisted folder that would need deleting by hand
            safefs.record_created(self._home, self.dist_dir.name)
            os.rename(tops[0], self.dist_dir)
        logger.info("unpacked %s %s into %s in %.1f s", self._distribution.display, self._version, self.dist_dir,
                    time.monotonic() - started)

    def _fetch_archive(self, work: Path) -> Path:
        return maven.fetch(self._distribution.coordinates(self._version), work)

    def _installed_plugin(self, name: str) -> dict[str, str] | None:
        folder = self.dist_dir / "plugins" / name
        for descriptor in ("stable-plugin-descriptor.properties", "plugin-descriptor.properties"):
            text = safefs.read_text(folder / descriptor)
            if text is not None:
                props = {}
                for line in text.splitlines():
                    if "=" in line and not line.lstrip().startswith("#"):
                        key, _, value = line.partition("=")
                        props[key.strip()] = value.strip()
                return props
        return None

    def _install_plugins(self, java: Path) -> None:
        script = str(self.dist_dir / "bin" / self._distribution.plugin_script)
        env = self._tool_env(java, **self._distribution.plugin_cli_env())
        for spec in self._distribution.plugins(self._version):
            installed = self._installed_plugin(spec.name)
            if installed is not None and installed.get("version") == spec.version \
                    and installed.get(self._distribution.version_key) == self._version:
                continue
            started = time.monotonic()
            if installed is not None or safefs.lstat_or_none(self.dist_dir / "plugins" / spec.name) is not None:
                logger.info("replacing plugin %s %s with %s", spec.name, (installed or {}).get("version"),
                            spec.version)
                self._run_tool([script, "remove", spec.name], env, f"removing plugin {spec.name}")
            with self._workdir() as work:
                bundle = spec.make_bundle(self.dist_dir, java, work)
                self._run_tool([script, "install", "--batch", bundle.resolve().as_uri()], env,
                               f"installing plugin {spec.name}")
            logger.info("built and installed plugin %s %s in %.1f s", spec.name, spec.version,
                        time.monotonic() - started)

    def _node_owner(self, user: ServiceUser | None) -> tuple[int, int]:
        return (user.uid, user.gid) if user is not None else (os.geteuid(), os.getegid())

    def _sync_config(self, node: NodeSpec, java: Path, user: ServiceUser | None) -> None:
        """(Re)write a node's config folder from the distribution's, plus its settings."""
        node_dir = self._node_dir(node)
        conf = node_dir / "config"
        group = None if user is None else user.gid
        safefs.sync_tree(self.dist_dir / "config", conf, dir_mode=0o750, file_mode=0o640, gid=group,
                         skip=frozenset({self._distribution.config_file, "jvm.options"}))
        text = (self.dist_dir / "config" / "jvm.options").read_text()
        text = self._distribution.jvm_options(text, node_dir=node_dir, dist=self.dist_dir)
        safefs.write_file(conf / "jvm.options", text.encode(), mode=0o640, gid=group)
        settings: dict[str, object] = {
            **self.topology.node_settings(node, cluster_name=CLUSTER_NAME),
            "path.data": str(node_dir / "data"),
            "path.logs": str(node_dir / "logs"),
            "cluster.routing.allocation.disk.threshold_enabled": False,
            **self._distribution.settings,
            **self._extra,
        }
        body = "# written by es-rerank at each start (LocalCluster(extra_settings=...) adds settings)\n"
        body += "".join(f"{key}: {_yaml_scalar(value)}\n" for key, value in settings.items())
        safefs.write_file(conf / self._distribution.config_file, body.encode(), mode=0o640, gid=group)
        keystore = conf / self._distribution.keystore_file
        if user is not None and safefs.lstat_or_none(keystore) is None:
            # the node cannot write its config folder, so it cannot create the keystore itself
            script = str(self.dist_dir / "bin" / self._distribution.keystore_script)
            env = self._tool_env(java, **{self._distribution.conf_var: str(conf)})
            self._run_tool([script, "create"], env, "creating the keystore")
            fd = os.open(keystore, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchown(fd, -1, user.gid)
                os.fchmod(fd, 0o640)
            finally:
                os.close(fd)

    def _prepare_node_dir(self, node: NodeSpec, user: ServiceUser | None) -> None:
        uid, gid = self._node_owner(user)
        node_dir = self._node_dir(node)
        record = node_dir / RECORD_FILE
        if safefs.lstat_or_none(node_dir) is None:
            safefs.record_created(self._home, node_dir.name)
            safefs.make_dir(node_dir, mode=0o750, gid=None if user is None else user.gid)
        elif safefs.lstat_or_none(node_dir / "data") is not None:
            # a folder whose node has run holds that cluster's state (one node when from before records)
            self.topology.check_record(node, Topology.read_record(safefs.read_text(record), where=str(record)),
                                       where=str(node_dir))
        # the node folder is the caller's: the node can read the record but not change it
        safefs.write_file(record, self.topology.record(node), mode=0o640, gid=None if user is None else user.gid)
        for sub in ("data", "logs", "run"):
            path = node_dir / sub
            if safefs.lstat_or_none(path) is None:
                safefs.make_dir(path, mode=0o750, uid=uid, gid=gid)
            safefs.check_dir(path, uid=uid, what=f"node {sub} folder")

    def prepare(self, nodes: tuple[NodeSpec, ...] | None = None) -> Path:
        """Create or check the folders, fetch and unpack the distribution, install its plugins
        and write each node's config; everything :meth:`start` does except starting.

        Args:
            nodes: The nodes to prepare. Defaults to all.

        Returns:
            The first node's folder.

        Raises:
            ClusterError: A folder is unsafe or not es-rerank's (or belongs to a cluster
                of another shape), Java or Maven is missing, a download or plugin build failed.
        """
        nodes = self.nodes if nodes is None else nodes
        user = _service_user(create=True)
        safefs.prepare_home(self._home, reader_uid=None if user is None else user.uid)
        euid = os.geteuid()
        have_dist = safefs.require_created(self._home, self.dist_dir.name, uid=euid)
        for node in nodes:
            safefs.require_created(self._home, self._node_dir(node).name, uid=euid)
        java = find_java(env_vars=(self._distribution.java_home_var, "JAVA_HOME"))
        if not have_dist:
            self._unpack()
        self._install_plugins(java)
        for node in nodes:
            self._prepare_node_dir(node, user)
            self._sync_config(node, java, user)
        return self.node_dir

    # -- start / stop ---------------------------------------------------------------------

    def start(self, *, timeout: float = 180.0) -> str:
        """Start the nodes that are not running (or find them all running) and wait until every node
        answers, the cluster has them all, and its health is yellow or green.

        Args:
            timeout: Seconds to wait for the cluster to become healthy. Defaults to 180.

        Returns:
            The first node's URL.

        Raises:
            ClusterError: Something else holds a port, a folder is unsafe, Java is
                missing, or a node failed or the cluster was not healthy in time (the
                message carries the log tail; the nodes this call launched are stopped).
        """
        deadline = time.monotonic() + timeout
        to_launch = []
        for node in self.nodes:
            identity = self._identity(node)
            if not self._answering_ours(node) and not (identity is not None and identity.find()):
                to_launch.append(node)
        if not to_launch:
            logger.info("local %s already running at %s (settings apply at launch: stop it to change them)",
                        self._distribution.display, self.url)
            self._wait_healthy(deadline, launched=())
            return self.url
        for node in to_launch:
            for port, what in ((node.http_port, "HTTP"), (node.transport_port, "transport")):
                if _port_in_use(port):
                    raise ClusterError(f"{what} port {port} on 127.0.0.1 is in use by another program; "
                                       "choose another port (--port / ES_RERANK_CLUSTER_PORT)")
        started = time.monotonic()
        launched = tuple(to_launch)
        self.prepare(launched)
        for i, node in enumerate(launched):
            try:
                self._launch(node, deadline)
            except ClusterError:
                self._stop_launched(launched[:i])
                raise
        self._wait_healthy(deadline, launched=launched)
        logger.info("%s %s healthy at %s (%d node(s), %d launched) in %.1f s", self._distribution.display, self._version,
                    self.url, len(self.nodes), len(launched), time.monotonic() - started)
        return self.url

    def _answering_ours(self, node: NodeSpec) -> bool:
        probe = self._probe(node)
        if probe is None:
            return False
        body, engine = probe
        if not self.is_ours(body) or engine != self._distribution.name:
            other = DISTRIBUTIONS[engine].display if engine in DISTRIBUTIONS else "server"
            raise ClusterError(
                f"port {node.http_port} is held by another {other} (cluster {body.get('cluster_name')!r}); choose "
                "another port (--port / ES_RERANK_CLUSTER_PORT) or use that cluster through ES_URL")
        return True

    def _launch(self, node: NodeSpec, deadline: float) -> None:
        user = _service_user(create=True)
        java = find_java(env_vars=(self._distribution.java_home_var, "JAVA_HOME"))
        node_dir = self._node_dir(node)
        tag = f"{procs.NODE_TAG}{node_dir}"
        env = self._tool_env(java, **{
            self._distribution.conf_var: str(node_dir / "config"),
            self._distribution.java_opts_var: f"-Xms{self._heap} -Xmx{self._heap} {tag}",
        })
        argv = [str(self.dist_dir / "bin" / self._distribution.script), "-d", "-p", str(self._pid_file(node))]
        # the node's files are not for other users to read
        cmd = ["/bin/sh", "-c", 'umask 027 && exec "$@"', "es-rerank-node", *argv]
        if user is not None:
            runuser = shutil.which("runuser")
            if runuser is None:
                raise ClusterError(f"runuser (util-linux) is needed to run the node as {user.name}")
            cmd = [runuser, "-u", user.name, "--", "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()),
                   *cmd]
            env = {"PATH": PATH, "LANG": "C.UTF-8"}
        safefs.remove_entry(self._pid_file(node))
        logger.info("starting %s %s on %s (java %s%s)", self._distribution.display, self._version, node.url, java,
                    "" if user is None else f", as {user.name}")
        launcher_log = node_dir / "launcher.log"
        fd = os.open(launcher_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            if user is not None:
                os.fchown(fd, -1, user.gid)
            proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                                  cwd=node_dir / "logs", timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as e:
            self._stop_launched((node,))
            raise ClusterError(f"{self._distribution.display} launcher did not return in time; stopped it\n"
                               f"--- log ---\n{self.log_tail(node=node)}") from e
        finally:
            os.close(fd)
        if proc.returncode != 0:
            self._stop_launched((node,))
            raise ClusterError(f"{self._distribution.display} failed to start (exit {proc.returncode}):\n"
                               f"{self._launcher_tail(node)}\n--- server log ---\n{self.log_tail(node=node)}")

    def _launcher_tail(self, node: NodeSpec, lines: int = 20) -> str:
        text = safefs.read_text(self._node_dir(node) / "launcher.log", limit=64 * 1024) or ""
        return "\n".join(text.splitlines()[-lines:])

    def _healthy(self, node: NodeSpec) -> bool:
        """Whether ``node`` answers as ours, yellow or green, in a cluster holding every node."""
        size = len(self.nodes)
        got = _http(f"{node.url}/_cluster/health?wait_for_status=yellow&wait_for_nodes={size}&timeout=2s", timeout=5)
        return got is not None and self.is_ours(got[0]) and got[0].get("status") in ("yellow", "green") \
            and got[0].get("number_of_nodes", 0) >= size

    def _wait_healthy(self, deadline: float, *, launched: tuple[NodeSpec, ...]) -> None:
        waiting = list(self.nodes)
        while True:
            waiting = [node for node in waiting if not self._healthy(node)]
            if not waiting:
                return
            for node in launched:
                identity = self._identity(node)
                if identity is None or not identity.find():
                    self._stop_launched(launched)
                    raise ClusterError(f"{self._distribution.display} at {node.url} exited during startup:\n"
                                       f"{self._launcher_tail(node)}\n--- server log ---\n{self.log_tail(node=node)}")
            if time.monotonic() >= deadline:
                stopped = self._stop_launched(launched)
                node = waiting[0]
                raise ClusterError(f"{self._distribution.display} at {node.url} was not healthy in time"
                                   f"{'; stopped the nodes launched' if stopped else ''}\n--- server log ---\n"
                                   f"{self.log_tail(node=node)}")
            time.sleep(1.0)

    def _stop_launched(self, nodes: tuple[NodeSpec, ...]) -> bool:
        stopped = False
        for node in nodes:
            identity = self._identity(node)
            if identity is not None:
                stopped = any([procs.terminate(pid, identity, timeout=30.0) for pid in identity.find()]) or stopped
        return stopped

    def stop(self, *, timeout: float = 60.0) -> bool:
        """Stop the nodes started from these folders and ports (every node of the cluster).

        Only a process that is provably one of these nodes is signalled (see :mod:`.procs`):
        a pid file naming another process is reported as stale and removed, and nothing is killed.

        Args:
            timeout: Seconds to wait after SIGTERM before SIGKILL, per node. Defaults to 60.

        Returns:
            True when a node was stopped, False when none was running.
        """
        stopped = False
        for node in self.nodes:
            stopped = self._stop_node(node, timeout) or stopped
        return stopped

    def _stop_node(self, node: NodeSpec, timeout: float) -> bool:
        identity = self._identity(node)
        pid_file = self._pid_file(node)
        text = safefs.read_text(pid_file)
        pid = procs.read_pid(text)
        stopped = False
        if pid is not None and identity is not None and procs.terminate(pid, identity, timeout=timeout):
            stopped = True
        elif text is not None:
            logger.warning("pid file %s names %s, which is not this node (it may be left from before a reboot "
                           "or crash); signalling nothing", pid_file, f"pid {pid}" if pid else repr(text[:40]))
        if identity is not None:
            for other in identity.find():
                stopped = procs.terminate(other, identity, timeout=timeout) or stopped
        self._remove_stale_pid_file(node)
        return stopped

    def _remove_stale_pid_file(self, node: NodeSpec) -> None:
        node_dir = self._node_dir(node)
        if node_dir.name not in safefs.created_entries(self._home):
            return
        run = node_dir / "run"
        st = safefs.lstat_or_none(run)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return
        pid_file = self._pid_file(node)
        if safefs.remove_entry(pid_file):
            logger.info("removed stale pid file %s", pid_file)
