"""Fingerprints started ahead (pgmeta_extractor.ahead): what is kept, and what never is."""

from __future__ import annotations

import threading

import pytest

from pgmeta_extractor.ahead import FingerprintsAhead
from pgmeta_shared.events import SourceSpec

SOURCE = SourceSpec(host="db.invalid", port=5432, username="u", database="shop")
PARAMS: dict[str, list[str]] = {"schema_include": [], "schema_exclude": []}


def test_a_query_whose_thread_cannot_start_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept, its future would never complete, and the extract stage taking it would wait forever."""

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    ahead = FingerprintsAhead()
    with pytest.raises(RuntimeError):
        ahead.start("r1", SOURCE, lambda: "pw", "shop", PARAMS)
    assert ahead.take("r1", "shop", PARAMS) is None
