"""A local single-node Elasticsearch for machines without a Docker engine.

The server comes from Maven Central (``org.elasticsearch.distribution.integ-test-zip``),
which ships no JDK: a Java 21+ runtime is looked up on the machine. Elasticsearch
refuses to run as root, so when started by root the node runs as a system user.
The node binds 127.0.0.1 with ``discovery.type: single-node`` and security off: it is
for development and CI, never for production.

Example:
    >>> from es_rerank.cluster import LocalCluster
    >>> cluster = LocalCluster()            # doctest: +SKIP
    >>> cluster.start()                     # doctest: +SKIP
    'http://127.0.0.1:9200'
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ._versions import ES_VERSION
from .errors import ClusterError

logger = logging.getLogger(__name__)

MAVEN_ARTIFACT = "org.elasticsearch.distribution.integ-test-zip:elasticsearch:{version}:zip"
CLUSTER_NAME = "es-rerank-local"
SERVICE_USER = "esrerank"
MIN_JAVA = 21


def default_home() -> Path:
    """Where the local cluster lives: ``ES_RERANK_CLUSTER_DIR``, else a per-user folder.

    Root's home is not readable by the service user, so root gets ``/var/lib/es-rerank``.
    """
    env = os.environ.get("ES_RERANK_CLUSTER_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/es-rerank")
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "es-rerank"


def java_major(java_home: Path) -> int | None:
    """Read the major Java version of a JDK folder from its ``release`` file."""
    release = java_home / "release"
    if not release.is_file():
        return None
    match = re.search(r'^JAVA_VERSION="(\d+)', release.read_text(errors="replace"), re.M)
    return int(match.group(1)) if match else None


def find_java(min_major: int = MIN_JAVA) -> Path:
    """Find a JDK of at least ``min_major``: ``ES_JAVA_HOME``, ``JAVA_HOME``, then /usr/lib/jvm.

    Raises:
        ClusterError: No suitable JDK was found (the message lists what was seen).
    """
    seen: list[str] = []
    candidates: list[Path] = []
    for var in ("ES_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]))
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        candidates.extend(sorted(jvm.iterdir(), reverse=True))
    for home in candidates:
        major = java_major(home)
        seen.append(f"{home} (Java {major})")
        if major is not None and major >= min_major and (home / "bin" / "java").exists():
            return home
    raise ClusterError(
        f"Elasticsearch {ES_VERSION} needs Java {min_major}+; none found. Seen: "
        f"{', '.join(seen) or 'nothing'}. Install a JDK and set ES_JAVA_HOME."
    )


def _http_json(url: str, timeout: float = 2.0) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read().decode())
    except (urllib.error.URLError, OSError, ValueError):
        return None


@dataclass
class LocalCluster:
    """A single-node cluster under ``home``, listening on 127.0.0.1:``port``.

    Args:
        version: Elasticsearch version. Defaults to the version this package pins.
        home: Folder for the distribution, data and logs. Defaults to :func:`default_home`.
        port: HTTP port. Defaults to ``ES_RERANK_CLUSTER_PORT`` or 9200.
        heap: JVM heap (``-Xms``/``-Xmx``). Defaults to ``ES_RERANK_CLUSTER_HEAP`` or ``1g``.
    """

    version: str = ES_VERSION
    home: Path | None = None
    port: int | None = None
    heap: str | None = None

    def __post_init__(self) -> None:
        self.home = Path(self.home) if self.home is not None else default_home()
        if self.port is None:
            self.port = int(os.environ.get("ES_RERANK_CLUSTER_PORT", "9200"))
        if self.heap is None:
            self.heap = os.environ.get("ES_RERANK_CLUSTER_HEAP", "1g")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dist_dir(self) -> Path:
        return self.home / f"elasticsearch-{self.version}"

    @property
    def node_dir(self) -> Path:
        return self.home / f"node-{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.node_dir / "es.pid"

    @property
    def log_file(self) -> Path:
        return self.node_dir / "logs" / f"{CLUSTER_NAME}.log"

    # -- fetching -----------------------------------------------------------------

    def fetch(self) -> Path:
        """Download (once) and unpack the server distribution; return its folder."""
        if (self.dist_dir / "bin" / "elasticsearch").exists():
            return self.dist_dir
        if shutil.which("mvn") is None:
            raise ClusterError("Maven (mvn) is needed to fetch Elasticsearch from Maven Central; install it")
        self.home.mkdir(parents=True, exist_ok=True)
        download = self.home / "download"
        artifact = MAVEN_ARTIFACT.format(version=self.version)
        logger.info("fetching %s with mvn", artifact)
        cmd = ["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={artifact}",
               f"-DoutputDirectory={download}", "-Dmdep.overWriteIfNewer=true"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=self.home)
        zips = sorted(download.glob(f"elasticsearch-{self.version}*.zip"))
        if proc.returncode != 0 or not zips:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            raise ClusterError(f"could not fetch {artifact} from Maven Central:\n{tail}")
        staging = self.home / f".unpack-{self.version}"
        shutil.rmtree(staging, ignore_errors=True)
        with zipfile.ZipFile(zips[0]) as zf:
            for info in zf.infolist():
                target = zf.extract(info, staging)
                mode = info.external_attr >> 16
                if mode:
                    os.chmod(target, mode & 0o7777)
        (inner,) = [p for p in staging.iterdir() if p.is_dir()]
        inner.rename(self.dist_dir)
        shutil.rmtree(staging, ignore_errors=True)
        return self.dist_dir

    # -- state --------------------------------------------------------------------

    def info(self) -> dict | None:
        """Cluster health JSON when a node answers on the port, else None.

        The integ-test distribution has no ``rest-root`` module, so ``GET /`` is not
        served; ``_cluster/health`` is, and carries the cluster name.
        """
        return _http_json(f"{self.url}/_cluster/health")

    def version_running(self) -> str | None:
        nodes = _http_json(f"{self.url}/_nodes/_local?filter_path=nodes.*.version")
        for node in ((nodes or {}).get("nodes") or {}).values():
            return node.get("version")
        return None

    def is_ours(self, info: dict | None) -> bool:
        return bool(info) and info.get("cluster_name") == CLUSTER_NAME

    def _pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def status(self) -> dict:
        """Describe the node: running or not, version, URL, pid, health."""
        info = self.info()
        return {
            "url": self.url,
            "running": info is not None,
            "managed": self.is_ours(info),
            "version": self.version_running() if info else None,
            "health": (info or {}).get("status"),
            "pid": self._pid(),
            "home": str(self.home),
        }

    def log_tail(self, lines: int = 40) -> str:
        for path in (self.log_file, self.node_dir / "logs" / "stdout.log"):
            if path.is_file():
                return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no server log found)"

    # -- start / stop -------------------------------------------------------------

    def _write_config(self, dist: Path) -> Path:
        conf = self.node_dir / "config"
        if conf.exists():
            shutil.rmtree(conf)
        shutil.copytree(dist / "config", conf)
        for sub in ("data", "logs"):
            (self.node_dir / sub).mkdir(parents=True, exist_ok=True)
        settings = {
            "cluster.name": CLUSTER_NAME,
            "node.name": f"es-rerank-{self.port}",
            "network.host": "127.0.0.1",
            "http.port": self.port,
            "transport.port": self.port + 100,
            "discovery.type": "single-node",
            "path.data": str(self.node_dir / "data"),
            "path.logs": str(self.node_dir / "logs"),
            "xpack.security.enabled": False,
            "cluster.routing.allocation.disk.threshold_enabled": False,
        }
        lines = [f"{k}: {json.dumps(v)}" for k, v in settings.items()]
        (conf / "elasticsearch.yml").write_text("\n".join(lines) + "\n")
        return conf

    def _service_user(self) -> str | None:
        """When root, ensure a system user exists and owns the node folder."""
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                            SERVICE_USER], check=True, capture_output=True)
        return SERVICE_USER

    def start(self, *, timeout: float = 180.0) -> str:
        """Start the node (or find it already running) and wait for yellow health.

        Returns:
            The cluster URL.

        Raises:
            ClusterError: Something else holds the port, Java is missing, or the node
                did not become healthy in time (the message carries the log tail).
        """
        info = self.info()
        if info is not None:
            if not self.is_ours(info):
                raise ClusterError(
                    f"port {self.port} is held by another Elasticsearch (cluster {info.get('cluster_name')!r}); "
                    "set ES_RERANK_CLUSTER_PORT or use it through ES_URL"
                )
            logger.info("local cluster already running at %s", self.url)
            self._wait_healthy(timeout)
            return self.url
        dist = self.fetch()
        java = find_java()
        conf = self._write_config(dist)
        user = self._service_user()
        env = dict(os.environ)
        env.update({
            "ES_JAVA_HOME": str(java),
            "ES_PATH_CONF": str(conf),
            "ES_JAVA_OPTS": f"-Xms{self.heap} -Xmx{self.heap}",
        })
        env.pop("JAVA_HOME", None)
        cmd = [str(dist / "bin" / "elasticsearch"), "-d", "-p", str(self.pid_file)]
        if user is not None:
            for path in (self.home, self.node_dir):
                shutil.chown(path, user)
            subprocess.run(["chown", "-R", user, str(self.node_dir), str(dist)], check=True)
            cmd = ["runuser", "-u", user, "--", "env", *[f"{k}={env[k]}" for k in
                   ("ES_JAVA_HOME", "ES_PATH_CONF", "ES_JAVA_OPTS")], *cmd]
        logger.info("starting Elasticsearch %s on %s (java %s)", self.version, self.url, java)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(self.node_dir))
        if proc.returncode != 0:
            out = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
            raise ClusterError(f"Elasticsearch failed to start (exit {proc.returncode}):\n{out}\n"
                               f"--- server log ---\n{self.log_tail()}")
        self._wait_healthy(timeout)
        return self.url

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = _http_json(f"{self.url}/_cluster/health?wait_for_status=yellow&timeout=5s", timeout=10)
            if health and health.get("status") in ("yellow", "green"):
                return
            time.sleep(1.0)
        raise ClusterError(f"Elasticsearch at {self.url} was not healthy after {timeout:.0f}s\n"
                           f"--- server log ---\n{self.log_tail()}")

    def stop(self, *, timeout: float = 60.0) -> bool:
        """Stop the node started from this folder. Returns False if it was not running."""
        pid = self._pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._pid() is None:
                return True
            time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        return True
