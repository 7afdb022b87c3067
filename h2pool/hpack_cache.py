"""HPACK coders that reuse the result for a header block seen before.

HPACK decoding is the largest single cost of a small request in h2 (about
40% of a lean client's CPU, half of it Huffman), and request encoding is
next. Yet a service sends the same few header lists and gets the same few
response header blocks over and over: servers either reference entries
already in the dynamic table (nghttpd, hypercorn: ``88c1c0bf...``) or,
like nginx, set the table size to 0 and send literals.

A block's meaning depends only on its bytes and on the dynamic table, so a
result may be reused when both are the same and the block itself did not
change the table. :class:`VersionedHeaderTable` counts real changes to the
table (an entry added to a zero-sized table changes nothing, which is what
makes nginx's blocks reusable). Blocks that change the table are never
cached, so replaying a cached block cannot leave the table out of step with
the peer's.

This relies on hpack 4's ``HeaderTable.add`` and ``maxsize`` being the only
ways the coders change their table; ``tests/test_fuzz.py`` checks
cached and uncached coders stay in agreement over random sequences.
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hpack.struct import HeaderTuple
from hpack.table import HeaderTable, table_entry_size

#: Blocks remembered per connection. Responses repeat a handful of shapes;
#: a small bound keeps 10,000 idle connections' caches from adding up.
CACHE_ENTRIES = 16

HeaderList = list[HeaderTuple]


class VersionedHeaderTable(HeaderTable):
    """An HPACK table that counts every change to its dynamic part."""

    def __init__(self) -> None:
        super().__init__()
        self.version = 0

    def add(self, name: bytes, value: bytes) -> None:
        if table_entry_size(name, value) > self._maxsize and not self.dynamic_entries:
            # Too big for the table, which is empty already: nothing changes.
            return
        super().add(name, value)
        self.version += 1

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        old = self._maxsize
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]
        if newmax != old:
            self.version += 1


class CachingDecoder(Decoder):
    """A decoder that returns the earlier result for a block seen before."""

    def __init__(self, max_header_list_size: int) -> None:
        super().__init__(max_header_list_size=max_header_list_size)
        self.header_table = VersionedHeaderTable()
        self._cache: dict[tuple[bytes, int, bool], HeaderList] = {}

    def decode(self, data: bytes, raw: bool = False) -> HeaderList:
        table = self.header_table
        assert isinstance(table, VersionedHeaderTable)
        block = bytes(data)
        version = table.version
        key = (block, version, raw)
        cached = self._cache.get(key)
        if cached is not None:
            return list(cached)
        headers = list(super().decode(block, raw))
        if table.version == version:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[key] = headers
            return list(headers)
        return headers


class CachingEncoder(Encoder):
    """An encoder that returns the earlier block for a header list sent before."""

    def __init__(self) -> None:
        super().__init__()
        self.header_table = VersionedHeaderTable()
        self._cache: dict[tuple[tuple[tuple[bytes, bytes], ...], int, bool], bytes] = {}

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:  # type: ignore[override]
        table = self.header_table
        assert isinstance(table, VersionedHeaderTable)
        fields = tuple(headers)
        if table.resized or NeverIndexedHeaderTuple in map(type, fields):
            # The block must carry a table size update: encode it afresh. And a
            # never-indexed field equals its plain twin as a key, so a cached
            # block could drop or add the mark (RFC 7541 §7.1.3).
            return super().encode(fields, huffman)
        version = table.version
        key = (fields, version, huffman)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        block = super().encode(fields, huffman)
        if table.version == version:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[key] = block
        return block
