"""docker-compose.yml brought up for real by Docker, and the main job run against it.

Opt-in: ``ES_RERANK_TEST_COMPOSE=1`` (CI sets it), as root, with Debian's ``docker.io``,
``docker-compose`` (v1), ``debootstrap`` and ``iptables``. No image registry is needed:
``tests/compose/standins.sh`` builds local stand-ins under the official image names (kept
between runs) and fetches compose v2 into a private ``DOCKER_CONFIG``. When no engine runs,
this test starts ``dockerd`` and at the end stops it and puts the host's networking back
(iptables rules and policies, ``ip_forward``, the ``docker0`` bridge), then checks that it did.

In order, on host ports 19210-19212 (``ES_RERANK_COMPOSE_*_PORT``), one compose project:

1. ``scripts/quickstart.sh`` where only compose v1 is available: Elasticsearch alone comes up
   (health polled), the sample is indexed, tuned on its questions with the pipeline applied, and
   the question answered; its hits equal :meth:`es_rerank.Searcher.search` through that pipeline.
2. ``docker compose --profile serve up -d --build --wait`` (the serve image built from
   ``Dockerfile.serve``, the cross-encoder mounted by a test-only override file): a reranked
   ``_search`` with the official Python client through the container equals the Searcher.
3. ``ES_RERANK_CLUSTER_ENGINE=opensearch scripts/quickstart.sh`` with compose v2: OpenSearch
   (with k-NN) comes up with ``--wait``, the sample is indexed and queried.
4. ``down`` and ``up --wait`` of the whole stack: the documents survived in the volumes and the
   reranked search through ``serve`` answers as before.
5. ``down -v --rmi local``: no container, volume or serve image of the project is left.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import SAMPLE, report_line

ROOT = Path(__file__).resolve().parent.parent
STANDINS = ROOT / "tests" / "compose" / "standins.sh"
QUERY = "what happens to my data if I close my account"
PORTS = {"ES_RERANK_COMPOSE_ES_PORT": 19210, "ES_RERANK_COMPOSE_SERVE_PORT": 19211,
         "ES_RERANK_COMPOSE_OPENSEARCH_PORT": 19212}
# Debian's client builds with the classic builder; a newer client without buildx cannot
DOCKER = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else shutil.which("docker")
DOCKERD = shutil.which("dockerd") or ("/usr/sbin/dockerd" if os.access("/usr/sbin/dockerd", os.X_OK) else None)
PLUGIN_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "es-rerank" / "docker-config"


def _why_not() -> str | None:
    if os.environ.get("ES_RERANK_TEST_COMPOSE") != "1":
        return ("set ES_RERANK_TEST_COMPOSE=1 to run it (CI does): it starts dockerd as root, builds stand-in "
                "images tagged with the official names and brings the compose stack up (minutes)")
    if os.geteuid() != 0:
        return "needs root: it starts dockerd and restores the host's iptables afterwards"
    tools = {"dockerd": DOCKERD, "docker": DOCKER, "docker-compose": shutil.which("docker-compose"),
             "debootstrap": shutil.which("debootstrap"), "iptables-save": shutil.which("iptables-save"),
             "unzip": shutil.which("unzip"), "mvn": shutil.which("mvn")}
    missing = sorted(name for name, path in tools.items() if path is None)
    if missing:
        return (f"missing {', '.join(missing)} (Debian: apt-get install -y docker.io docker-compose debootstrap "
                "iptables unzip maven)")
    return None


pytestmark = [pytest.mark.compose_live, pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")]


def _run(argv, *, env=None, timeout=600, check=True, cwd=ROOT) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        pytest.fail(f"{shlex.join(str(a) for a in argv)} exited {proc.returncode}:\n{tail}")
    return proc


# -- the host's networking, before and after dockerd ----------------------------------------------------

TABLES = [(tool, table) for tool in ("iptables", "ip6tables") for table in ("filter", "nat")]


@dataclass(frozen=True)
class HostNetwork:
    """What dockerd changes on the host and leaves changed when it stops."""

    rules: dict[tuple[str, str], str]  # `iptables -t TABLE -S`: policies, chains and rules, replayable
    ip_forward: str
    links: frozenset[str]

    @classmethod
    def read(cls) -> HostNetwork:
        rules = {}
        for tool, table in TABLES:
            if shutil.which(tool):
                rules[(tool, table)] = _run([tool, "-t", table, "-S"], check=False).stdout
        links = _run(["ip", "-o", "link", "show"]).stdout
        return cls(rules=rules, ip_forward=Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
                   links=frozenset(m.group(1) for m in re.finditer(r"^\d+: ([^:@]+)", links, re.M)))

    def differences(self, now: HostNetwork) -> list[str]:
        out = []
        for (tool, table), before in self.rules.items():
            if now.rules.get((tool, table)) != before:
                out.append(f"{tool} -t {table} was\n{before}and is now\n{now.rules.get((tool, table))}")
        if now.ip_forward != self.ip_forward:
            out.append(f"ip_forward was {self.ip_forward}, now {now.ip_forward}")
        if now.links != self.links:
            out.append(f"links added {sorted(now.links - self.links)}, removed {sorted(self.links - now.links)}")
        return out

    def restore(self) -> None:
        """Put back what differs: each changed table flushed and replayed, ip_forward, new bridges removed."""
        now = HostNetwork.read()
        for (tool, table), before in self.rules.items():
            if now.rules.get((tool, table)) == before:
                continue
            _run([tool, "-t", table, "-F"])
            _run([tool, "-t", table, "-X"])
            for line in before.splitlines():
                _run([tool, "-t", table, *shlex.split(line)])
        if now.ip_forward != self.ip_forward:
            Path("/proc/sys/net/ipv4/ip_forward").write_text(self.ip_forward + "\n")
        for link in sorted(now.links - self.links):
            if link == "docker0" or link.startswith(("br-", "veth")):
                _run(["ip", "link", "delete", link], check=False)


class DockerHost:
    """The Docker engine: the one already running, else a dockerd started (and later stopped) here."""

    def __init__(self, workdir: Path):
        self._workdir = workdir
        self._proc: subprocess.Popen | None = None
        self.before: HostNetwork | None = None

    @staticmethod
    def answering() -> bool:
        return _run([DOCKER, "info"], check=False, timeout=30).returncode == 0

    def start(self) -> str:
        if self.answering():
            return "a running Docker engine (left running, its networking untouched)"
        self.before = HostNetwork.read()
        log = open(self._workdir / "dockerd.log", "wb")
        self._proc = subprocess.Popen([DOCKERD], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        deadline = time.monotonic() + 60
        while not self.answering():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"dockerd did not come up (exit {self._proc.returncode}):\n"
                            f"{(self._workdir / 'dockerd.log').read_text()[-3000:]}")
            time.sleep(0.5)
        return f"dockerd started here (pid {self._proc.pid})"

    def stop(self) -> list[str]:
        """Stop the dockerd started here and restore the networking; return what still differs."""
        if self._proc is None or self.before is None:
            return []
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=30)
        self._proc = None
        self.before.restore()
        return self.before.differences(HostNetwork.read())


# -- the compose project ------------------------------------------------------------------------------

@dataclass
class Stack:
    project: str
    env: dict[str, str]          # compose v2 available (the private plugin)
    env_v1_only: dict[str, str]  # `docker compose` unknown: only docker-compose 1.29
    override: Path
    nofile: int

    def compose(self, *args, timeout=600) -> subprocess.CompletedProcess:
        return _run([DOCKER, "compose", "-f", ROOT / "docker-compose.yml", "-f", self.override, *args],
                    env=self.env, timeout=timeout)

    def containers(self) -> dict[str, tuple[str, str]]:
        """The project's containers, running or not: service -> (container name, health)."""
        ids = _run([DOCKER, "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}"]).stdout.split()
        if not ids:
            return {}
        fmt = ('{{index .Config.Labels "com.docker.compose.service"}} {{.Name}} '
               '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}')
        out = _run([DOCKER, "inspect", "-f", fmt, *ids]).stdout
        return {service: (name.lstrip("/"), health) for service, name, health in (l.split() for l in out.splitlines())}

    def health(self) -> dict[str, str]:
        return {service: health for service, (_, health) in self.containers().items()}

    def url(self, var: str) -> str:
        return f"http://127.0.0.1:{self.env[var]}"


def _hard_nofile() -> int:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)


@pytest.fixture(scope="module")
def docker_host(tmp_path_factory, request):
    host = DockerHost(tmp_path_factory.mktemp("dockerd"))
    report_line(request, f"compose test engine: {host.start()}")
    yield host
    left = host.stop()  # a no-op when the test already stopped it
    if left:
        report_line(request, "host networking NOT restored: " + "; ".join(left))


@pytest.fixture(scope="module")
def stack(docker_host, tmp_path_factory, cross_encoder_path, request):
    work = tmp_path_factory.mktemp("compose")
    began = time.monotonic()
    _run([STANDINS, "compose-plugin", PLUGIN_DIR], timeout=300)
    _run([STANDINS, "images"], env={**os.environ, "DOCKER": DOCKER, "PY": sys.executable}, timeout=900)
    report_line(request, f"compose test: stand-in images and compose v2 ready in {time.monotonic() - began:.0f} s")
    # the container's user must read the cross-encoder; pytest's own folders are private
    model = work / "cross-encoder"
    shutil.copytree(cross_encoder_path, model)
    for path in [work, *model.rglob("*"), model]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    override = work / "offline.yml"
    override.write_text("services:\n  serve:\n    environment:\n"
                        "      - ES_RERANK_RERANKER_MODEL=/cross-encoder\n      - HF_HUB_OFFLINE=1\n"
                        f"    volumes:\n      - \"{model}:/cross-encoder:ro\"\n")
    project = f"esrerank-test-{uuid.uuid4().hex[:8]}"
    nofile = _hard_nofile()
    base = {k: v for k, v in os.environ.items() if k not in ("ES_URL", "ES_RERANK_INDEX", "DOCKER_CONFIG")}
    base.update({k: str(v) for k, v in PORTS.items()})
    base.update(COMPOSE_PROJECT_NAME=project, HF_HUB_OFFLINE="1", ES_RERANK_RERANKER_MODEL=str(model))
    no_plugins = work / "docker-config-v1-only"
    no_plugins.mkdir()
    s = Stack(project=project, env={**base, "DOCKER_CONFIG": str(PLUGIN_DIR), "ES_RERANK_COMPOSE_NOFILE": str(nofile)},
              env_v1_only={**base, "DOCKER_CONFIG": str(no_plugins)}, override=override, nofile=nofile)
    try:
        yield s
    finally:
        _run([DOCKER, "compose", "-f", ROOT / "docker-compose.yml", "-f", override, "--profile", "serve",
              "--profile", "opensearch", "down", "-v", "--rmi", "local", "--remove-orphans"], env=s.env, check=False, timeout=300)


def _searcher(url, index, embedding_model_path, cross_encoder_path, embedder, reranker):
    from es_rerank.client import Searcher
    from es_rerank.config import Settings
    from es_rerank.engines import open_engine

    settings = Settings(url=url, index=index, embedding_model=embedding_model_path, reranker_model=cross_encoder_path,
                        device="cpu", reranker_backend="onnx", embedding_backend="onnx", request_timeout=60)
    engine = open_engine(settings)
    return engine, Searcher(settings, engine=engine, embedder=embedder, reranker=reranker)


def _quick_start_answer(engine, searcher, index):
    """What the quick start's query answers: it tuned on the sample's questions and applied the winner,
    so its question goes through that pipeline (hybrid alone when reranking did not win)."""
    from es_rerank import pipelines

    applied = pipelines.read(engine, index).pipeline
    assert applied is not None and applied.how == "tune", applied
    if not applied.reranks:
        return searcher.search(QUERY, final_k=3, rerank=False)
    return searcher.search(QUERY, final_k=3)  # depth and blend from the pipeline


def _assert_printed(output: str, hits) -> None:
    """The quick start's query printed these hits, in this order."""
    for pos, hit in enumerate(hits, 1):
        assert re.search(rf"^{pos}\. \[.*\({re.escape(hit.chunk_id)}\)", output, re.M), \
            f"hit {pos} ({hit.chunk_id}) is not where the quick start printed it:\n{output}"


def test_compose_stack_for_real(docker_host, stack, request, embedding_model_path, cross_encoder_path, embedder,
                                reranker):
    from elasticsearch import Elasticsearch

    from serve_requests import hybrid_retriever

    from es_rerank.engines import OpenSearchEngine

    def phase(text: str, began: float) -> None:
        report_line(request, f"compose test: {text} in {time.monotonic() - began:.0f} s")

    es_url = stack.url("ES_RERANK_COMPOSE_ES_PORT")
    os_url = stack.url("ES_RERANK_COMPOSE_OPENSEARCH_PORT")
    serve_url = stack.url("ES_RERANK_COMPOSE_SERVE_PORT")
    index = f"compose-{uuid.uuid4().hex[:8]}"

    # 1. the quick start where only compose v1 is installed: Elasticsearch alone, health polled
    assert _run([DOCKER, "compose", "version"], env=stack.env_v1_only, check=False).returncode != 0
    began = time.monotonic()
    quick = _run([ROOT / "scripts" / "quickstart.sh"], env={**stack.env_v1_only, "ES_RERANK_INDEX": index})
    phase("quickstart.sh with docker-compose v1 (Elasticsearch up, sample indexed, query)", began)
    running = stack.containers()
    # v1 names containers project_service_1 (v2: project-service-1): v1 brought it up
    assert running == {"elasticsearch": (f"{stack.project}_elasticsearch_1", "healthy")}, running
    if stack.nofile < 65536:
        assert f"ES_RERANK_COMPOSE_NOFILE={stack.nofile}" in quick.stdout
    es_engine, es_searcher = _searcher(es_url, index, embedding_model_path, cross_encoder_path, embedder, reranker)
    expected = _quick_start_answer(es_engine, es_searcher, index)
    assert len(expected.hits) == 3
    _assert_printed(quick.stdout, expected.hits)
    chunks = es_engine.count(index)
    assert chunks >= sum(1 for line in SAMPLE.read_text().splitlines() if line.strip())

    # 2. serve, built from Dockerfile.serve, in front of it: the official client's reranked _search
    began = time.monotonic()
    stack.compose("--profile", "serve", "up", "-d", "--build", "--wait", timeout=900)
    phase("docker compose --profile serve up -d --build --wait", began)
    assert stack.health() == {"elasticsearch": "healthy", "serve": "healthy"}

    def served_search() -> list[tuple[str, float]]:
        with Elasticsearch(serve_url, request_timeout=120, max_retries=0) as client:
            # the reranker named: the quick start applied its tuned pipeline to this index, which a request
            # that leaves the reranker out would follow (hybrid alone, with the test's random-head model)
            resp = client.search(index=index, retriever=hybrid_retriever(QUERY, 20, inference_id="cross-encoder"),
                                 size=3)
        assert resp["es_rerank"]["reranked"] is True and resp["es_rerank"]["inference_id"] == "cross-encoder"
        return [(h["_id"], h["_score"]) for h in resp["hits"]["hits"]]

    direct = es_searcher.search(QUERY, depth=20, final_k=3)
    served = served_search()
    assert [i for i, _ in served] == [h.chunk_id for h in direct.hits]
    assert [s for _, s in served] == pytest.approx([h.rerank_score for h in direct.hits], rel=1e-4)

    # 3. the quick start on OpenSearch with compose v2 (--wait), beside the rest
    began = time.monotonic()
    quick_os = _run([ROOT / "scripts" / "quickstart.sh"],
                    env={**stack.env, "ES_RERANK_INDEX": index, "ES_RERANK_CLUSTER_ENGINE": "opensearch"})
    phase("quickstart.sh on OpenSearch with compose v2", began)
    os_engine, os_searcher = _searcher(os_url, index, embedding_model_path, cross_encoder_path, embedder, reranker)
    assert isinstance(os_engine, OpenSearchEngine)
    os_expected = _quick_start_answer(os_engine, os_searcher, index)
    _assert_printed(quick_os.stdout, os_expected.hits)
    os_chunks = os_engine.count(index)
    assert os_chunks == chunks  # the same sample, the same chunking

    # 4. the whole stack down and up again: the documents are still in the volumes
    began = time.monotonic()
    stack.compose("--profile", "serve", "--profile", "opensearch", "down", timeout=300)
    assert stack.containers() == {}
    stack.compose("--profile", "serve", "--profile", "opensearch", "up", "-d", "--wait", timeout=900)
    phase("down, then up --wait of all three services", began)
    assert stack.health() == {"elasticsearch": "healthy", "opensearch": "healthy", "serve": "healthy"}
    assert es_engine.count(index) == chunks
    assert os_engine.count(index) == os_chunks
    assert [i for i, _ in served_search()] == [i for i, _ in served]
    es_engine.close()
    os_engine.close()

    # 5. down -v: nothing of the project is left
    began = time.monotonic()
    stack.compose("--profile", "serve", "--profile", "opensearch", "down", "-v", "--rmi", "local", timeout=300)
    phase("down -v --rmi local", began)
    assert stack.containers() == {}
    volumes = _run([DOCKER, "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={stack.project}"])
    assert volumes.stdout.split() == []
    assert _run([DOCKER, "image", "ls", "-q", f"{stack.project}-serve"]).stdout.split() == []

    # the engine stopped (when started here) and the host's networking as it was
    assert docker_host.stop() == []
