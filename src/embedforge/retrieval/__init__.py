"""Texts to vectors to rankings, shared by every stage that embeds or ranks.

``text`` (normalising and splitting text), ``loading`` (a model folder -> a SentenceTransformer),
``encode`` (the one place texts become vectors), ``search`` (FAISS), ``ranking`` (rankings of chunks and
documents for a set of queries), ``beir`` (BEIR folders in and out), ``stats`` (paired bootstrap statistics).
"""

from embedforge._legacy import moved_attribute

__getattr__ = moved_attribute(__name__, "embedforge.retrieval.ranking")
