"""Reading an object's UID and resourceVersion from its first bytes (pure logic; the layout of the
real API server's answers is checked in tests/core/test_fast_paths.py)."""

from __future__ import annotations

from vkpy.kube import event_head, object_head

POD = (
    b'{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p-1","generateName":"p-","namespace":"ns",'
    b'"uid":"u-1","resourceVersion":"42","creationTimestamp":"2026-01-01T00:00:00Z","labels":{"a":"b"}},'
    b'"spec":{},"status":{}}'
)


def test_the_head_of_an_object_as_the_api_server_writes_it() -> None:
    assert object_head(POD) == ("u-1", "42")
    assert event_head(b'{"type":"MODIFIED","object":' + POD + b"}") == ("MODIFIED", "u-1", "42")
    assert event_head(b'{"type":"DELETED","object":' + POD + b"}") == ("DELETED", "u-1", "42")


def test_anything_laid_out_otherwise_has_no_head() -> None:
    # A nested field before the UID (another writer's order): no guess, the caller decodes.
    nested = (
        b'{"kind":"Pod","apiVersion":"v1","metadata":{"labels":{"uid":"x"},"uid":"u","resourceVersion":"1"}}'
    )
    assert object_head(nested) is None
    # Keys in another order, whitespace, truncation, something else entirely.
    assert (
        object_head(b'{"apiVersion":"v1","kind":"Pod","metadata":{"uid":"u","resourceVersion":"1"}}') is None
    )
    assert object_head(b'{ "kind": "Pod", "apiVersion": "v1", "metadata": {"uid": "u"}}') is None
    assert object_head(POD[:60]) is None
    assert object_head(b"") is None
    assert event_head(b'{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{}}}') is None
    assert event_head(b'{"object":' + POD + b',"type":"MODIFIED"}') is None
