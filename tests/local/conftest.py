"""The ``local`` fixture: a LocalTransport on a temporary state folder, running real processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from local_helpers import Local, clean_up, new_transport


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[Local]:
    transport, node = new_transport(tmp_path / "state")
    await transport.node_start(node)
    try:
        yield Local(transport, node)
    finally:
        await clean_up(transport, node)
