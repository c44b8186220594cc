"""es-rerank serve in front of a cluster with security on: the cluster decides, never es-rerank.

A second local node is started for this module with ``xpack.security.enabled: true`` (HTTP
without TLS on loopback, the ``elastic`` password set through the keystore's
``bootstrap.password``, a read-only user and role in the file realm), on its own port and
folder: ``ES_RERANK_TEST_SECURED_PORT`` (default 9281) and ``ES_RERANK_TEST_SECURED_DIR``
(default ``<tmp>/es-rerank-secured``).
It is stopped at the end. The server is deliberately given the superuser's password in its
settings, to show that it never uses it.
"""

import base64
import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import httpx
import pytest
from elasticsearch import AuthenticationException, AuthorizationException, Elasticsearch

from es_rerank.cluster import LocalCluster
from es_rerank.cluster import safefs
from es_rerank.config import Settings
from es_rerank.errors import ClusterError
from es_rerank.server import ServerThread, create_app

from conftest import BACKEND

pytestmark = pytest.mark.es

PASSWORD = f"pw-{uuid.uuid4().hex[:12]}"
READER_PASSWORD = f"reader-{uuid.uuid4().hex[:12]}"


class SecuredCluster(LocalCluster):
    """The project's local Elasticsearch node with security on.

    ``LocalCluster`` keeps security settings to itself (an unsecured node must never be
    exposed by an override), so this test subclass turns security on in the config it
    writes: HTTP without TLS on loopback, ``elastic``'s password through the keystore's
    ``bootstrap.password``, and a read-only user and role in the file realm (the native
    realm's ``.security`` index needs analysis-common, which the Maven distribution lacks).
    """

    def __init__(self, *, password: str, **kwargs):
        super().__init__(engine="elasticsearch", **kwargs)
        self.password = password

    def _sync_config(self, node, java, user):
        super()._sync_config(node, java, user)
        conf = self.node_dir / "config"
        gid = None if user is None else user.gid
        yml = (conf / "elasticsearch.yml").read_text()
        if "xpack.security.enabled: false" not in yml:
            raise ClusterError(f"unexpected node config, cannot turn security on:\n{yml}")
        yml = yml.replace("xpack.security.enabled: false", "xpack.security.enabled: true")
        yml += "xpack.security.http.ssl.enabled: false\nxpack.security.transport.ssl.enabled: false\n"
        safefs.write_file(conf / "elasticsearch.yml", yml.encode(), mode=0o640, gid=gid)
        roles = (conf / "roles.yml").read_text() + \
            "\nserve-reader:\n  indices:\n    - names: ['sec-a-*']\n      privileges: ['read']\n"
        safefs.write_file(conf / "roles.yml", roles.encode(), mode=0o640, gid=gid)
        env = self._tool_env(java, ES_PATH_CONF=str(conf))
        keystore, users = str(self.dist_dir / "bin" / "elasticsearch-keystore"), \
            str(self.dist_dir / "bin" / "elasticsearch-users")
        steps = [([users, "useradd", "serve-reader", "-p", READER_PASSWORD, "-r", "serve-reader"], None),
                 ([keystore, "add", "-x", "-f", "bootstrap.password"], self.password)]
        if not (conf / "elasticsearch.keystore").exists():
            steps.insert(0, ([keystore, "create"], None))
        for args, stdin in steps:
            proc = subprocess.run(args, input=stdin, text=True, env=env, capture_output=True, cwd=self.dist_dir)
            if proc.returncode != 0:
                raise ClusterError(f"{' '.join(args[1:3])} failed: {proc.stdout[-500:]} {proc.stderr[-1500:]}")
        for name in ("elasticsearch.keystore", "users", "users_roles"):  # the node reads them, never writes
            fd = os.open(conf / name, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                if gid is not None:
                    os.fchown(fd, -1, gid)
                os.fchmod(fd, 0o640)
            finally:
                os.close(fd)

    def _health(self, query: str = "") -> dict | None:
        auth = base64.b64encode(f"elastic:{self.password}".encode()).decode()
        req = urllib.request.Request(f"{self.url}/_cluster/health{query}", headers={"Authorization": f"Basic {auth}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def _probe(self, node=None):
        health = self._health()
        return None if health is None else (health, "elasticsearch")

    def _wait_healthy(self, deadline: float, *, launched: tuple) -> None:
        while time.monotonic() < deadline:
            health = self._health("?wait_for_status=yellow&timeout=2s")
            if health is not None and health.get("status") in ("yellow", "green") and self.is_ours(health):
                return
            time.sleep(1.0)
        self.stop()
        raise ClusterError(f"secured node not healthy in time\n{self.log_tail()}")


@pytest.fixture(scope="module")
def secured_url():
    home = Path(os.environ.get("ES_RERANK_TEST_SECURED_DIR", Path(tempfile.gettempdir()) / "es-rerank-secured"))
    port = int(os.environ.get("ES_RERANK_TEST_SECURED_PORT", "9281"))
    cluster = SecuredCluster(password=PASSWORD, home=home, port=port, heap="512m")
    cluster.stop()  # a node this folder and port left running: start from a known state
    try:
        cluster.start(timeout=240)
    except ClusterError as e:
        pytest.skip(f"cannot start a secured local node: {e}")
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def secured_server(secured_url, embedding_model_path, cross_encoder_path, embedder, reranker):
    settings = Settings(url=secured_url, username="elastic", password=PASSWORD,  # never used: see the tests
                        embedding_model=embedding_model_path, reranker_model=cross_encoder_path, device="cpu",
                        reranker_backend=BACKEND, embedding_backend=BACKEND)
    with ServerThread(create_app(settings, embedder=embedder, rerankers={"cross-encoder": reranker})) as running:
        yield running


DOCS = ["refunds arrive within five days", "reset your password from the login page",
        "double charges are refunded automatically", "invite a colleague to your team"]


@pytest.fixture(scope="module")
def indices(secured_server, secured_url):
    """``sec-a-*`` (the reader may read it) and ``sec-b-*`` (it may not), made through the server."""
    names = {"a": f"sec-a-{uuid.uuid4().hex[:8]}", "b": f"sec-b-{uuid.uuid4().hex[:8]}"}
    with Elasticsearch(secured_server.url, basic_auth=("elastic", PASSWORD), request_timeout=60) as admin:
        for name in names.values():
            admin.indices.create(index=name, mappings={"properties": {"text": {"type": "text"}}})
            for i, text in enumerate(DOCS):
                admin.index(index=name, id=str(i), document={"text": text})
            admin.indices.refresh(index=name)
    yield names
    for name in names.values():
        httpx.delete(f"{secured_url}/{name}", auth=("elastic", PASSWORD))


def rerank_body(query="refund for a double charge"):
    return {"retriever": {"text_similarity_reranker": {
        "retriever": {"standard": {"query": {"match": {"text": query}}}}, "field": "text", "inference_text": query,
        "rank_window_size": 4}}, "size": 3}


def both(secured_url, server_url, method, path, **kwargs):
    return (httpx.request(method, secured_url + path, timeout=60, **kwargs),
            httpx.request(method, server_url + path, timeout=60, **kwargs))


def www_authenticate(resp):
    return sorted(v for k, v in resp.headers.multi_items() if k.lower() == "www-authenticate")


@pytest.mark.parametrize("auth", [("elastic", "wrong-password"), None], ids=["wrong-password", "no-credentials"])
def test_refused_exactly_as_the_cluster_refuses(secured_url, secured_server, indices, auth):
    """Wrong or missing credentials: the cluster's 401 comes back, though the server holds the password."""
    index = indices["a"]
    kwargs = {"auth": auth} if auth else {}
    # passthrough: byte for byte
    for method, path, body in [("POST", f"/{index}/_search", {"query": {"match_all": {}}}),
                               ("GET", "/_cat/indices", None), ("GET", f"/{index}/_mapping", None)]:
        direct, via = both(secured_url, secured_server.url, method, path, json=body, **kwargs)
        assert via.status_code == direct.status_code == 401
        assert via.content == direct.content and www_authenticate(via) == www_authenticate(direct)
    # answered by es-rerank: the cluster's status, error type and WWW-Authenticate; the reason names
    # the request es-rerank sent on the caller's behalf
    direct = httpx.post(f"{secured_url}/{index}/_search", json={"query": {"match_all": {}}}, timeout=60, **kwargs)
    for path, body in [(f"/{index}/_search", rerank_body()),
                       ("/_inference/rerank/cross-encoder", {"query": "q", "input": ["a", "b"]})]:
        via = httpx.post(secured_server.url + path, json=body, timeout=60, **kwargs)
        assert via.status_code == 401, via.text
        assert via.json()["error"]["type"] == direct.json()["error"]["type"] == "security_exception"
        assert via.json()["status"] == 401 and www_authenticate(via) == www_authenticate(direct)
        assert via.json()["error"]["reason"].split(" for REST request")[0] == \
            direct.json()["error"]["reason"].split(" for REST request")[0]
    client_auth = {"basic_auth": auth} if auth else {}
    with Elasticsearch(secured_server.url, max_retries=0, **client_auth) as client:
        with pytest.raises(AuthenticationException):
            client.search(index=index, **rerank_body())
        with pytest.raises(AuthenticationException):
            client.count(index=index)


def test_a_reader_gets_what_the_cluster_allows_and_nothing_more(secured_url, secured_server, indices, reranker):
    reader = ("serve-reader", READER_PASSWORD)
    allowed = httpx.post(f"{secured_server.url}/{indices['a']}/_search", json=rerank_body(), auth=reader, timeout=60)
    assert allowed.status_code == 200, allowed.text
    hits = allowed.json()["hits"]["hits"]
    texts = [h["_source"]["text"] for h in hits]
    assert [h["_score"] for h in hits] == pytest.approx(sorted(reranker.score("refund for a double charge", texts),
                                                               reverse=True), rel=1e-6)
    # what the cluster tells this user about searching sec-b (it cannot parse the reranker retriever itself)
    direct, plain = both(secured_url, secured_server.url, "POST", f"/{indices['b']}/_search",
                         json={"query": {"match_all": {}}}, auth=reader)
    assert direct.status_code == plain.status_code == 403 and plain.content == direct.content
    reranked = httpx.post(f"{secured_server.url}/{indices['b']}/_search", json=rerank_body(), auth=reader, timeout=60)
    assert reranked.status_code == 403, reranked.text
    assert reranked.json() == direct.json()  # the refusal of the search es-rerank sent for the caller
    with Elasticsearch(secured_server.url, basic_auth=reader, max_retries=0) as client:
        with pytest.raises(AuthorizationException):
            client.search(index=indices["b"], **rerank_body())
        with pytest.raises(AuthorizationException):
            client.indices.delete(index=indices["a"])  # read-only: writes are the cluster's to refuse
    assert httpx.head(f"{secured_url}/{indices['a']}", auth=("elastic", PASSWORD)).status_code == 200


def test_health_on_a_secured_cluster(secured_server):
    health = httpx.get(f"{secured_server.url}/_es_rerank/health").json()
    assert health["status"] == "ok" and health["cluster"]["status"] == 401
    assert "secured" in health["cluster"]["health"]
    assert PASSWORD not in json.dumps(health)


def test_the_comparison_page_shows_the_clusters_refusal(secured_url, secured_server, indices, tmp_path):
    """A wrong password typed into the page: the cluster's own 401 reason is on the page, and no login
    box is asked for (the browser never sees a WWW-Authenticate on the page's endpoints)."""
    from report_browser import open_url

    body = {"index": indices["a"], "query": "refund", "depth": 4, "final_k": 2,
            "sides": [{"reranker": "none"}, {"reranker": "cross-encoder"}]}
    direct = httpx.post(f"{secured_url}/{indices['a']}/_search", json={"query": {"match_all": {}}},
                        auth=("elastic", "wrong-password"), timeout=60)
    assert direct.status_code == 401
    via = httpx.post(secured_server.url + "/_es_rerank/ui/compare", json=body, auth=("elastic", "wrong-password"),
                     timeout=60)
    assert via.status_code == 401 and via.json()["error"]["type"] == "security_exception"
    assert www_authenticate(via) == [] and www_authenticate(direct) != []
    cluster_reason = direct.json()["error"]["reason"].split(" for REST request")[0]
    for path in ("/_es_rerank/ui/judged", "/_es_rerank/ui/indices"):  # what the page asks on load: no login box
        r = httpx.get(secured_server.url + path, auth=("elastic", "wrong-password"))
        assert r.status_code == 401 and www_authenticate(r) == [], path
    names = httpx.get(secured_server.url + "/_es_rerank/ui/indices", auth=("elastic", PASSWORD)).json()
    assert indices["a"] in names["names"]
    with open_url(secured_server.url + "/_es_rerank/ui", tmp_path / "profile") as (page, errors, _):
        page.locator("#side-b select[name=reranker] option:nth-child(2)").wait_for(state="attached")
        page.fill("#index", indices["a"])
        page.fill("#query", "refund")
        page.fill("#depth", "4")
        page.fill("#final_k", "2")
        page.locator("details.credentials").evaluate("d => { d.open = true; }")
        page.fill("#user", "elastic")
        page.fill("#password", "wrong-password")
        page.click("#go")
        page.locator("body[data-state=done], body[data-state=error]").wait_for(timeout=60_000)
        shown = page.inner_text("#error")
        assert page.locator("#results").is_hidden()
    assert shown.startswith("401 security_exception: ") and cluster_reason in shown
    assert "wrong-password" not in shown and PASSWORD not in shown
    # the browser logs the failed fetch itself; nothing else went wrong on the page
    assert [e for e in errors if "401" not in e] == []
