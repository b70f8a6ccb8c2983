"""Versioned tables on disk: the commit log, bank and mosaic tables, history, maintenance, backup."""
from memsvc.store.knowledge_base import KnowledgeBase, StoreConfig  # noqa: F401
