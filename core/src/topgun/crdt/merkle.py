"""The Merkle trie both map types sync with (PROTOCOL.md §3.3–3.4).

A depth-3 trie over hex digits: a key lives in the leaf named by the first three hex
digits of its FNV-1a hash; a leaf's hash is the 32-bit wrapping sum of its keys' item
hashes and an inner node's the sum of its children's, so the root is the sum of all
item hashes and two replicas compare whole maps by one number, then narrow a difference
down root → buckets → leaf.

The trie is kept up to date incrementally but lazily: a map *touches* a key when its
record changes (O(1), no hashing), and the next read of a hash re-hashes only the
touched keys and moves their leaves' sums by the difference. That keeps hashing out of
the merge loop, where it would cost more than the merge itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from topgun.crdt.hashing import fnv1a32

ItemHasher = Callable[[str, int], int | None]
"""`(key, fnv1a32(key)) -> item hash`, or None when the key no longer belongs in the trie.

The key's own FNV-1a hash is passed because it is the FNV state after the key's code
units: an item hash that starts with the key can continue from it.
"""

DEPTH = 3
"""Leaves sit at depth 3: at most 16³ = 4096 of them."""

HEX_DIGITS = "0123456789abcdef"
_MASK = 0xFFFFFFFF
_PATH = re.compile(r"[0-9a-f]{0,3}")


def check_path(path: str) -> str:
    """Return `path` if it is a trie path (0–3 lowercase hex digits), else raise ValueError."""
    if not isinstance(path, str) or _PATH.fullmatch(path) is None:
        raise ValueError(f"trie path must be 0 to 3 lowercase hex digits, got {path!r}")
    return path


class MerkleTree:
    """Depth-3 hex trie of wrapping 32-bit sums, fed item hashes by `item_hash`.

    The owning map calls `touch(key)` whenever the key's record changes; reads
    (`root_hash`, `node_hash`, `buckets`, `keys_at`, `diff`) first re-hash the touched
    keys. A node, once created, stays (with hash 0 if its keys leave); a key leaves only
    when `item_hash` returns None for it, i.e. when GC pruned it.
    """

    __slots__ = ("_item_hash", "_key_hashes", "_leaves", "_nodes", "_pending")

    def __init__(self, item_hash: ItemHasher) -> None:
        self._item_hash = item_hash
        self._nodes: dict[str, int] = {"": 0}
        self._leaves: dict[str, dict[str, int]] = {}
        self._key_hashes: dict[str, int] = {}
        self._pending: set[str] = set()

    def touch(self, key: str) -> None:
        """Note that `key`'s record changed; its item hash is recomputed on the next read."""
        self._pending.add(key)

    def touch_many(self, keys: Iterable[str]) -> None:
        """`touch` every key in `keys`."""
        self._pending.update(keys)

    def refresh(self) -> None:
        """Re-hash the touched keys now (reads do this themselves; call it to choose when)."""
        pending = self._pending
        if not pending:
            return
        self._pending = set()
        nodes, leaves, key_hashes, item_hash = (
            self._nodes,
            self._leaves,
            self._key_hashes,
            self._item_hash,
        )
        deltas: dict[str, int] = {}
        for key in pending:
            kh = key_hashes.get(key)
            if kh is None:
                kh = fnv1a32(key)
            leaf = f"{kh >> 20:03x}"
            items = leaves.get(leaf)
            new = item_hash(key, kh)
            if new is None:
                if items is None or key not in items:
                    continue
                delta = -items.pop(key)
                del key_hashes[key]
            else:
                if items is None:
                    items = leaves[leaf] = {}
                    nodes.setdefault(leaf[:1], 0)
                    nodes.setdefault(leaf[:2], 0)
                    nodes.setdefault(leaf, 0)
                delta = new - items.get(key, 0)
                items[key] = new
                key_hashes[key] = kh
            if delta:
                deltas[leaf] = deltas.get(leaf, 0) + delta
        for leaf, delta in deltas.items():
            for path in (leaf, leaf[:2], leaf[:1], ""):
                nodes[path] = (nodes[path] + delta) & _MASK

    @property
    def root_hash(self) -> int:
        """Sum of all item hashes mod 2³² (0 for an empty map)."""
        self.refresh()
        return self._nodes[""]

    def node_hash(self, path: str) -> int:
        """Hash of the node at `path` (0 if there is no such node)."""
        check_path(path)
        self.refresh()
        return self._nodes.get(path, 0)

    def buckets(self, path: str) -> dict[str, int]:
        """`{hex digit: hash}` of the existing children of the node at `path` (`{}` if none)."""
        check_path(path)
        self.refresh()
        if len(path) == DEPTH:
            return {}
        nodes = self._nodes
        return {d: nodes[path + d] for d in HEX_DIGITS if path + d in nodes}

    def keys_at(self, path: str) -> list[str]:
        """The keys in the leaf at `path`, sorted (`[]` for an inner node or a missing leaf)."""
        check_path(path)
        self.refresh()
        return sorted(self._leaves.get(path, ()))

    def __len__(self) -> int:
        """Number of keys in the trie."""
        self.refresh()
        return len(self._key_hashes)

    def diff(self, other: MerkleTree) -> list[str]:
        """Leaf paths whose hashes differ between the two tries, found root-to-leaf.

        This is the walk a syncing client does with `buckets` (PROTOCOL.md §6.3): descend
        only into children whose hashes differ, a missing child counting as hash 0.
        """
        self.refresh()
        other.refresh()
        mine, theirs = self._nodes, other._nodes
        differing: list[str] = []
        stack = [""]
        while stack:
            path = stack.pop()
            if mine.get(path, 0) == theirs.get(path, 0):
                continue
            if len(path) == DEPTH:
                differing.append(path)
                continue
            for d in HEX_DIGITS:
                child = path + d
                if child in mine or child in theirs:
                    stack.append(child)
        differing.sort()
        return differing
