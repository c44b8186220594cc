"""The comparison page of ``es-rerank serve`` in headless Chromium, against the real cluster.

The server runs in a thread (uvicorn) in front of the cluster at ES_URL, with the session's
MiniLM embedder and cross-encoder, and judgments from a qrels file. The page is Debian's
/usr/bin/chromium driven by Playwright, with a fresh profile each time. The refusal of a
wrong password is tested against the secured node in test_serve_security_es.py.

Set ``ES_RERANK_TEST_UI_SCREENSHOTS=DIR`` to keep the screenshot the first test takes
(results/ui/compare.png was taken so, by the judged-query test).
"""

import json
import math
import os
import shutil
import socket
import uuid
from pathlib import Path

import httpx
import pytest

from es_rerank.client import Searcher
from es_rerank.config import Settings
from es_rerank.server import ServerThread, create_app
from es_rerank.server.ui import load_judgments

from conftest import BACKEND, drop
from report_browser import open_url
from serve_requests import CHUNK_OVERLAP, CHUNK_TOKENS, sample_chunks

pytestmark = pytest.mark.es

QUERY = "I was charged twice, can I get a refund"
HOSTILE_TITLE = '<img src="x-title" onerror="window.__pwned = \'title\'">Refund <b>policy</b>'
HOSTILE_TEXT = ("<script>window.__pwned = 'script'</script> A refund for a double charge is automatic. "
                '<img src="x-text" onerror="window.__pwned = \'img\'"> & other &amp; entities')
RELEVANT = ("bill-double", "bill-refund")  # judged for query q1 (binary grades)


def _free_port():
    """A free port of this task's range (19300-19399)."""
    for port in range(19300, 19400):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port in 19300-19399")


@pytest.fixture(scope="module")
def ui_index(engine, embedder, es):
    """An es-rerank index (chunks, vectors, marker) of the sample articles plus one hostile document."""
    from elasticsearch import helpers

    from es_rerank.lifecycle import marker

    name = f"test-ui-{uuid.uuid4().hex[:10]}"
    body = engine.index_body(embedder.dimensions)
    body["mappings"]["_meta"] = marker(alias=name, state="ready", engine=engine.name, embedder=embedder.model_name,
                                       embedding_backend=embedder.backend, dims=embedder.dimensions,
                                       chunk_tokens=CHUNK_TOKENS, chunk_overlap=CHUNK_OVERLAP, analyzer="standard")
    es.indices.create(index=name, **body)
    actions, _ = sample_chunks(embedder, name)
    vector = embedder.embed_documents([f"{HOSTILE_TITLE}\n{HOSTILE_TEXT}"])[0]
    actions.append({"_index": name, "_id": "hostile#0", "_source": {
        "doc_id": "hostile", "chunk": 0, "char_start": 0, "char_end": len(HOSTILE_TEXT), "title": HOSTILE_TITLE,
        "text": HOSTILE_TEXT, "metadata": {}, "embedding": [float(x) for x in vector]}})
    ok, errors = helpers.bulk(es, actions, chunk_size=50, refresh=True)
    assert ok == len(actions) and not errors
    yield name
    drop(engine, name)


@pytest.fixture(scope="module")
def ui_server(es_url, embedding_model_path, cross_encoder_path, embedder, reranker, tmp_path_factory):
    qrels = tmp_path_factory.mktemp("qrels") / "qrels.trec"
    qrels.write_text("".join(f"q1 0 {d} 1\n" for d in RELEVANT) + "q1 0 acc-close 0\n")
    judgments = load_judgments(qrels_file=qrels)
    judgments.warm_up()
    settings = Settings(url=es_url, embedding_model=embedding_model_path, reranker_model=cross_encoder_path,
                        device="cpu", reranker_backend=BACKEND, embedding_backend=BACKEND)
    app = create_app(settings, embedder=embedder, rerankers={"cross-encoder": reranker}, judgments=judgments)
    with ServerThread(app, port=_free_port()) as running:
        yield running, settings


def _compare_body(index, query=QUERY, *, depth=20, final_k=10, sides=None, qid=None):
    body = {"index": index, "query": query, "depth": depth, "final_k": final_k,
            "sides": sides or [{"reranker": "none"}, {"reranker": "cross-encoder"}]}
    if qid is not None:
        body["qid"] = qid
    return body


def _fill(page, index, query=QUERY, *, depth=20, final_k=10, qid=None):
    page.locator("#side-b select[name=reranker] option:nth-child(2)").wait_for(state="attached")
    page.fill("#index", index)
    page.fill("#query", query)
    page.fill("#depth", str(depth))
    page.fill("#final_k", str(final_k))
    if qid is not None:
        page.fill("#qid", qid)


def _run(page):
    page.click("#go")  # the page is busy from the click on, until it shows an answer or an error
    page.locator("body[data-state=done], body[data-state=error]").wait_for(timeout=120_000)


def _column(page, i):
    """What one column shows: per hit its doc id, rank, move mark (class and text), relevance."""
    return page.locator(f"#col-{i} li.hit").evaluate_all("""els => els.map(e => ({
        doc: e.dataset.doc, rank: Number(e.dataset.rank), other: e.dataset.otherRank,
        move: e.dataset.move, mark: e.querySelector('.move').textContent,
        relevant: e.classList.contains('relevant'),
        title: e.querySelector('.title').textContent, passage: e.querySelector('.passage').textContent}))""")


def test_a_query_shows_both_rankings_with_moves_marked(ui_server, ui_index, engine, embedder, reranker, tmp_path):
    server, settings = ui_server
    with open_url(server.url + "/_es_rerank/ui", tmp_path / "profile") as (page, errors, requests):
        _fill(page, ui_index)
        _run(page)
        assert page.locator("#error").is_hidden(), page.inner_text("#error")
        left, right = _column(page, 0), _column(page, 1)
        assert page.inner_text("#col-0 h2") == "hybrid" and page.inner_text("#col-1 h2") == "cross-encoder, blend none"
        timings = page.inner_text("#timings")
        assert "candidates" in timings and "embed" in timings and "retrieval" in timings
        assert "right rerank" in timings and "total" in timings
    assert errors == []
    assert {u.split("/", 3)[2] for u in requests} == {server.url.split("/", 3)[2]}  # nothing from elsewhere

    # the two lists are the searcher's own rankings of the same query: hybrid, and reranked
    with Searcher(settings.replace(index=ui_index), engine=engine, embedder=embedder) as searcher:
        hybrid = searcher.search(QUERY, depth=20, final_k=10, rerank=False)
        reranked = searcher.search(QUERY, depth=20, final_k=10)
    assert [h["doc"] for h in left] == [h.doc_id for h in hybrid.hits]
    assert [h["doc"] for h in right] == [h.doc_id for h in reranked.hits]
    assert [h["rank"] for h in left] == [h["rank"] for h in right] == list(range(1, 11))

    # every mark says where the document is on the other side
    left_rank = {h["doc"]: h["rank"] for h in left}
    right_rank = {h["doc"]: h["rank"] for h in right}
    for hits, other in ((right, left_rank), (left, right_rank)):
        for h in hits:
            if h["doc"] in other:
                d = other[h["doc"]] - h["rank"]
                want = ("up", f"↑{d}") if d > 0 else ("down", f"↓{-d}") if d < 0 else ("same", "=")
            else:
                want = ("new", f"new ({h['other']})" if h["other"] else "new")
                assert not h["other"] or int(h["other"]) > 10
            assert (h["move"], h["mark"]) == want, h
    moved = [h for h in right if h["move"] != "same"]
    assert moved, "the cross-encoder reordered nothing: no move to see"


def test_judged_hits_are_marked_and_ndcg_shown(ui_server, ui_index, tmp_path):
    server, _ = ui_server
    direct = httpx.post(server.url + "/_es_rerank/ui/compare", json=_compare_body(ui_index, qid="q1"), timeout=120)
    assert direct.status_code == 200, direct.text
    with open_url(server.url + "/_es_rerank/ui", tmp_path / "profile") as (page, errors, _):
        page.wait_for_selector("#qid-label:not([hidden])")
        _fill(page, ui_index, qid="q1")
        _run(page)
        columns = [_column(page, 0), _column(page, 1)]
        metrics = [page.inner_text("#col-0 .metric"), page.inner_text("#col-1 .metric")]
        page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
        shots = os.environ.get("ES_RERANK_TEST_UI_SCREENSHOTS")
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / "compare.png", Path(shots) / "compare.png")
    assert errors == []
    for side, shown, metric in zip(direct.json()["sides"], columns, metrics):
        assert [h["doc"] for h in shown] == [h["doc_id"] for h in side["hits"]]
        assert [h["doc"] for h in shown if h["relevant"]] == [h["doc"] for h in shown if h["doc"] in RELEVANT]
        # nDCG@10 by hand (binary grades: gain 1 / log2(rank + 1)), against what the page shows
        dcg = sum(1 / math.log2(h["rank"] + 1) for h in shown if h["doc"] in RELEVANT)
        ideal = sum(1 / math.log2(r + 1) for r in range(1, len(RELEVANT) + 1))
        assert f"nDCG@10 {dcg / ideal:.4f}" in metric
        assert "query q1 (qrels.trec)" in metric
    assert any(h["relevant"] for h in columns[1])  # the judged documents are among the shown ones


def test_two_settings_side_by_side(ui_server, ui_index, tmp_path):
    server, _ = ui_server
    with open_url(server.url + "/_es_rerank/ui", tmp_path / "profile") as (page, errors, _):
        _fill(page, ui_index, final_k=5)
        page.check("input[name=mode][value=settings]")
        page.select_option("#side-a select[name=reranker]", "cross-encoder")
        page.select_option("#side-a select[name=blend]", "none")
        page.select_option("#side-b select[name=reranker]", "cross-encoder")
        page.select_option("#side-b select[name=blend]", "linear")
        page.fill("#side-b input[name=blend_weight]", "0.3")
        _run(page)
        assert page.inner_text("#col-0 h2") == "cross-encoder, blend none"
        assert page.inner_text("#col-1 h2") == "cross-encoder, blend linear 0.3"
        assert page.locator("#col-0 li.hit").count() == page.locator("#col-1 li.hit").count() == 5
        assert page.locator("#col-1 .scores .blended").count() == 5  # the blended score beside both stages'
        assert page.locator("#col-0 .scores .blended").count() == 0
        timings = page.inner_text("#timings")
        assert "left rerank" in timings and "right rerank" in timings
    assert errors == []


def test_hostile_document_text_is_shown_as_text(ui_server, ui_index, tmp_path):
    server, _ = ui_server
    # the page's Content-Security-Policy would block inline handlers anyway: bypass it, so that
    # only the page's own care (textContent, never innerHTML) stands between the text and the DOM
    with open_url(server.url + "/_es_rerank/ui", tmp_path / "profile", bypass_csp=True) as (page, errors, requests):
        _fill(page, ui_index, "refund for a double charge", final_k=20)
        _run(page)
        hostile = [h for col in (0, 1) for h in _column(page, col) if h["doc"] == "hostile"]
        assert len(hostile) == 2, "the hostile document was not retrieved"
        for h in hostile:
            assert h["title"] == HOSTILE_TITLE and h["passage"] == HOSTILE_TEXT  # the very characters
        assert page.evaluate("window.__pwned") is None  # nothing ran
        assert page.locator("#results img, #results script, #results b").count() == 0  # nothing parsed
    assert not [u for u in requests if "x-title" in u or "x-text" in u]  # no image was even requested
    assert errors == []


def test_the_page_files_and_the_setting_that_turns_them_off(ui_server, ui_index, embedder, reranker):
    server, settings = ui_server
    page = httpx.get(server.url + "/_es_rerank/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert ui_index in httpx.get(server.url + "/_es_rerank/ui/indices").json()["names"]
    for name in ("ui.js", "ui.css"):
        assert httpx.get(f"{server.url}/_es_rerank/ui/{name}").status_code == 200
    assert "http" not in page.text.replace(server.url, "")  # nothing from elsewhere: no CDN
    # a form post from another site (not JSON) is refused
    r = httpx.post(server.url + "/_es_rerank/ui/compare", content=json.dumps(_compare_body("x")),
                   headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["error"]["reason"]
    r = httpx.post(server.url + "/_es_rerank/ui/compare", json=_compare_body("x", final_k=30))
    assert r.status_code == 400 and r.json()["error"]["reason"] == "[final_k] must be an integer from 1 to 20, got 30"
    off = create_app(settings.replace(serve_ui=False), embedder=embedder, rerankers={"cross-encoder": reranker})
    with ServerThread(off, port=_free_port()) as running:
        for path in ("/_es_rerank/ui", "/_es_rerank/ui/ui.js", "/_es_rerank/ui/compare"):
            r = httpx.request("POST" if path.endswith("compare") else "GET", running.url + path)
            assert r.status_code == 404 and "ES_RERANK_SERVE_UI=false" in r.json()["error"]["reason"]
