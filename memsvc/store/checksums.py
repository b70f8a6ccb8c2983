"""Checksums of the bytes SQLite does not check for meaning (issue 19 item 13): a flipped byte in
a delta row's blob or a deleted delta row is a valid database, so without them it was served as
truth. Catalog tables:

- ``delta_sums(tbl, commit_id, rows)``: per (table, commit), every row it wrote as int64 triples
  (token, layer, crc32 of the row's bytes). A changed, deleted or added row of the commit shows.
- ``base_sums(tbl, version, sums)``: crc32 of each token's rows (L, d) in a base file, uint32 by
  token id. The server checks a base row the first time it reads it since the KB opened
  (TableState.gather, rows_in_range), so a cold start reads no base and a damaged row is never
  served; fsck checks every row. (Per token, not per 64 MB: checking a 64 MB chunk on first
  touch would read it whole for one row; a token's crc32 costs 32 us per 80 KB STEM-1B row.)

Both are written in the transaction that names the rows or the base. Commits and bases from
before checksums have no record: they are unchecked, and fsck says so.
"""
import functools
import zlib

import numpy as np


def create_tables(db):
    db["delta_sums"].create({"tbl": str, "commit_id": int, "rows": bytes}, pk=("tbl", "commit_id"), if_not_exists=True)
    db["base_sums"].create({"tbl": str, "version": int, "sums": bytes}, pk=("tbl", "version"), if_not_exists=True)


def row_sums(token_ids, layers, stored) -> bytes:
    """The delta_sums record of a commit's rows: (token, layer, crc32) int64 triples."""
    crcs = [zlib.crc32(np.ascontiguousarray(v).data) for v in stored]
    return np.array([token_ids, layers, crcs], dtype=np.int64).T.tobytes()


def check_commit(record, rows) -> dict:
    """Compare a commit's rows [(token, layer, bytes)] with its delta_sums record: {(token, layer):
    what is wrong}, empty when they match."""
    triples = np.frombuffer(record, np.int64).reshape(-1, 3)
    actual = np.array([(t, layer, zlib.crc32(data)) for t, layer, data in rows], dtype=np.int64).reshape(-1, 3)
    if np.array_equal(actual, triples):  # the usual case: SQLite returns a commit's rows in the order written
        return {}
    expected = {(t, layer): crc for t, layer, crc in triples.tolist()}
    damaged = {}
    for token, layer, data in rows:
        crc = expected.pop((token, layer), None)
        if crc is None:
            damaged[(token, layer)] = "is not listed in its commit's checksums (added)"
        elif zlib.crc32(data) != crc:
            damaged[(token, layer)] = "does not match its checksum"
    for key in expected:
        damaged[key] = "is missing (deleted)"
    return damaged


def token_sums(rows) -> np.ndarray:
    """crc32 of each token's rows (L, d) of a block of base rows (n, L, d): uint32 (n,)."""
    rows = np.ascontiguousarray(rows)
    return np.array([zlib.crc32(r.data) for r in rows], dtype=np.uint32)


@functools.lru_cache(maxsize=16)
def _shift_tables(n_bytes) -> tuple:
    """crc32 is affine in its start value: crc32(B, x) = P(x) ^ crc32(B, 0) with P linear over
    GF(2) and fixed by len(B). P as four byte tables (P of each byte of x, as a table-driven crc)."""
    zeros = bytes(n_bytes)
    basis = [zlib.crc32(zeros, 1 << i) ^ zlib.crc32(zeros, 0) for i in range(32)]
    return tuple(tuple(_xor_of(basis[8 * k:8 * k + 8], b) for b in range(256)) for k in range(4))


def _xor_of(images, bits):
    out = 0
    for i, image in enumerate(images):
        if bits >> i & 1:
            out ^= image
    return out


def joined_sum(crcs, row_bytes) -> int:
    """crc32 of the concatenation of rows of ``row_bytes`` each, from their crc32s (zlib's
    crc32_combine): the token_sums value of a token's rows (L, d) from its per-layer delta_sums,
    so history compares a row written by commits with a base row without reading either."""
    tables = _shift_tables(row_bytes)
    acc = crcs[0]
    for crc in crcs[1:]:
        acc = tables[0][acc & 255] ^ tables[1][acc >> 8 & 255] ^ tables[2][acc >> 16 & 255] ^ tables[3][acc >> 24] ^ crc
    return acc
