"""Build-time training: fine-tune a cross-encoder on your judgments or documents, distill it.

Needs the ``train`` extra (torch, sentence-transformers with datasets and accelerate). Query-time
code never imports this package.

- :mod:`.data`: groups, hard negatives, pseudo-queries, split rules (no model, no torch).
- :mod:`.prepare`: judged or synthetic groups and dev queries from the index; every refusal.
- :mod:`.trainer`: ``CrossEncoderTrainer`` with early stopping, the atomic model folder and its card.
- :mod:`.distill`: a shallower student trained on the teacher's logits; fidelity and speed-up.

Example:
    >>> from es_rerank.training.data import pseudo_query
    >>> pseudo_query("", "Vitamin D lowers the risk of falls. Trials disagree.")
    'Vitamin D lowers the risk of falls.'
"""

from .data import DevQuery, Group, hard_negatives, pseudo_query
from .prepare import Prepared, Split

__all__ = ["DevQuery", "Group", "Prepared", "Split", "hard_negatives", "pseudo_query"]
