"""The local cluster on the real file system, with real processes and real nodes.

Safety first: a stale pid file must never get an unrelated process killed, and running
as root must never change the owner of, delete, or write through anything es-rerank
did not create (decoy files and folders outside, or planted links inside, must survive
with the same owner, mode and content). Then the nodes themselves: Elasticsearch with
the English analysis plugin built at start, OpenSearch with k-NN.

Everything runs in a fresh cluster folder (``ES_RERANK_TEST_CLUSTER_DIR`` or a new
folder under /tmp) on the six ports from ``ES_RERANK_TEST_CLUSTER_PORT`` (default 9261)
on, their transport ports 100 above; one node runs at a time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from es_rerank.cluster import SERVICE_USER, LocalCluster, analysis_plugin, find_java, procs, safefs
from es_rerank.cluster.distributions import ELASTICSEARCH, OPENSEARCH
from es_rerank.errors import ClusterError

if not Path("/proc/self/cmdline").exists():
    pytest.skip("the local cluster needs Linux (/proc)", allow_module_level=True)

BASE_PORT = int(os.environ.get("ES_RERANK_TEST_CLUSTER_PORT", "9261"))
ES_PORT, SPARE_PORT, OS_PORT, BUSY_PORT, BUSY_TRANSPORT_PORT, SAFETY_PORT = (BASE_PORT + i for i in range(6))
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="only root can make folders owned by another user")


def _have_java() -> str | None:
    try:
        find_java()
    except ClusterError as e:
        return str(e)
    return None


needs_java = pytest.mark.skipif(_have_java() is not None, reason=f"no JDK 21+: {_have_java()}")


# -- helpers ------------------------------------------------------------------------

def _snapshot(path: Path) -> dict:
    """Owner, mode and content of everything under ``path`` (links not followed)."""
    out = {}
    for p in [path, *sorted(path.rglob("*"))]:
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode):
            content = p.read_bytes()
        elif stat.S_ISLNK(st.st_mode):
            content = os.readlink(p)
        else:
            content = None
        out[str(p.relative_to(path))] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), content)
    return out


def _make_decoy(parent: Path, name: str = "decoy") -> Path:
    """A folder standing for someone's home: a private .ssh and a file, owned by the test's user."""
    decoy = parent / name
    (decoy / ".ssh").mkdir(parents=True)
    os.chmod(decoy / ".ssh", 0o700)
    key = decoy / ".ssh" / "authorized_keys"
    key.write_text("ssh-ed25519 AAAA decoy\n")
    os.chmod(key, 0o600)
    (decoy / "notes.txt").write_text("keep me\n")
    os.chmod(decoy, 0o755)
    return decoy


def _wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _req(url: str, method: str = "GET", body: object = None, ndjson: bytes | None = None):
    data = ndjson if ndjson is not None else (None if body is None else json.dumps(body).encode())
    ctype = "application/x-ndjson" if ndjson is not None else "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _analyze(url: str, body: dict) -> list[str]:
    status, out = _req(f"{url}/_analyze", "POST", body)
    assert status == 200, out
    return [t["token"] for t in out["tokens"]]


def _report(request, message: str) -> None:
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print(f"\n{message}")


@pytest.fixture(scope="session")
def cluster_root():
    """A fresh folder for cluster homes, which the service user may pass through."""
    base = os.environ.get("ES_RERANK_TEST_CLUSTER_DIR")
    root = Path(tempfile.mkdtemp(prefix="es-rerank-test-", dir=base))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def sleeper():
    """A harmless process of ours, standing for whatever reuses a stale pid."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


# -- pure logic ----------------------------------------------------------------------

def test_constructor_validates_and_names_the_value():
    with pytest.raises(ClusterError, match="engine must be one of.*'solr'"):
        LocalCluster(engine="solr")
    with pytest.raises(ClusterError, match="version must look like 9.2.8, got '9.2.8/../x'"):
        LocalCluster(version="9.2.8/../x")
    with pytest.raises(ClusterError, match="port must be .* got 80"):
        LocalCluster(port=80)
    with pytest.raises(ClusterError, match="heap must be a JVM size .* got '1 g'"):
        LocalCluster(heap="1 g")
    with pytest.raises(ClusterError, match="white space"):
        LocalCluster(home="/tmp/a b")


def test_one_node_keeps_single_node_discovery():
    from es_rerank.cluster.topology import Topology

    topo = Topology("elasticsearch", 9200)
    (node,) = topo.nodes
    assert topo.node_settings(node, cluster_name="c") == {
        "cluster.name": "c", "node.name": "es-rerank-elasticsearch-9200", "network.host": "127.0.0.1",
        "http.port": 9200, "transport.port": 9300, "discovery.type": "single-node"}


@pytest.mark.parametrize("engine", [ELASTICSEARCH, OPENSEARCH])
def test_three_nodes_on_consecutive_ports_find_each_other(engine):
    from es_rerank.cluster.topology import Topology

    topo = Topology(engine.name, 9230, 3, engine.bootstrap_setting)
    names = [f"es-rerank-{engine.name}-{p}" for p in (9230, 9231, 9232)]
    assert [(n.index, n.http_port, n.transport_port, n.name) for n in topo.nodes] == \
        [(0, 9230, 9330, names[0]), (1, 9231, 9331, names[1]), (2, 9232, 9332, names[2])]
    bootstrap = "cluster.initial_master_nodes" if engine.name == "elasticsearch" \
        else "cluster.initial_cluster_manager_nodes"
    assert topo.node_settings(topo.nodes[1], cluster_name="c") == {
        "cluster.name": "c", "node.name": names[1], "network.host": "127.0.0.1", "http.port": 9231,
        "transport.port": 9331, "discovery.seed_hosts": ["127.0.0.1:9330", "127.0.0.1:9331", "127.0.0.1:9332"],
        bootstrap: names}


def test_topology_validates_and_records():
    from es_rerank.cluster.topology import Topology

    for size in (0, 10, True, "3"):
        with pytest.raises(ClusterError, match="nodes must be an integer from 1 to 9"):
            Topology("elasticsearch", 9200, size)
    with pytest.raises(ClusterError, match=r"port must be an integer from 1024 to 65433 for 3 node"):
        Topology("elasticsearch", 65434, 3)
    topo = Topology("opensearch", 9240, 3)
    record = Topology.read_record(topo.record(topo.nodes[2]).decode(), where="r")
    assert record == {"engine": "opensearch", "first_port": 9240, "nodes": 3, "index": 2}
    topo.check_record(topo.nodes[2], record, where="f")
    with pytest.raises(ClusterError, match=r"f is node 3 of a 3-node cluster whose first HTTP port is 9240, not "
                                           r"node 1 of 1 from port 9242; use --port 9240 --nodes 3"):
        Topology("opensearch", 9242).check_record(Topology("opensearch", 9242).nodes[0], record, where="f")
    # a folder from before records held one node: never part of a bigger cluster
    with pytest.raises(ClusterError, match="node 1 of a 1-node cluster"):
        topo.check_record(topo.nodes[0], None, where="f")
    Topology("opensearch", 9240).check_record(Topology("opensearch", 9240).nodes[0], None, where="f")
    for text in ("not json", "[]", '{"nodes": 3}'):
        with pytest.raises(ClusterError, match="not written by es-rerank"):
            Topology.read_record(text, where="r")


def test_nodes_from_argument_environment_or_record(monkeypatch, tmp_path):
    from es_rerank.cluster.topology import RECORD_FILE

    monkeypatch.delenv("ES_RERANK_CLUSTER_NODES", raising=False)
    assert len(LocalCluster(home=tmp_path, port=9230).nodes) == 1
    folder = tmp_path / "elasticsearch-node-9230"
    folder.mkdir()
    (folder / RECORD_FILE).write_text('{"engine": "elasticsearch", "first_port": 9230, "nodes": 3, "index": 0}')
    cluster = LocalCluster(home=tmp_path, port=9230)
    assert [n.http_port for n in cluster.nodes] == [9230, 9231, 9232]
    assert cluster.node_dirs == [tmp_path / f"elasticsearch-node-{p}" for p in (9230, 9231, 9232)]
    assert len(LocalCluster(home=tmp_path, port=9230, nodes=2).nodes) == 2  # the argument wins (start refuses)
    monkeypatch.setenv("ES_RERANK_CLUSTER_NODES", "5")
    assert len(LocalCluster(home=tmp_path, port=9230).nodes) == 5
    monkeypatch.setenv("ES_RERANK_CLUSTER_NODES", "three")
    with pytest.raises(ClusterError, match="ES_RERANK_CLUSTER_NODES must be a number of nodes, got 'three'"):
        LocalCluster(home=tmp_path, port=9230)
    monkeypatch.delenv("ES_RERANK_CLUSTER_NODES")
    with pytest.raises(ClusterError, match="nodes must be an integer from 1 to 9, got 12"):
        LocalCluster(port=9230, nodes=12)
    middle = tmp_path / "elasticsearch-node-9231"
    middle.mkdir()
    (middle / RECORD_FILE).write_text('{"engine": "elasticsearch", "first_port": 9230, "nodes": 3, "index": 1}')
    with pytest.raises(ClusterError, match="this is node 2 of a cluster whose first HTTP port is 9230; use --port 9230"):
        LocalCluster(home=tmp_path, port=9231).nodes


def test_defaults_per_engine(monkeypatch):
    monkeypatch.delenv("ES_RERANK_CLUSTER_PORT", raising=False)
    monkeypatch.delenv("ES_RERANK_CLUSTER_ENGINE", raising=False)
    es, os_ = LocalCluster(home="/tmp/x"), LocalCluster(engine="opensearch", home="/tmp/x")
    assert (es.engine, es.port, es.version) == ("elasticsearch", 9200, "9.2.8")
    assert (os_.engine, os_.port, os_.version) == ("opensearch", 9202, "3.5.0")
    assert es.node_dir != os_.node_dir and es.dist_dir != os_.dist_dir
    monkeypatch.setenv("ES_RERANK_CLUSTER_ENGINE", "opensearch")
    assert LocalCluster(home="/tmp/x").engine == "opensearch"


@pytest.mark.parametrize("settings, message", [
    ({"network.host": "0.0.0.0"}, "'network.host' is set by es-rerank"),
    ({"xpack.security.enabled": True}, "'xpack.security.enabled' is set by es-rerank"),
    ({"path.data": "/etc"}, "'path.data' is set by es-rerank"),
    ({"http.port": 1}, "'http.port' is set by es-rerank"),
    ({"a\nnetwork.host": "0.0.0.0"}, "dotted words"),
    ({"thread_pool.write.queue_size": {"x": 1}}, "must be a string, number"),
])
def test_extra_settings_refused(settings, message):
    with pytest.raises(ClusterError, match=re.escape(message)):
        LocalCluster(extra_settings=settings)


@pytest.mark.parametrize("opts, expected", [
    ("", None),
    ("-Xmx1g", None),
    ("-Dmaven.repo.local=/srv/m2", "/srv/m2"),
    ("-Xmx1g '-Dmaven.repo.local=/srv/my m2' -Dother=1", "/srv/my m2"),
    ("-Dmaven.repo.local=/a -Dmaven.repo.local=/b", "/b"),  # the JVM keeps the last
    ("-Dmaven.repo.local=", None),
    ("'unbalanced", None),
])
def test_local_repository_follows_maven_opts(opts, expected):
    from es_rerank.cluster import maven

    got = maven.local_repository({"MAVEN_OPTS": opts})
    assert got == (Path(expected) if expected else Path.home() / ".m2" / "repository")


def test_read_pid():
    assert procs.read_pid("1234\n") == 1234
    for bad in (None, "", "abc", "-5", "1", "0", "12 34", "99999999999"):
        assert procs.read_pid(bad) is None


def test_identity_needs_main_class_tag_and_owner(sleeper, tmp_path):
    """Only a process showing the main class, this node's exact tag and the node user counts as the node."""
    node = tmp_path / "elasticsearch-node-1"
    main = "org.elasticsearch.bootstrap.Elasticsearch"
    # a stand-in carrying the node's marks in its command line (argv[1:] of a sleeping python)
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)",
                             f"org.elasticsearch.server/{main}", f"{procs.NODE_TAG}{node}"])
    try:
        assert _wait_until(lambda: procs.NodeIdentity(main, node, os.geteuid()).matches(fake.pid), 10)
        assert not procs.NodeIdentity(main, node, os.geteuid()).matches(sleeper.pid)
        assert not procs.NodeIdentity(main, Path(f"{node}0"), os.geteuid()).matches(fake.pid)  # another node
        assert not procs.NodeIdentity(main, node, os.geteuid() + 1).matches(fake.pid)  # another user
        assert not procs.NodeIdentity("org.opensearch.bootstrap.OpenSearch", node, os.geteuid()).matches(fake.pid)
        assert procs.NodeIdentity(main, node, os.geteuid()).find() == [fake.pid]
        assert not procs.terminate(sleeper.pid, procs.NodeIdentity(main, node, os.geteuid()), timeout=5)
        assert sleeper.poll() is None
        assert procs.terminate(fake.pid, procs.NodeIdentity(main, node, os.geteuid()), timeout=10)
        assert fake.wait(timeout=10) == -15
    finally:
        fake.kill()
        fake.wait()


def test_opensearch_jvm_options_point_outside_the_distribution(tmp_path):
    text = ("-Xms1g\n-Xmx1g\n-XX:HeapDumpPath=data\n-XX:ErrorFile=logs/hs_err_pid%p.log\n"
            "8:-Xloggc:logs/gc.log\n9-:-Xlog:gc*,gc+age=trace,safepoint:file=logs/gc.log:utctime,pid,tags\n"
            "21-:-javaagent:agent/opensearch-agent.jar\n")
    node, dist = tmp_path / "node", tmp_path / "dist"
    out = OPENSEARCH.jvm_options(text, node_dir=node, dist=dist)
    assert f"-XX:HeapDumpPath={node}/data\n" in out
    assert f"-XX:ErrorFile={node}/logs/hs_err_pid%p.log\n" in out
    assert f"8:-Xloggc:{node}/logs/gc.log\n" in out
    assert f"safepoint:file={node}/logs/gc.log:utctime" in out
    assert f"21-:-javaagent:{dist}/agent/opensearch-agent.jar\n" in out
    assert not re.search(r"(?m)^-Xm[sx]", out)


def test_plugin_component_list_matches_the_sources():
    """named_components.json (shipped so the installer need not scan) names every annotated class."""
    files = analysis_plugin.source_files()
    declared = json.loads(files["named_components.json"])
    found: dict[str, dict[str, str]] = {}
    for rel, data in files.items():
        if not rel.endswith(".java"):
            continue
        text = data.decode()
        package = re.search(r"^package ([\w.]+);", text, re.M).group(1)
        name = re.search(r'@NamedComponent\("([^"]+)"\)', text).group(1)
        cls, iface = re.search(r"public class (\w+) implements (\w+)", text).groups()
        found.setdefault(f"org.elasticsearch.plugin.analysis.{iface}", {})[name] = f"{package}.{cls}"
    assert found == declared
    assert set(declared["org.elasticsearch.plugin.analysis.AnalyzerFactory"]) == {"english"}
    assert set(declared["org.elasticsearch.plugin.analysis.TokenFilterFactory"]) == {"porter_stem", "kstem"}


# -- the cluster folder: refused before anything is fetched or changed -------------------

def _start_refused(home: Path, match: str, port: int = SAFETY_PORT) -> None:
    with pytest.raises(ClusterError, match=match):
        LocalCluster(home=home, port=port).start(timeout=30)


def test_refuses_a_symlinked_cluster_folder(cluster_root):
    case = cluster_root / "symlinked"
    case.mkdir()
    decoy = _make_decoy(case)
    before = _snapshot(decoy)
    (case / "home").symlink_to(decoy)
    _start_refused(case / "home", "is a symlink")
    assert _snapshot(decoy) == before


@needs_root
def test_refuses_a_cluster_folder_owned_by_another_user(cluster_root):
    case = cluster_root / "foreign"
    case.mkdir()
    decoy = _make_decoy(case)
    nobody = 65534
    for p in [decoy, *decoy.rglob("*")]:
        os.lchown(p, nobody, nobody)
    before = _snapshot(decoy)
    _start_refused(decoy, "owned by (nobody|65534), expected root")
    assert _snapshot(decoy) == before


def test_refuses_a_cluster_folder_others_can_write(cluster_root):
    home = cluster_root / "writable"
    home.mkdir()
    os.chmod(home, 0o777)
    _start_refused(home, r"writable by other users \(mode 0777\)")
    assert stat.S_IMODE(os.lstat(home).st_mode) == 0o777
    assert list(home.iterdir()) == []


@needs_root
def test_refuses_a_folder_the_service_user_cannot_enter(cluster_root):
    private = cluster_root / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    _start_refused(private / "home", f"the service user {SERVICE_USER} cannot enter {private}")
    assert not (private / "home").exists()


@pytest.mark.parametrize("entry", ["elasticsearch-9.2.8", f"elasticsearch-node-{SAFETY_PORT}"])
def test_refuses_links_planted_in_the_cluster_folder(cluster_root, entry):
    """A link where the distribution or the node folder goes is never followed (nor chowned through)."""
    case = cluster_root / f"planted-{entry}"
    case.mkdir()
    decoy = _make_decoy(case)
    home = case / "home"
    home.mkdir()
    before = _snapshot(decoy)
    (home / entry).symlink_to(decoy)
    _start_refused(home, "es-rerank did not create it")
    assert _snapshot(decoy) == before
    # listed as ours in the manifest, a link is still refused
    safefs.record_created(home, entry)
    _start_refused(home, "is a symlink")
    assert _snapshot(decoy) == before


def test_refuses_a_folder_it_did_not_create(cluster_root):
    home = cluster_root / "foreign-entry"
    (home / "elasticsearch-9.2.8" / "bin").mkdir(parents=True)
    before = _snapshot(home)
    _start_refused(home, r"elasticsearch-9\.2\.8 exists but es-rerank did not create it")
    assert _snapshot(home) == before


def test_port_held_by_another_program_is_a_clear_error(cluster_root):
    home = cluster_root / "busy"
    for port, what in ((BUSY_PORT, "HTTP"), (BUSY_TRANSPORT_PORT + 100, "transport")):
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", port))
            listener.listen()
            cluster_port = port if what == "HTTP" else BUSY_TRANSPORT_PORT
            t0 = time.monotonic()
            with pytest.raises(ClusterError, match=f"{what} port {port} on 127.0.0.1 is in use by another program"):
                LocalCluster(home=home, port=cluster_port).start(timeout=30)
            assert time.monotonic() - t0 < 10
    assert not home.exists()


# -- Elasticsearch: a real node -------------------------------------------------------------

WRITE_QUEUE = {"thread_pool.write.size": 1, "thread_pool.write.queue_size": 1}


@pytest.fixture(scope="class")
def es_case(cluster_root, request):
    """A node started in a folder that already held someone's files, with links planted as the
    service user could (as if left from an earlier run), and a tiny write queue."""
    home = cluster_root / "es-home"
    home.mkdir()
    os.chmod(home, 0o755)
    decoy = _make_decoy(home, "someones-files")
    outside = _make_decoy(cluster_root, "es-outside")
    cluster = LocalCluster(home=home, port=ES_PORT, heap="512m", extra_settings=WRITE_QUEUE)
    t0 = time.monotonic()
    cluster.prepare()
    prepared = time.monotonic() - t0
    node_uid = os.lstat(cluster.node_dir / "data").st_uid
    for sub, name in (("data", "planted"), ("logs", "planted"), ("run", "planted"), ("run", "elasticsearch.pid")):
        link = cluster.node_dir / sub / name
        link.symlink_to(outside if name == "planted" else outside / "notes.txt")
        os.lchown(link, node_uid, node_uid)
    home_stat = os.lstat(home)
    before = {"decoy": _snapshot(decoy), "outside": _snapshot(outside)}
    t1 = time.monotonic()
    cluster.start(timeout=240)
    _report(request, f"Elasticsearch: prepare (unpack, plugin build+install, keystore) {prepared:.1f} s, "
                     f"start {time.monotonic() - t1:.1f} s")
    yield {"cluster": cluster, "home": home, "home_stat": home_stat, "decoy": decoy, "outside": outside,
           "before": before}
    cluster.stop()


@pytest.mark.es
@needs_java
class TestElasticsearchNode:
    def test_status_is_green_with_the_analysis_plugin(self, es_case):
        cluster = es_case["cluster"]
        status = cluster.status()
        assert status["engine"] == "elasticsearch" and status["version"] == "9.2.8"
        assert status["running"] and status["managed"] and status["health"] == "green"
        assert status["plugins"] == [analysis_plugin.PLUGIN_NAME]
        assert status["pid"] == int(safefs.read_text(cluster.pid_file))
        assert status["url"] == f"http://127.0.0.1:{ES_PORT}" and status["home"] == str(es_case["home"])

    def test_english_analyzer_and_stemmers(self, es_case):
        url = es_case["cluster"].url
        assert _analyze(url, {"analyzer": "english", "text": "The runners were running"}) == ["runner", "were", "run"]
        assert _analyze(url, {"analyzer": "english", "text": "John's cats"}) == ["john", "cat"]
        assert _analyze(url, {"tokenizer": "standard", "filter": ["lowercase", "porter_stem"],
                              "text": "Running cats"}) == ["run", "cat"]
        # KStem is the lighter stemmer: dictionary words such as "running" stay whole
        assert _analyze(url, {"tokenizer": "standard", "filter": ["lowercase", "kstem"],
                              "text": "Running cats"}) == ["running", "cat"]
        index = f"test-cluster-{os.getpid()}"
        body = {"settings": {"index.auto_expand_replicas": "0-1"},
                "mappings": {"properties": {"text": {"type": "text", "analyzer": "english"}}}}
        try:
            assert _req(f"{url}/{index}", "PUT", body)[0] == 200
            assert _req(f"{url}/{index}/_doc/1?refresh=true", "PUT", {"text": "The runners were running"})[0] == 201
            status, found = _req(f"{url}/{index}/_search", "POST", {"query": {"match": {"text": "run"}}})
            assert found["hits"]["total"]["value"] == 1
            assert _req(f"{url}/_cluster/health")[1]["status"] == "green"
        finally:
            _req(f"{url}/{index}", "DELETE")

    def test_start_again_finds_the_running_node(self, es_case):
        cluster = es_case["cluster"]
        pid = cluster.pid()
        t0 = time.monotonic()
        assert cluster.start(timeout=30) == cluster.url
        assert time.monotonic() - t0 < 10 and cluster.pid() == pid

    def test_tiny_write_queue_gives_per_item_429(self, es_case):
        """extra_settings reach the node: 3 concurrent bulk writers against a write pool of 1 thread
        and a queue of 1 get per-item 429s (es_rejected_execution_exception) in HTTP-200 responses."""
        url = es_case["cluster"].url
        pool = _req(f"{url}/_nodes/_local/thread_pool")[1]
        (node,) = pool["nodes"].values()
        assert (node["thread_pool"]["write"]["size"], node["thread_pool"]["write"]["queue_size"]) == (1, 1)
        index = f"test-cluster-429-{os.getpid()}"
        assert _req(f"{url}/{index}", "PUT", {"settings": {"index.auto_expand_replicas": "0-1",
                                                           "number_of_shards": 2}})[0] == 200
        seen: Counter = Counter()

        def writer(w: int) -> None:
            for b in range(4):
                lines = []
                for i in range(200):
                    lines += [json.dumps({"index": {"_index": index, "_id": f"{w}-{b}-{i}"}}),
                              json.dumps({"text": "hello world " * 20})]
                status, out = _req(f"{url}/_bulk", "POST", ndjson=("\n".join(lines) + "\n").encode())
                seen[f"http {status}"] += 1
                for item in out.get("items", []):
                    seen[(item["index"]["status"], item["index"].get("error", {}).get("type"))] += 1

        try:
            threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            _req(f"{url}/{index}", "DELETE")
        assert seen[(429, "es_rejected_execution_exception")] > 0, seen
        assert seen["http 200"] == 12, seen

    def test_node_files_are_not_for_other_users(self, es_case):
        cluster = es_case["cluster"]
        node = cluster.node_dir
        assert stat.S_IMODE(os.lstat(node).st_mode) == 0o750
        checked = 0
        for sub in ("data", "logs", "run"):
            for p in [node / sub, *(node / sub).rglob("*")]:
                try:
                    st = os.lstat(p)
                except FileNotFoundError:  # the live node rotates translog and state files as we walk
                    continue
                checked += 1
                if not stat.S_ISLNK(st.st_mode):
                    assert stat.S_IMODE(st.st_mode) & 0o007 == 0, (p, oct(st.st_mode))
        assert checked >= 10
        for p in [node / "config", *(node / "config").rglob("*")]:
            st = os.lstat(p)
            assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o027 == 0, (p, oct(st.st_mode))
        if ROOT:
            assert os.lstat(node / "data").st_uid != 0  # the node runs as the service user
            assert os.lstat(cluster.dist_dir).st_uid == 0
            assert all(os.lstat(p).st_uid == 0 for p in cluster.dist_dir.rglob("*"))

    def test_a_pid_file_naming_another_process_kills_nothing(self, es_case, sleeper):
        """A stale pid (a sleep of ours, or the live node of another port) is reported, removed, never signalled."""
        cluster = es_case["cluster"]
        spare = LocalCluster(home=es_case["home"], port=SPARE_PORT, heap="512m")
        spare.prepare()
        for pid in (sleeper.pid, cluster.pid()):
            spare.pid_file.write_text(f"{pid}\n")
            assert spare.stop(timeout=5) is False
            assert not spare.pid_file.exists()
        assert sleeper.poll() is None
        assert cluster.status()["health"] == "green"

    def test_stop_leaves_everything_else_untouched(self, es_case):
        cluster = es_case["cluster"]
        pid = cluster.pid()
        assert cluster.stop() is True
        assert not procs.alive(pid) and cluster.info() is None
        assert cluster.stop() is False
        home_now = os.lstat(es_case["home"])
        then = es_case["home_stat"]
        assert (home_now.st_uid, home_now.st_gid, home_now.st_mode) == (then.st_uid, then.st_gid, then.st_mode)
        assert _snapshot(es_case["decoy"]) == es_case["before"]["decoy"]
        assert _snapshot(es_case["outside"]) == es_case["before"]["outside"]
        # the planted links themselves are still links (not followed, not replaced by files)
        assert (cluster.node_dir / "data" / "planted").is_symlink()


# -- OpenSearch: a real node -------------------------------------------------------------------

@pytest.fixture(scope="class")
def os_node(cluster_root, request):
    cluster = LocalCluster(engine="opensearch", home=cluster_root / "os-home", port=OS_PORT, heap="1g")
    t0 = time.monotonic()
    cluster.prepare()
    prepared = time.monotonic() - t0
    t1 = time.monotonic()
    cluster.start(timeout=300)
    _report(request, f"OpenSearch: prepare (unpack, k-NN install, keystore) {prepared:.1f} s, "
                     f"start {time.monotonic() - t1:.1f} s")
    yield cluster
    cluster.stop()


@pytest.mark.es
@needs_java
class TestOpenSearchNode:
    def test_status_knn_and_english(self, os_node):
        status = os_node.status()
        assert (status["engine"], status["version"], status["health"]) == ("opensearch", "3.5.0", "green")
        assert status["managed"] and "opensearch-knn" in status["plugins"] and status["pid"]
        url = os_node.url
        assert _analyze(url, {"analyzer": "english", "text": "The runners were running"}) == ["runner", "were", "run"]
        index = f"test-cluster-knn-{os.getpid()}"
        body = {"settings": {"index.knn": True, "index.auto_expand_replicas": "0-1"},
                "mappings": {"properties": {
                    "text": {"type": "text", "analyzer": "english"},
                    # never faiss or an unset method: the Maven k-NN zip has no native libraries
                    "vector": {"type": "knn_vector", "dimension": 3,
                               "method": {"name": "hnsw", "engine": "lucene", "space_type": "cosinesimil"}}}}}
        try:
            assert _req(f"{url}/{index}", "PUT", body)[0] == 200
            for i, vec in enumerate(([1.0, 0.0, 0.0], [0.0, 1.0, 0.0])):
                assert _req(f"{url}/{index}/_doc/{i}?refresh=true", "PUT",
                            {"text": f"doc {i}", "vector": vec})[0] == 201
            status_code, out = _req(f"{url}/{index}/_search", "POST",
                                    {"size": 1, "query": {"knn": {"vector": {"vector": [0.9, 0.1, 0.0], "k": 1}}}})
            assert status_code == 200 and out["hits"]["hits"][0]["_id"] == "0"
            assert _req(f"{url}/_cluster/health")[1]["status"] == "green"
        finally:
            _req(f"{url}/{index}", "DELETE")

    def test_relative_paths_in_jvm_options_were_rewritten(self, os_node):
        text = (os_node.node_dir / "config" / "jvm.options").read_text()
        assert "file=logs/" not in text and "HeapDumpPath=data\n" not in text and "javaagent:agent/" not in text
        assert (os_node.node_dir / "logs" / "gc.log").exists()

    def test_both_engines_have_their_own_folders(self, os_node):
        assert os_node.dist_dir.name == "opensearch-3.5.0" and os_node.node_dir.name == f"opensearch-node-{OS_PORT}"
        assert os_node.pid_file.name == "opensearch.pid"

    def test_port_held_by_this_node_refuses_the_other_engine(self, os_node):
        with pytest.raises(ClusterError, match=f"port {OS_PORT} is held by another OpenSearch"):
            LocalCluster(engine="elasticsearch", home=os_node.home, port=OS_PORT).start(timeout=30)

    def test_stop(self, os_node):
        pid = os_node.pid()
        assert os_node.stop() is True
        assert not procs.alive(pid) and os_node.info() is None
