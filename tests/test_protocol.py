"""KnowledgeBase and MemoryClient conform to memsvc.core.protocol, signatures included, so the
CLI and the banks can hold either one (and KnowledgeBase.checkout / MemoryClient.pinned alike)."""
import inspect

import pytest

from clients.client import MemoryClient, PinnedClient
from memsvc.core.protocol import KnowledgeStore, PinnedStore
from memsvc.store.knowledge_base import Checkout, KnowledgeBase


def members(protocol):
    return sorted(name for name in vars(protocol) if not name.startswith("_")
                  and (callable(vars(protocol)[name]) or isinstance(vars(protocol)[name], property)))


def shared_parameters(method):
    """The parameters a caller of the protocol may pass: every one but keyword-only extras with defaults."""
    return [p.replace(annotation=inspect.Parameter.empty) for p in inspect.signature(method).parameters.values()
            if not (p.kind == p.KEYWORD_ONLY and p.default is not p.empty)]


@pytest.mark.parametrize("protocol, implementations", [
    (KnowledgeStore, [KnowledgeBase, MemoryClient]),
    (PinnedStore, [Checkout, PinnedClient]),
])
def test_both_stores_conform_to_the_protocol_signatures_included(protocol, implementations):
    assert members(protocol)
    for cls in implementations:
        for name in members(protocol):
            wanted = vars(protocol)[name]
            got = inspect.getattr_static(cls, name, None)
            assert got is not None, f"{cls.__name__}.{name} is missing"
            if isinstance(wanted, property):
                assert isinstance(got, property), f"{cls.__name__}.{name} is not a property"
                continue
            assert shared_parameters(got) == shared_parameters(wanted), f"{cls.__name__}.{name}{inspect.signature(got)}"


def test_a_knowledge_base_and_its_checkout_are_instances(kb):
    assert isinstance(kb, KnowledgeStore)
    assert isinstance(kb.checkout(), PinnedStore)
