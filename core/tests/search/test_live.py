"""Live searches (§6.8, P-45): windows follow every change, with ENTER/UPDATE/LEAVE."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topgun.search.bm25 import BM25Index, SearchError
from topgun.search.live import LiveSearches, SearchChange


def articles(docs: dict[str, Any]) -> BM25Index:
    index = BM25Index(["title", "body"])
    for key, value in docs.items():
        index.set(key, value)
    return index


def test_enter_update_leave() -> None:
    docs: dict[str, Any] = {"a": {"title": "merkle trees"}, "b": {"title": "vector clocks"}}
    index = articles(docs)
    live: LiveSearches[str] = LiveSearches()
    first = live.subscribe("s", "articles", index, "merkle")
    assert [hit.key for hit in first.hits] == ["a"]

    docs["c"] = {"title": "merkle proofs", "body": "merkle merkle"}
    index.set("c", docs["c"])
    (sub, changes), *rest = live.apply("articles", {"c"}, index, docs.__getitem__)
    assert sub == "s"
    assert not rest
    assert [(c.type, c.key) for c in changes] == [("ENTER", "c"), ("UPDATE", "a")]
    assert changes[0].value == docs["c"]
    assert changes[0].matched_terms == ["merkl"]

    del docs["a"]
    index.delete("a")
    changes = dict(live.apply("articles", {"a"}, index, docs.__getitem__))["s"]
    assert changes[0] == SearchChange("LEAVE", "a", None, changes[0].score, ["merkl"])
    assert [c.type for c in changes] == ["LEAVE", "UPDATE"]  # c's score moved with N


def test_a_changed_document_that_keeps_its_score_is_an_update() -> None:
    docs = {"a": {"title": "merkle", "body": "x1"}}
    index = articles(docs)
    live: LiveSearches[str] = LiveSearches()
    live.subscribe("s", "m", index, "merkle")
    docs["a"] = {"title": "merkle", "body": "x2"}
    index.set("a", docs["a"])
    assert dict(live.apply("m", {"a"}, index, docs.__getitem__)) == {
        "s": [SearchChange("UPDATE", "a", docs["a"], pytest.approx(0.2876820724517809), ["merkl"])]
    }
    assert dict(live.apply("m", set(), index, docs.__getitem__)) == {}


def test_limit_windows_and_other_maps() -> None:
    docs = {f"d{i}": {"title": "sync " * (i + 1)} for i in range(4)}
    index = articles(docs)
    live: LiveSearches[str] = LiveSearches()
    first = live.subscribe("top", "m", index, "sync", limit=2)
    assert first.total_count == 4
    live.subscribe("elsewhere", "other", index, "sync")
    docs["d9"] = {"title": "sync " * 20}
    index.set("d9", docs["d9"])
    changes = dict(live.apply("m", {"d9"}, index, docs.__getitem__))
    assert set(changes) == {"top"}
    assert [(c.type, c.key) for c in changes["top"] if c.type != "UPDATE"] == [
        ("LEAVE", first.hits[1].key),
        ("ENTER", "d9"),
    ]


def test_unsubscribe_and_bad_options() -> None:
    index = articles({"a": {"title": "merkle"}})
    live: LiveSearches[str] = LiveSearches()
    with pytest.raises(SearchError):
        live.subscribe("s", "m", index, "merkle", limit=-1)
    assert "s" not in live
    live.subscribe("s", "m", index, "merkle")
    live.unsubscribe("s")
    live.unsubscribe("s")
    assert len(live) == 0
    index.set("b", {"title": "merkle"})
    assert list(live.apply("m", {"b"}, index, lambda k: None)) == []


words = st.sampled_from(["merkle", "tree", "sync", "clock", "the"])
texts = st.lists(words, max_size=6).map(" ".join)
values = st.fixed_dictionaries({}, optional={"title": texts, "body": texts})


@settings(max_examples=60, deadline=None)
@given(
    initial=st.dictionaries(st.sampled_from("abcdef"), values, max_size=6),
    changes=st.lists(st.tuples(st.sampled_from("abcdefg"), st.none() | values), max_size=12),
    query=st.lists(words, min_size=1, max_size=2).map(" ".join),
    limit=st.none() | st.integers(1, 3),
)
def test_client_copy_equals_a_fresh_search_after_every_change(
    initial: dict[str, Any], changes: list[tuple[str, Any]], query: str, limit: int | None
) -> None:
    docs = dict(initial)
    index = articles(docs)
    live: LiveSearches[int] = LiveSearches()
    client = {h.key: h.score for h in live.subscribe(1, "m", index, query, limit=limit).hits}
    for key, value in changes:
        if value is None:
            docs.pop(key, None)
            index.delete(key)
        else:
            docs[key] = value
            index.set(key, value)
        for _, updates in live.apply("m", {key}, index, docs.__getitem__):
            for update in updates:
                if update.type == "LEAVE":
                    assert update.value is None
                    del client[update.key]
                else:
                    assert (update.type == "ENTER") is (update.key not in client)
                    assert update.value == docs[update.key]
                    client[update.key] = update.score
        fresh = {h.key: h.score for h in index.search(query, limit=limit).hits}
        assert client.keys() == fresh.keys()
        assert all(abs(client[k] - fresh[k]) <= 1e-4 for k in fresh)
