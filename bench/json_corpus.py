"""A realistic JSON corpus for the codec figures: app records of four kinds.

User profiles, orders with line items, chat messages and tasks, 150 to 600 bytes of
msgpack each (340 on average), with the repeated field names, enumerations,
identifiers, timestamps and free text of real application data. Deterministic from a
seed, so every run (and the compression test, which loads this file) sees the same
values.
"""

from __future__ import annotations

import random
from typing import Any

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "oil",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "order",
    "ship",
    "payment",
    "invoice",
    "customer",
    "delivery",
    "update",
    "release",
    "meeting",
    "project",
    "review",
    "deadline",
    "budget",
    "design",
    "launch",
    "team",
    "sprint",
    "ticket",
    "bug",
    "feature",
    "deploy",
    "server",
    "client",
    "sync",
    "offline",
    "cache",
    "database",
    "backup",
    "report",
    "quarter",
    "revenue",
    "growth",
    "plan",
]
FIRST = [
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Margaret",
    "Dennis",
    "Barbara",
    "Ken",
    "Radia",
    "Edsger",
    "Frances",
    "John",
    "Anita",
]
LAST = [
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Ritchie",
    "Liskov",
    "Thompson",
    "Perlman",
    "Dijkstra",
]
CITIES = [
    ("Berlin", "DE"),
    ("Paris", "FR"),
    ("Lisbon", "PT"),
    ("Austin", "US"),
    ("Osaka", "JP"),
    ("Toronto", "CA"),
]
PRODUCTS = [
    ("SKU-10023", "USB-C cable 2m", 9.99),
    ("SKU-20817", "Mechanical keyboard", 89.0),
    ("SKU-31002", "27-inch monitor", 279.5),
    ("SKU-40440", "Laptop stand", 34.9),
    ("SKU-51234", "Noise-cancelling headphones", 199.0),
    ("SKU-60001", "Webcam 1080p", 49.99),
]


def _sentence(rng: random.Random, low: int = 6, high: int = 18) -> str:
    words = rng.choices(WORDS, k=rng.randint(low, high))
    return " ".join(words).capitalize() + "."


def _iso(rng: random.Random) -> str:
    day = f"2026-{rng.randint(1, 12):02}-{rng.randint(1, 28):02}"
    clock = f"{rng.randint(0, 23):02}:{rng.randint(0, 59):02}:{rng.randint(0, 59):02}"
    return f"{day}T{clock}.{rng.randint(0, 999):03}Z"


def _id(rng: random.Random, prefix: str) -> str:
    return f"{prefix}_{rng.getrandbits(64):016x}"


def _user(rng: random.Random) -> dict[str, Any]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    city, country = rng.choice(CITIES)
    return {
        "id": _id(rng, "usr"),
        "name": f"{first} {last}",
        "email": f"{first.lower()}.{last.lower()}@example.com",
        "address": {
            "street": f"{rng.randint(1, 250)} {rng.choice(WORDS).capitalize()} Street",
            "city": city,
            "country": country,
            "zip": f"{rng.randint(10000, 99999)}",
        },
        "preferences": {
            "theme": rng.choice(["light", "dark", "system"]),
            "language": rng.choice(["en", "de", "fr", "pt", "ja"]),
            "notifications": {"email": rng.random() < 0.7, "push": rng.random() < 0.5},
        },
        "roles": rng.sample(["USER", "EDITOR", "ADMIN", "BILLING"], k=rng.randint(1, 2)),
        "createdAt": _iso(rng),
        "lastSeenAt": _iso(rng),
    }


def _order(rng: random.Random) -> dict[str, Any]:
    items = []
    for sku, name, price in rng.sample(PRODUCTS, k=rng.randint(1, 4)):
        items.append({"sku": sku, "name": name, "quantity": rng.randint(1, 3), "unitPrice": price})
    subtotal = round(sum(i["quantity"] * i["unitPrice"] for i in items), 2)
    city, country = rng.choice(CITIES)
    return {
        "id": _id(rng, "ord"),
        "customerId": _id(rng, "usr"),
        "status": rng.choice(["pending", "paid", "shipped", "delivered", "cancelled"]),
        "items": items,
        "totals": {"subtotal": subtotal, "tax": round(subtotal * 0.19, 2), "currency": "EUR"},
        "shipping": {
            "method": rng.choice(["standard", "express"]),
            "city": city,
            "country": country,
        },
        "createdAt": _iso(rng),
        "updatedAt": _iso(rng),
    }


def _message(rng: random.Random) -> dict[str, Any]:
    return {
        "id": _id(rng, "msg"),
        "room": f"room-{rng.randint(1, 40)}",
        "author": _id(rng, "usr"),
        "text": " ".join(_sentence(rng) for _ in range(rng.randint(1, 4))),
        "mentions": [_id(rng, "usr") for _ in range(rng.randint(0, 2))],
        "reactions": {
            e: rng.randint(1, 9) for e in rng.sample(["+1", "heart", "eyes"], k=rng.randint(0, 2))
        },
        "edited": rng.random() < 0.1,
        "sentAt": _iso(rng),
    }


def _task(rng: random.Random) -> dict[str, Any]:
    return {
        "id": _id(rng, "tsk"),
        "title": _sentence(rng, 3, 8),
        "description": " ".join(_sentence(rng) for _ in range(rng.randint(0, 3))),
        "done": rng.random() < 0.4,
        "priority": rng.choice(["low", "medium", "high", "urgent"]),
        "assignee": _id(rng, "usr"),
        "labels": rng.sample(["backend", "frontend", "docs", "ops", "bug", "feature"], k=2),
        "subtasks": [
            {"title": _sentence(rng, 2, 6), "done": rng.random() < 0.5}
            for _ in range(rng.randint(0, 4))
        ],
        "dueAt": _iso(rng),
    }


KINDS = {"users": _user, "orders": _order, "messages": _message, "tasks": _task}


def corpus(count: int, seed: int = 7) -> list[tuple[str, str, dict[str, Any]]]:
    """`count` (map, key, value) triples, the four kinds in turn."""
    rng = random.Random(seed)
    names = list(KINDS)
    return [
        (names[i % 4], f"{names[i % 4][:-1]}-{i:07}", KINDS[names[i % 4]](rng))
        for i in range(count)
    ]
