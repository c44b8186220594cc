"""What a client of ``es-rerank serve`` sends, shared by the Elasticsearch and OpenSearch server tests.

``sample_chunks`` gives the bulk actions of the sample articles exactly as ``es-rerank index``
would write them (so the client itself indexes through the passthrough), and
``hybrid_retriever`` the drop-in request: ``text_similarity_reranker`` over ``rrf`` of
``standard`` + ``knn`` with ``query_vector_builder``.
"""

import json

from es_rerank.chunking import Chunker
from es_rerank.engines.base import num_candidates_for
from es_rerank.streaming import chunk_id
from es_rerank.types import passage_text

from conftest import SAMPLE

CHUNK_TOKENS, CHUNK_OVERLAP = 48, 8


def sample_chunks(embedder, index: str) -> tuple[list[dict], int]:
    """Bulk actions for the sample articles' chunks in ``index``, and the number of articles."""
    chunker = Chunker(embedder.offsets, size=CHUNK_TOKENS, overlap=CHUNK_OVERLAP)
    docs = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    actions = []
    for doc in docs:
        chunks = chunker.split(doc["text"])
        vectors = embedder.embed_documents([passage_text(doc["title"], c.text) for c in chunks])
        for n, (c, vector) in enumerate(zip(chunks, vectors)):
            actions.append({"_index": index, "_id": chunk_id(doc["id"], n), "_source": {
                "doc_id": doc["id"], "chunk": n, "char_start": c.char_start, "char_end": c.char_end,
                "title": doc["title"], "text": c.text, "metadata": doc.get("metadata", {}),
                "embedding": [float(x) for x in vector]}})
    return actions, len(docs)


def hybrid_retriever(query, depth, **reranker):
    """The drop-in retriever: rerank the RRF of BM25 and kNN (the query embedded by the server)."""
    return {"text_similarity_reranker": {
        "retriever": {"rrf": {"retrievers": [
            {"standard": {"query": {"bool": {"must": [
                {"multi_match": {"query": query, "fields": ["text", "title"]}}]}}}},
            {"knn": {"field": "embedding", "k": depth, "num_candidates": num_candidates_for(depth),
                     "query_vector_builder": {"text_embedding": {"model_text": query}}}},
        ], "rank_constant": 60, "rank_window_size": depth}},
        "field": "text", "inference_text": query, "rank_window_size": depth, **reranker}}
