"""The index lifecycle under faults: a proxy between es-rerank and the real cluster injects a fault
at every request of ``index`` (first build), ``index --recreate``, ``delete`` and ``delete-docs``,
one request and one fault at a time, and the invariants of :mod:`es_rerank.lifecycle` are checked
after each, with decoys that must survive; then the same command, run again without faults,
must leave the cluster clean (one complete index behind the alias, no leftover build, no lease).

The faults (tests/faultproxy.py): the answer delayed past the client's timeout, the answer
dropped after the cluster applied the request, SIGINT or SIGTERM while the answer is awaited,
and a cut (nothing reaches the cluster any more: what it sees of a process killed at that
moment). Real SIGKILL and SIGTERM of a real ``es-rerank`` process are tried at the swap, and
two builds of one name at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter

import pytest

from es_rerank.cli import exit_on_signal
from es_rerank.config import Settings
from es_rerank.engines import open_engine
from es_rerank.errors import (BuildRejectedError, EsRerankError, IndexMissingError, LeaseHeldError, NotOwnedError)
from es_rerank.indexing import delete_documents, index_paths
from es_rerank.leases import LEASE_INDEX
from es_rerank.lifecycle import delete, leftovers

from conftest import BACKEND, Node, drop, report_line
from faultproxy import FAULTS, FaultProxy, walk

pytestmark = pytest.mark.both_engines

TIMEOUT = 1.0  # the client's timeout behind the proxy: a delayed answer arrives after it
OLD = [{"id": "o1", "title": "Old one", "text": "the previous version of the first article"},
       {"id": "o2", "title": "Old two", "text": "the previous version of the second article"}]
NEW = [{"id": "n1", "title": "New one", "text": "how to close an account and export data"},
       {"id": "n2", "title": "New two", "text": "changing the billing address of a team"},
       {"id": "n3", "title": "New three", "text": "two-factor sign in with a security key"}]


def _jsonl(path, docs):
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return str(path)


@pytest.fixture
def corpora(tmp_path):
    return _jsonl(tmp_path / "old.jsonl", OLD), _jsonl(tmp_path / "new.jsonl", NEW)


@pytest.fixture
def proxy(es_url):
    p = FaultProxy(es_url, delay=TIMEOUT + 0.6)
    yield p
    p.close()


@pytest.fixture
def faulty(proxy, engine_name):
    """The engine under test, reached through the proxy, with a short timeout."""
    with open_engine(Settings(url=proxy.url, engine=engine_name, request_timeout=TIMEOUT)) as engine:
        yield engine


@pytest.fixture
def patient(proxy, engine_name):
    """The engine through the proxy with a long timeout: counts a run's requests on a busy machine."""
    with open_engine(Settings(url=proxy.url, engine=engine_name, request_timeout=60)) as engine:
        yield engine


@pytest.fixture
def sigterm_unwinds():
    """SIGTERM handled as the CLI handles it (``es-rerank`` installs the same handler), and SIGINT
    as Python handles it by default: a runner started in the background by a non-interactive shell
    inherits SIGINT ignored, and the SIGINT faults would then inject nothing."""
    previous = signal.signal(signal.SIGTERM, exit_on_signal), signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGTERM, previous[0])
    signal.signal(signal.SIGINT, previous[1])


@pytest.fixture
def decoys(node, engine, embedder, tmp_path):
    """A plain index with an alias, and another es-rerank index: none may be touched."""
    tag = uuid.uuid4().hex[:8]
    plain, alias, ours = f"decoy-{tag}", f"decoy-alias-{tag}", f"decoy-ours-{tag}"
    node.create_plain(plain, [{"body": "a"}, {"body": "b"}, {"body": "c"}])
    node.put_alias(plain, alias)
    index_paths(engine, [_jsonl(tmp_path / "decoy.jsonl", OLD)], settings=Settings(index=ours), embedder=embedder)
    yield plain, alias, ours
    node.delete_plain(plain)
    drop(engine, ours)


def _decoys_intact(node, decoys):
    plain, alias, ours = decoys
    assert node.count(plain) == 3 and node.alias_targets(alias) == [plain]
    assert node.count(ours) == 2 and len(node.alias_targets(ours)) == 1


def _build(engine, embedder, alias, path, *, recreate=False):
    return index_paths(engine, [path], settings=Settings(index=alias, request_timeout=engine.settings.request_timeout),
                       embedder=embedder, recreate=recreate)


def _serving(node, alias):
    """Invariant 1: the alias points at exactly one complete index (or does not exist); returns its chunks."""
    targets = node.alias_targets(alias)
    if not targets:
        assert not node.exists(alias), f"{alias} exists but is no alias"
        return None
    assert len(targets) == 1, f"{alias} points at {targets}"
    mark = node.meta(targets[0])["es_rerank"]
    assert mark["state"] == "ready", mark
    assert node.aliases(f"{targets[0]}-writer") == {}, "a served index still has its writer alias"
    return node.count(alias)


def _clean(node, engine, alias):
    """After a clean run: one complete index, no leftover build, no lease."""
    assert leftovers(engine, alias) == []
    served = node.alias_targets(alias)
    assert node.indices(f"{alias}-*", expand="all") == served
    assert not _lease_held(engine, alias)


def _lease_held(engine, alias) -> bool:
    try:
        engine.request("GET", f"/{LEASE_INDEX}/_doc/{alias}")
        return True
    except EsRerankError:
        return False


def _as_if_dead(engine, alias):
    """A cut models a process killed at that moment: its lease names a process that no longer exists."""
    if not _lease_held(engine, alias):
        return
    gone = subprocess.Popen(["true"])
    gone.wait()
    engine.request("POST", f"/{LEASE_INDEX}/_update/{alias}", body={"doc": {"pid": gone.pid}},
                   params={"refresh": "true"})


def _succeeded(outcome) -> bool:
    return not isinstance(outcome, BaseException)


def _expected(outcome):
    """A faulted run either succeeds or fails with one of es-rerank's errors (or the interrupt itself)."""
    assert _succeeded(outcome) or isinstance(outcome, (EsRerankError, KeyboardInterrupt, SystemExit)), repr(outcome)


@contextlib.contextmanager
def _case(case, what=""):
    """Name the (request, fault) pair and the faulted run's outcome in any failure of the block."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - re-raised with the case named
        raise AssertionError(f"{what} request {case.n} {case.request} with fault {case.fault}: the faulted run gave "
                             f"{case.outcome!r}; then: {type(e).__name__}: {e}") from e


def _count_requests(proxy, run) -> list[tuple[str, str]]:
    proxy.reset()
    run()
    log = list(proxy.log)
    proxy.reset()
    return log


def _summary(request, engine_name, what, cases, outcomes):
    kinds = Counter(type(o).__name__ if isinstance(o, BaseException) else "ok" for o in outcomes)
    report_line(request, f"{engine_name} {what}: {cases} (request, fault) pairs, outcomes {dict(kinds)}")


def test_fault_walk_first_build(request, engine_name, engine, faulty, patient, proxy, node, embedder, corpora,
                                decoys, sigterm_unwinds):
    """A first build of a new name, faulted at every request: the name is either absent or serves
    the complete build; a clean rerun always ends with exactly that."""
    _, new = corpora
    probe = f"walk-{uuid.uuid4().hex[:8]}"
    log = _count_requests(proxy, lambda: _build(patient, embedder, probe, new))
    drop(engine, probe)
    assert [p for m, p in log if m == "POST" and p.startswith("/_aliases")], log
    names, outcomes = [], []

    def run():
        names.append(f"walk-{uuid.uuid4().hex[:8]}")
        return _build(faulty, embedder, names[-1], new)

    try:
        for case in walk(proxy, run, len(log)):
            alias, outcome = names[-1], case.outcome
            with _case(case):
                _expected(outcome)
                assert _serving(node, alias) in (None, 3)
                _decoys_intact(node, decoys)
                if case.fault == "cut":
                    _as_if_dead(engine, alias)
                if not _succeeded(outcome):
                    _build(engine, embedder, alias, new)
                assert _serving(node, alias) == 3
                _clean(node, engine, alias)
                drop(engine, alias)
            outcomes.append(outcome)
    finally:
        for alias in names:
            drop(engine, alias)
    _summary(request, engine_name, "first build", len(outcomes), outcomes)
    assert len(outcomes) == len(log) * len(FAULTS)


def test_fault_walk_recreate(request, engine_name, engine, faulty, patient, proxy, node, embedder, corpora, decoys,
                             index_name, sigterm_unwinds):
    """``--recreate`` faulted at every request: the alias serves the complete old or the complete new
    index at every moment, never none or two; a clean rerun always switches to the new one."""
    old, new = corpora
    _build(engine, embedder, index_name, old)
    log = _count_requests(proxy, lambda: _build(patient, embedder, index_name, new, recreate=True))
    _build(engine, embedder, index_name, old, recreate=True)
    assert len([p for m, p in log if m == "POST" and p.startswith("/_aliases")]) == 1, log
    outcomes = []
    for case in walk(proxy, lambda: _build(faulty, embedder, index_name, new, recreate=True), len(log)):
        outcome = case.outcome
        with _case(case):
            _expected(outcome)
            assert _serving(node, index_name) in (2, 3)
            if not case.sent("POST", "/_aliases"):  # no swap ever reached the cluster: nothing switched
                assert node.count(index_name) == 2
            _decoys_intact(node, decoys)
            if case.fault == "cut":
                _as_if_dead(engine, index_name)
            if not _succeeded(outcome):
                _build(engine, embedder, index_name, new, recreate=True)
            assert _serving(node, index_name) == 3
            _clean(node, engine, index_name)
            _build(engine, embedder, index_name, old, recreate=True)  # the next case starts from the old version
        outcomes.append(outcome)
    _summary(request, engine_name, "recreate", len(outcomes), outcomes)


def test_fault_walk_delete_and_delete_docs(request, engine_name, engine, faulty, patient, proxy, node, embedder,
                                           corpora, decoys, index_name, sigterm_unwinds):
    """``delete`` and ``delete-docs`` faulted at every request: the alias serves its complete index
    or is gone with it; documents are deleted or not, never half an index; reruns finish the job."""
    old, _ = corpora
    _build(engine, embedder, index_name, old)
    log = _count_requests(proxy, lambda: delete_documents(patient, index_name, ["o1"]))
    _build(engine, embedder, index_name, old, recreate=True)
    outcomes = []
    for case in walk(proxy, lambda: delete_documents(faulty, index_name, ["o1"]), len(log)):
        outcome = case.outcome
        with _case(case, "delete-docs"):
            _expected(outcome)
            assert _serving(node, index_name) in (1, 2)
            _decoys_intact(node, decoys)
            if case.fault == "cut":
                _as_if_dead(engine, index_name)
            delete_documents(engine, index_name, ["o1"])
            assert _serving(node, index_name) == 1
            _build(engine, embedder, index_name, old, recreate=True)
        outcomes.append(outcome)
    n_docs = len(outcomes)

    log = _count_requests(proxy, lambda: delete(patient, index_name))
    _build(engine, embedder, index_name, old)
    for case in walk(proxy, lambda: delete(faulty, index_name), len(log)):
        outcome = case.outcome
        with _case(case, "delete"):
            _expected(outcome)
            assert _serving(node, index_name) in (None, 2)
            _decoys_intact(node, decoys)
            if case.fault == "cut":
                _as_if_dead(engine, index_name)
            try:
                delete(engine, index_name)
            except IndexMissingError:
                pass
            assert not node.exists(index_name)
            # a run cut off holding the lease leaves it to run out (its process is gone: the next run takes it)
            assert case.fault == "cut" or not _lease_held(engine, index_name)
            _build(engine, embedder, index_name, old)
        outcomes.append(outcome)
    _summary(request, engine_name, f"delete-docs ({n_docs}) and delete", len(outcomes), outcomes)


def _cli_env(url, engine_name, embedding_model_path, index):
    return dict(os.environ, ES_URL=url, ES_RERANK_ENGINE=engine_name, ES_RERANK_INDEX=index, ES_REQUEST_TIMEOUT="5",
                ES_RERANK_EMBEDDING_MODEL=embedding_model_path, ES_RERANK_EMBEDDING_BACKEND=BACKEND,
                ES_RERANK_DEVICE="cpu", HF_HUB_OFFLINE="1")


@pytest.mark.parametrize("fault", ["sigkill", "sigterm"])
def test_real_process_killed_at_the_swap(fault, engine_name, engine, proxy, node, embedder, corpora, index_name,
                                         embedding_model_path, decoys):
    """A real ``es-rerank index --recreate`` killed (SIGKILL) or stopped (SIGTERM) while its swap's
    answer is on the way: the alias serves one complete index, and the next run goes ahead at once
    (the lease of a process that is gone is taken over) and cleans up."""
    old, new = corpora
    _build(engine, embedder, index_name, old)
    cmd = [sys.executable, "-m", "es_rerank", "index", new, "--recreate", "--no-progress"]
    env = _cli_env(proxy.url, engine_name, embedding_model_path, index_name)
    proxy.reset()
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    swap_at = [i for i, (m, p) in enumerate(proxy.log, 1) if m == "POST" and p.startswith("/_aliases")]
    assert len(swap_at) == 1
    _build(engine, embedder, index_name, old, recreate=True)

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proxy.arm(swap_at[0], fault, pid=proc.pid)
    out, _ = proc.communicate(timeout=120)
    assert proxy.injected is not None and proxy.injected[0] == fault, out
    proxy.reset()
    assert proc.returncode == (-9 if fault == "sigkill" else 1), out
    assert "Traceback" not in out
    if fault == "sigterm":
        assert "after the switch" in out or "was not switched" in out, out
    assert _serving(node, index_name) in (2, 3)
    _decoys_intact(node, decoys)
    again = subprocess.run(cmd, env=_cli_env(engine.settings.url, engine_name, embedding_model_path, index_name),
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _serving(node, index_name) == 3
    _clean(node, engine, index_name)


def test_two_builds_of_one_name_never_split_the_alias(engine, proxy, faulty, patient, node, embedder, corpora, index_name,
                                                      decoys):
    """Two first builds of one name at once: the second is refused while the first holds the lease;
    the alias ends on one index and every query works."""
    _, new = corpora
    probe = f"probe-{uuid.uuid4().hex[:8]}"
    log = _count_requests(proxy, lambda: _build(patient, embedder, probe, new))
    drop(engine, probe)
    bulk_at = next(i for i, (m, p) in enumerate(log, 1) if p.startswith("/_bulk"))
    proxy.arm(bulk_at, "hold")
    result = {}
    first = threading.Thread(target=lambda: result.setdefault("first", _build(faulty, embedder, index_name, new)))
    first.start()
    assert proxy.wait_held(60)
    with pytest.raises(LeaseHeldError, match="holds its lease"):
        _build(engine, embedder, index_name, new)
    proxy.release()
    first.join(60)
    assert result["first"].documents_indexed == 3
    assert _serving(node, index_name) == 3
    assert len(node.indices(f"{index_name}-*")) == 1
    hits = node.search(index_name, {"query": {"match": {"text": "account"}}})["hits"]["hits"]
    assert [h["_source"]["doc_id"] for h in hits] == ["n1"]


def test_bulk_never_creates_an_index_its_build_lost(engine, proxy, faulty, patient, node, embedder, corpora, index_name):
    """A build whose index is deleted under it (while its bulk request is held): the writes fail
    instead of creating an index with a dynamic mapping, and nothing is switched."""
    old, new = corpora
    _build(engine, embedder, index_name, old)
    log = _count_requests(proxy, lambda: _build(patient, embedder, index_name, new, recreate=True))
    _build(engine, embedder, index_name, old, recreate=True)
    bulk_at = next(i for i, (m, p) in enumerate(log, 1) if p.startswith("/_bulk"))
    proxy.arm(bulk_at, "hold")
    errors = []

    def run():
        try:
            _build(faulty, embedder, index_name, new, recreate=True)
        except EsRerankError as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    assert proxy.wait_held(60)
    (serving,) = node.alias_targets(index_name)
    building = [i for i in node.indices(f"{index_name}-*") if i != serving]
    assert len(building) == 1
    node.delete_plain(building[0])  # a rogue delete behind the build's back
    proxy.release()
    t.join(60)
    assert errors, "the build went on without its index"
    assert not node.exists(building[0]), "a write created the deleted build again"
    assert node.alias_targets(index_name) == [serving] and node.count(index_name) == 2


@pytest.mark.parametrize("content", ["", "not json\n", '{"id": "x"}\n'], ids=["empty", "bad-line", "no-text"])
def test_a_build_with_no_good_record_never_replaces_a_good_one(content, engine, node, embedder, corpora, index_name,
                                                               tmp_path):
    old, _ = corpora
    _build(engine, embedder, index_name, old)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    with pytest.raises(BuildRejectedError, match="holds no document"):
        _build(engine, embedder, index_name, str(bad), recreate=True)
    assert _serving(node, index_name) == 2
    _clean(node, engine, index_name)


def test_rejected_records_block_the_swap_unless_allowed(engine, node, embedder, corpora, index_name, tmp_path):
    old, _ = corpora
    _build(engine, embedder, index_name, old)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps(NEW[0]) + "\nnot json\n" + json.dumps(NEW[1]) + "\n")
    with pytest.raises(BuildRejectedError, match=r"1 of 3 records were rejected .*still serves its previous"):
        _build(engine, embedder, index_name, str(mixed), recreate=True)
    assert _serving(node, index_name) == 2
    report = index_paths(engine, [str(mixed)], settings=Settings(index=index_name), embedder=embedder,
                         recreate=True, allow_rejected=True)
    assert report.documents_indexed == 2 and len(report.rejected) == 1
    assert _serving(node, index_name) == 2 and node.count(index_name, {"term": {"doc_id": "n1"}}) == 1


def test_csv_with_a_duplicate_header_never_replaces_a_good_one(engine, node, embedder, corpora, index_name,
                                                                cli_env, tmp_path):
    """The CLI: exit 1, the reason, and the previous index serving."""
    from click.testing import CliRunner

    from es_rerank.cli import cli

    old, _ = corpora
    _build(engine, embedder, index_name, old)
    bad = tmp_path / "dup.csv"
    bad.write_text("id,text,text\na,one,two\n")
    r = CliRunner().invoke(cli, ["index", str(bad), "--recreate", "--index", index_name, "--no-progress"],
                           env=cli_env)
    assert r.exit_code == 1, r.output
    assert "was not switched in" in r.output and "still serves its previous version" in r.output, r.output
    assert _serving(node, index_name) == 2


def test_another_alias_blocks_recreate_and_delete(engine, node, embedder, corpora, index_name, cli_env):
    """An index served by a second alias is neither replaced nor deleted through the first; both are named."""
    from click.testing import CliRunner

    from es_rerank.cli import cli

    old, new = corpora
    _build(engine, embedder, index_name, old)
    (concrete,) = node.alias_targets(index_name)
    other = f"{index_name}-other"
    node.put_alias(concrete, other)
    try:
        with pytest.raises(NotOwnedError, match=f"also served by '{other}'"):
            _build(engine, embedder, index_name, new, recreate=True)
        with pytest.raises(NotOwnedError, match=f"also served by '{other}'"):
            delete(engine, index_name)
        r = CliRunner().invoke(cli, ["delete", index_name, "--yes"], env=cli_env)
        assert r.exit_code == 1 and other in r.output, r.output
        r = CliRunner().invoke(cli, ["delete", concrete, "--yes"], env=cli_env)
        assert r.exit_code == 1 and other in r.output and index_name in r.output, r.output
        assert node.alias_targets(other) == [concrete] and node.count(other) == 2
        assert node.alias_targets(index_name) == [concrete]
    finally:
        engine.request("DELETE", f"/{concrete}/_alias/{other}")


def test_leftover_cleanup_trusts_names_and_markers_together(engine, node, embedder, corpora, index_name):
    """An index with a copied marker but another name, or a build's name with another index's marker,
    is not a leftover; a real abandoned build is."""
    from es_rerank.lifecycle import BUILDING, drop_leftovers, marker, new_index_name

    old, _ = corpora
    _build(engine, embedder, index_name, old)
    body = engine.index_body(embedder.dimensions)
    mark = dict(alias=index_name, state=BUILDING, engine=engine.name, embedder="x", embedding_backend="x",
                dims=embedder.dimensions, chunk_tokens=200, chunk_overlap=40, analyzer="standard")
    real, copied, renamed = new_index_name(index_name), f"{index_name}-backup", new_index_name(index_name)
    for name, own in ((real, real), (copied, real), (renamed, f"{index_name}-20200101t000000-abcd")):
        engine.request("PUT", f"/{name}", body={**body, "mappings": {**body["mappings"],
                                                                     "_meta": marker(index=own, **mark)}})
    try:
        assert drop_leftovers(engine, index_name) == [real]
        assert node.exists(copied) and node.exists(renamed) and not node.exists(real)
    finally:
        node.delete_plain(copied)
        node.delete_plain(renamed)
        node.delete_plain(real)


def test_indices_lists_every_index_when_one_is_broken(engine, node, embedder, corpora, index_name, cli_env):
    """One es-rerank index with a broken mapping is reported; the others are listed as usual."""
    from click.testing import CliRunner

    from es_rerank.cli import cli
    from es_rerank.lifecycle import marker

    old, _ = corpora
    _build(engine, embedder, index_name, old)
    broken = f"{index_name}-broken"
    meta = marker(alias=broken, state="ready", engine=engine.name, embedder="x", embedding_backend="x", dims=3,
                  chunk_tokens=200, chunk_overlap=40, analyzer="standard")
    engine.request("PUT", f"/{broken}", body={"mappings": {"_meta": meta, "properties": {"doc_id": {"type": "text"}}}})
    try:
        r = CliRunner().invoke(cli, ["indices"], env=cli_env)
        assert r.exit_code == 0, r.output
        assert index_name in r.output and f"{broken}: cannot be read" in r.output, r.output
    finally:
        node.delete_plain(broken)
