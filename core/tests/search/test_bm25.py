"""The BM25 index: golden score, ranking rules, boosts, incremental updates (hypothesis)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topgun.search.bm25 import BM25Index, SearchError
from topgun.search.tokenizer import analyze

GOLDEN_DOC = {"title": "Merkle trees for sync", "body": "conflict free replicated data rgsihkz"}


def golden_index() -> BM25Index:
    index = BM25Index(["title", "body"])
    index.set("doc-rgsihkz-1", GOLDEN_DOC)
    index.set("doc-rgsihkz-2", {"title": "Vector clocks", "body": "causality tracking explained"})
    return index


def test_reproduces_the_golden_search_responses() -> None:
    # frames 0072-0075: one matching document of two, 8 and 5 terms long
    index = golden_index()
    for query, term in (("merkle", "merkl"), ("rgsihkz", "rgsihkz")):
        result = index.search(query, limit=10)
        assert result.total_count == 1
        (hit,) = result.hits
        assert hit.key == "doc-rgsihkz-1"
        assert hit.score == 0.6333549317576497
        assert hit.matched_terms == [term]


def bm25(
    docs: dict[str, list[str]], terms: list[str], k1: float = 1.2, b: float = 0.75
) -> dict[str, float]:
    """Okapi BM25 straight from its definition, for comparison."""
    n = len(docs)
    avg = sum(len(t) for t in docs.values()) / n
    out: dict[str, float] = {}
    for key, tokens in docs.items():
        counts = Counter(tokens)
        score = 0.0
        for term in dict.fromkeys(terms):
            df = sum(1 for t in docs.values() if term in t)
            if counts[term]:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                tf = counts[term]
                score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(tokens) / avg))
        if score:
            out[key] = score
    return out


words = st.sampled_from(["merkle", "tree", "trees", "sync", "clock", "vector", "data", "the", "x"])
texts = st.lists(words, max_size=8).map(" ".join)
docs = st.dictionaries(
    st.text("abcde", min_size=1, max_size=2),
    st.fixed_dictionaries({}, optional={"title": texts, "body": texts, "other": texts}),
    max_size=12,
)


@settings(max_examples=80, deadline=None)
@given(
    initial=docs,
    changes=st.lists(
        st.tuples(
            st.text("abcde", min_size=1, max_size=2),
            st.none() | docs.map(lambda d: next(iter(d.values()), {})),
        )
    ),
    query=st.lists(words, min_size=1, max_size=3).map(" ".join),
)
def test_incremental_index_equals_definition_and_fresh_build(
    initial: dict[str, Any], changes: list[tuple[str, Any]], query: str
) -> None:
    index = BM25Index(["title", "body"])
    state = dict(initial)
    for key, value in initial.items():
        index.set(key, value)
    for key, value in changes:
        if value is None:
            index.delete(key)
            state.pop(key, None)
        else:
            index.set(key, value)
            state[key] = value
    fresh = BM25Index(["title", "body"])
    for key, value in state.items():
        fresh.set(key, value)
    assert index.search(query) == fresh.search(query)
    tokens = {
        k: [t for f in ("title", "body") for t in analyze(v.get(f, ""))] for k, v in state.items()
    }
    tokens = {k: t for k, t in tokens.items() if t}
    expected = bm25(tokens, analyze(query)) if tokens else {}
    result = index.search(query)
    assert {h.key: h.score for h in result.hits} == pytest.approx(expected)
    assert [h.key for h in result.hits] == sorted(expected, key=lambda k: (-expected[k], k))
    assert len(index) == len(tokens)


def corpus() -> BM25Index:
    index = BM25Index(["title", "body"])
    index.set("a", {"title": "sync sync sync", "body": "intro"})
    index.set("b", {"title": "intro", "body": "sync"})
    index.set("c", {"title": "other", "body": "words here"})
    index.set("d", {"title": "sync", "body": "sync"})
    index.set("e", {"title": "sync", "body": "sync"})
    return index


def test_rank_by_score_then_key_with_total_count_before_limit() -> None:
    # d and e tie (two "sync" in two terms), ahead of a (three in four: saturation, length)
    result = corpus().search("syncing", limit=2)
    assert result.total_count == 4
    assert [h.key for h in result.hits] == ["d", "e"]
    full = corpus().search("syncing")
    assert [h.key for h in full.hits] == ["d", "e", "a", "b"]
    assert full.hits[0].score == full.hits[1].score
    assert full.hits[1].score > full.hits[2].score > full.hits[3].score


def test_min_score_and_max_results() -> None:
    index = corpus()
    scores = [h.score for h in index.search("sync").hits]
    above = index.search("sync", min_score=scores[2])
    assert [h.key for h in above.hits] == ["d", "e", "a"]
    assert above.total_count == 3
    assert len(index.search("sync", max_results=2).hits) == 2
    assert len(index.search("sync", limit=0, max_results=3).hits) == 3


def test_boost_scores_fields_separately() -> None:
    index = corpus()
    title = index.search("sync", boost={"title": 3.0, "body": 0.0})
    assert [h.key for h in title.hits] == ["a", "d", "e"]  # b's only match is in its body
    assert title.total_count == 3
    body = index.search("sync", boost={"title": 0.0})
    assert [h.key for h in body.hits] == ["b", "d", "e"]
    assert body.hits[0].matched_terms == ["sync"]


def test_empty_or_stop_word_queries_find_nothing() -> None:
    index = corpus()
    assert index.search("").total_count == 0
    assert index.search("   ").hits == []
    assert index.search("the and of").total_count == 0
    assert index.search("unknownword").total_count == 0


def test_matched_terms_are_index_terms_in_query_order() -> None:
    index = golden_index()
    (hit,) = index.search("Replicated MERKLE trees tree banana").hits
    assert hit.matched_terms == ["replic", "merkl", "tree"]


def test_documents_without_terms_are_not_indexed() -> None:
    index = BM25Index(["title"])
    index.set("a", {"title": 42})
    index.set("b", "not a map")
    index.set("c", {"title": "the of"})
    index.set("d", {"other": "sync"})
    assert len(index) == 0
    index.set("e", {"title": "sync"})
    index.set("e", {"title": 1})
    assert "e" not in index
    index.delete("missing")
    assert index.terms_of("e") == set()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": -1}, "limit"),
        ({"min_score": float("nan")}, "minScore"),
        ({"boost": {"title": float("inf")}}, "finite"),
        ({"boost": {"title": "x"}}, "number"),
    ],
)
def test_bad_options_raise_search_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SearchError, match=message):
        corpus().search("sync", **kwargs)


@pytest.mark.parametrize(
    ("fields", "kwargs"),
    [([], {}), (["a", "a"], {}), (["a"], {"k1": -1.0}), (["a"], {"b": 2.0})],
)
def test_bad_configuration(fields: list[str], kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        BM25Index(fields, **kwargs)
