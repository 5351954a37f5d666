"""Full-text search: topgun's BM25 on 10,000 documents, and side by side with `bm25s`.

    python3 dev.py run python bench/search.py [--docs N] [--queries Q] [--repeat R]

1. topgun: index N documents (default 10,000; a Zipf-distributed vocabulary of 5,000 words,
   30 to 120 words each) with `BM25Index`, then run Q queries (default 500; 1 to 3 words
   drawn from the same distribution) with `limit=10`: p50 / p95 latency (target p50 < 10 ms)
   and queries/s.
2. The same corpus and queries with `bm25s` (k1 = 1.2, b = 0.75, `method="robertson"`, the
   classic BM25 topgun uses), in the same run: queries/s one query at a time (as a server
   answers SEARCH) including query tokenization, and topgun ÷ bm25s as a ratio; plus bm25s's
   batch mode (all queries in one call) for reference. Both get the same tokens (topgun's
   analyzer: lowercase, stop words, Porter stemmer) so the comparison is of the ranking
   engines, and the overlap of their top-10 key sets is printed as a sanity check (BM25
   variants differ slightly in IDF).

Fixed seeds; each throughput figure is the best of R runs.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from typing import Any

import bm25s

from topgun.search import BM25Index, analyze


def zipf_words(rng: random.Random, vocabulary: list[str], weights: list[float], k: int) -> str:
    return " ".join(rng.choices(vocabulary, weights=weights, k=k))


def corpus(n: int, queries: int) -> tuple[list[str], list[str]]:
    rng = random.Random(17)
    syllables = ["ka", "lo", "mi", "ne", "tor", "vel", "syn", "qua", "dre", "pix", "hal", "zen"]
    vocabulary = sorted(
        {"".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(8_000)}
    )[:5_000]
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    docs = [zipf_words(rng, vocabulary, weights, rng.randint(30, 120)) for _ in range(n)]
    # Queries favour the middle of the distribution: neither stop-word-like nor unseen.
    middle = vocabulary[20:2_000]
    texts = [" ".join(rng.sample(middle, rng.randint(1, 3))) for _ in range(queries)]
    return docs, texts


def bench_topgun(docs: list[str], queries: list[str], repeat: int) -> tuple[float, list[Any]]:
    start = time.perf_counter()
    index = BM25Index(["text"])
    for i, text in enumerate(docs):
        index.set(f"d{i:05}", {"text": text})
    print(f"  topgun: indexed {len(docs):,} documents in {time.perf_counter() - start:.2f} s")
    latencies = []
    results: list[Any] = []
    for text in queries:
        t0 = time.perf_counter()
        result = index.search(text, limit=10)
        latencies.append(time.perf_counter() - t0)
        results.append({hit.key for hit in result.hits})
    latencies.sort()
    p95 = latencies[int(len(latencies) * 0.95)]
    print(
        f"  topgun: search limit 10: p50 {statistics.median(latencies) * 1e3:.3f} ms, "
        f"p95 {p95 * 1e3:.3f} ms — target p50 < 10 ms"
    )
    best = min(_timed(lambda: [index.search(q, limit=10) for q in queries]) for _ in range(repeat))
    return len(queries) / best, results


def bench_bm25s(docs: list[str], queries: list[str], repeat: int) -> tuple[float, list[Any]]:
    start = time.perf_counter()
    retriever = bm25s.BM25(k1=1.2, b=0.75, method="robertson")
    retriever.index([analyze(text) for text in docs], show_progress=False)
    print(f"  bm25s:  indexed {len(docs):,} documents in {time.perf_counter() - start:.2f} s")
    vocabulary = retriever.vocab_dict

    def run(text: str) -> Any:
        tokens = [t for t in analyze(text) if t in vocabulary]
        if not tokens:
            return []
        ids, _ = retriever.retrieve([tokens], k=10, show_progress=False, n_threads=1)
        return ids[0]

    results = [{f"d{int(i):05}" for i in run(text)} for text in queries]
    best = min(_timed(lambda: [run(q) for q in queries]) for _ in range(repeat))

    def batched() -> Any:
        tokens = [
            [t for t in analyze(q) if t in vocabulary] or [next(iter(vocabulary))] for q in queries
        ]
        return retriever.retrieve(tokens, k=10, show_progress=False, n_threads=1)

    best_batched = min(_timed(batched) for _ in range(repeat))
    print(
        f"  bm25s:  {len(queries) / best_batched:,.0f} queries/s when all {len(queries)} "
        "queries go in one retrieve call (its batch mode; not how a server answers SEARCH)"
    )
    return len(queries) / best, results


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, bm25s {bm25s.__version__}")
    docs, queries = corpus(args.docs, args.queries)
    print(f"BM25 on {args.docs:,} documents, {args.queries} queries (limit 10)")
    ours, our_hits = bench_topgun(docs, queries, args.repeat)
    theirs, their_hits = bench_bm25s(docs, queries, args.repeat)
    overlap = statistics.mean(
        len(a & b) / max(len(a | b), 1) for a, b in zip(our_hits, their_hits, strict=True)
    )
    print(f"  topgun: {ours:,.0f} queries/s")
    print(f"  bm25s:  {theirs:,.0f} queries/s (one query per retrieve call)")
    print(f"  ratio topgun / bm25s: {ours / theirs:.2f}x (top-10 overlap {overlap:.0%})")


if __name__ == "__main__":
    main()
