"""The first stage, written once: a retrieval plan that the client, the server and evaluation run alike.

A :class:`Plan` is a retriever tree (:class:`~es_rerank.types.Standard`,
:class:`~es_rerank.types.Knn`, :class:`~es_rerank.types.Rrf`), the index it searches, the
``_source`` it asks for and the fusion setting. :func:`text_plan` builds one for a plain-text
query (what :meth:`es_rerank.Searcher.retrieve` runs); the server parses a request's retriever
into one (:mod:`es_rerank.server.translate`). Then:

* :func:`resolve` embeds every ``knn`` text (each distinct text once);
* :func:`choose_fusion` is the one fusion decision: on the server where the cluster has it, the
  engine can express the tree and the setting allows, else client-side RRF
  (:func:`es_rerank.fusion.fuse_hits`);
* :func:`run` sends the engine's bodies (every body is built in :mod:`es_rerank.engines`) and
  returns the hits, the raw responses and the fusion used.

Example:
    >>> plan = text_plan("refund", index="help", mode="hybrid", depth=20)
    >>> [type(c).__name__ for c in plan.root.children], plan.root.window
    (['Standard', 'Knn'], 20)
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

from .config import SEARCH_MODES
from .embedding import Embedder
from .engines import Engine
from .errors import ConfigError, ValidationError
from .fusion import fuse_hits
from .types import Hit, Knn, Node, Rrf, Standard

logger = logging.getLogger(__name__)

FUSIONS = ("auto", "server", "client")

Reader = Callable[[Mapping[str, Any]], "tuple[list[Hit], dict[str, Mapping[str, Any]]]"]
"""Turns one search response into hits (ranks from 1) and the raw hits by the hits' ``chunk_id``."""


@dataclass(frozen=True)
class Plan:
    """What the first stage searches, and how it may fuse.

    Attributes:
        root: The retriever tree.
        index: The index (or expression) searched, as it goes in the path.
        source: The ``_source`` each search asks for; None: the whole ``_source``.
        fusion: ``auto``, ``server`` or ``client``. Defaults to ``auto``.

    Raises:
        ConfigError: An unknown ``fusion``.
    """

    root: Node
    index: str
    source: Any = None
    fusion: str = "auto"

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}", setting="fusion")


@dataclass(frozen=True)
class Retrieved:
    """The first stage's answer.

    Attributes:
        hits: At most ``window`` hits, in retrieval order.
        raw: The raw hits by ``chunk_id`` (the first response holding one supplies it).
        responses: The cluster's search responses.
        fusion: ``server`` or ``client`` when the root is an ``rrf``, else None.
        took_ms: The cluster's own ``took`` (one search, or the multi-search).
    """

    hits: list[Hit]
    raw: dict[str, Mapping[str, Any]]
    responses: list[Mapping[str, Any]]
    fusion: str | None
    took_ms: float = 0.0


def source_fields(needed: Sequence[str], includes: Sequence[str] = ()) -> dict[str, Any]:
    """The ``_source`` filter asking for ``needed`` and ``includes`` (one spelling for every caller)."""
    return {"includes": sorted(set(needed) | set(includes))}


def text_plan(query: str, *, index: str, mode: str, depth: int, rank_constant: int = 60,
              clauses: Sequence[Mapping[str, Any]] = (), source: Any = None, fusion: str = "auto") -> Plan:
    """The plan of a plain-text query: BM25, kNN (the text embedded by :func:`resolve`) or both fused.

    Each retriever takes ``depth`` results, under the filter clauses.

    Raises:
        ValidationError: An unknown ``mode``.
        ConfigError: An unknown ``fusion``.
    """
    if mode == "bm25":
        root: Node = Engine.bm25_retriever(query, clauses)
    elif mode == "knn":
        root = Engine.knn_retriever(depth, clauses, text=query)
    elif mode == "hybrid":
        root = Engine.hybrid_retriever(query, depth=depth, rank_constant=rank_constant, clauses=clauses, text=query)
    else:
        raise ValidationError(f"mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}", field="mode")
    return Plan(root, index, source, fusion)


def resolve_vectors(node: Node, embedder: Embedder, cache: dict[str, tuple[float, ...]] | None = None) -> Node:
    """The tree with every unresolved ``knn`` text embedded (each distinct text once)."""
    cache = {} if cache is None else cache
    if isinstance(node, Rrf):
        return dataclasses.replace(node, children=tuple(resolve_vectors(c, embedder, cache) for c in node.children))
    if isinstance(node, Knn) and node.vector is None:
        if node.text is None:
            raise ValidationError(f"knn on {node.field!r} has neither a vector nor a text to embed", field="knn")
        if node.text not in cache:
            cache[node.text] = tuple(float(x) for x in embedder.embed_query(node.text))
        return dataclasses.replace(node, vector=cache[node.text])
    return node


def resolve(plan: Plan, embedder: Embedder) -> Plan:
    """``plan`` with its query vectors embedded by ``embedder``."""
    return dataclasses.replace(plan, root=resolve_vectors(plan.root, embedder))


def leaves(node: Node, size: int) -> Iterator[tuple[Standard | Knn, int]]:
    """The ``standard``/``knn`` retrievers of a tree, depth first, each with the hits it fetches
    (its enclosing ``rrf``'s window, or ``size`` at the top)."""
    if isinstance(node, Rrf):
        for child in node.children:
            yield from leaves(child, node.window)
    else:
        yield node, size


def fuse(node: Node, lists: Iterator[list[Hit]]) -> list[Hit]:
    """Client-side RRF over a tree whose leaves' hits come from ``lists`` in depth-first order."""
    if not isinstance(node, Rrf):
        return next(lists)
    return fuse_hits([fuse(c, lists) for c in node.children], rank_constant=node.rank_constant, window=node.window)


def choose_fusion(engine: Engine, plan: Plan) -> str | None:
    """The one fusion decision: None for a single retriever, else ``server`` or ``client``.

    ``server`` where the setting allows it, the engine can express the tree in one body and
    the cluster has server-side fusion; ``client`` otherwise.

    Raises:
        ConfigError: ``fusion="server"`` where the cluster cannot fuse (or not this tree).
    """
    if not isinstance(plan.root, Rrf):
        return None
    if plan.fusion == "client":
        return "client"
    if not engine.can_fuse(plan.root):
        if plan.fusion == "server":
            raise ConfigError(f"{engine.display_name} cannot fuse this retriever tree on the server: "
                              "use fusion client or auto", setting="fusion")
        return "client"
    available = engine.server_fusion()
    if plan.fusion == "server" and not available:
        raise ConfigError(engine.server_fusion_hint, setting="fusion")
    return "server" if available else "client"


def chunk_reader(engine: Engine) -> Reader:
    """Hits of an es-rerank index (:meth:`Engine.hits`) and the raw hits by ``_id``."""
    def read(resp: Mapping[str, Any]) -> tuple[list[Hit], dict[str, Mapping[str, Any]]]:
        raw: dict[str, Mapping[str, Any]] = {}
        for h in resp["hits"]["hits"]:
            raw.setdefault(h["_id"], h)
        return engine.hits(resp), raw

    return read


def run(engine: Engine, plan: Plan, *, window: int, headers: Mapping[str, str] | None = None,
        read: Reader | None = None) -> Retrieved:
    """Search the cluster for ``plan`` (vectors resolved) and return at most ``window`` hits.

    Args:
        engine: The engine; it builds every body.
        plan: The plan, its ``knn`` vectors resolved (:func:`resolve`).
        window: Hits to return (the top level's size).
        headers: Headers every request carries (the server's caller's credentials). Defaults to none.
        read: How to read a response. Defaults to :func:`chunk_reader` (an es-rerank index).

    Raises:
        ConfigError: See :func:`choose_fusion`.
        ValidationError: A retriever option the engine does not take.
        PartialResultsError: Some shards did not answer (:meth:`Engine.check_shards`).
        IndexMissingError, ClusterError: From the cluster.
    """
    read = chunk_reader(engine) if read is None else read
    fusion = choose_fusion(engine, plan)
    if fusion == "server" and isinstance(plan.root, Rrf):
        resp = engine.search(plan.index, engine.fused_body(plan.root, size=window, source=plan.source),
                             headers=headers)
        engine.check_shards(plan.index, [resp])
        hits, raw = read(resp)
        return Retrieved(hits[:window], raw, [resp], fusion, float(resp.get("took", 0)))
    bodies = [engine.leaf_body(node, size=size, source=plan.source) for node, size in leaves(plan.root, window)]
    if len(bodies) == 1:
        responses = [engine.search(plan.index, bodies[0], headers=headers)]
        took = responses[0].get("took", 0)
    else:
        took, responses = engine.msearch(plan.index, bodies, headers=headers)
    engine.check_shards(plan.index, responses)
    lists, raw = [], {}
    for resp in responses:
        hits, found = read(resp)
        lists.append(hits)
        for key, value in found.items():
            raw.setdefault(key, value)
    fused = fuse(plan.root, iter(lists))
    return Retrieved(fused[:window], raw, list(responses), fusion, float(took))


__all__ = ["FUSIONS", "Plan", "Retrieved", "text_plan", "source_fields", "resolve", "resolve_vectors", "leaves",
           "fuse", "choose_fusion", "chunk_reader", "run"]
