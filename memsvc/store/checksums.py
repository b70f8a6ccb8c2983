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
