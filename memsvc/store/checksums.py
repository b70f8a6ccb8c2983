"""Checksums of the bytes SQLite does not check for meaning (issue 19 item 13): a flipped byte in
a delta row's blob or a deleted delta row is a valid database, so without them it was served as
truth. Catalog tables:

- ``delta_sums(tbl, commit_id, rows)``: per (table, commit), every row it wrote as int64 triples
  (token, layer, crc32 of the row's bytes). A changed, deleted or added row of the commit shows.
- ``pair_sums(tbl, commit_id, pairs)``: per (mosaic store, commit), every pair it wrote as int64
  quads (layer, head, pair id, crc32 of its label, key and value bytes), the same way.
- ``base_sums(tbl, version, sums)``: crc32 of each token's rows (L, d) in a base file, uint32 by
  token id. The server checks a base row the first time it reads it since the KB opened
  (TableState.gather, rows_in_range), so a cold start reads no base and a damaged row is never
  served; fsck checks every row. (Per token, not per 64 MB: checking a 64 MB chunk on first
  touch would read it whole for one row; a token's crc32 costs 32 us per 80 KB STEM-1B row.)

Each is written in the transaction that names the rows, pairs or base. Commits and bases from
before checksums have no record: they are unchecked, and fsck says so. The catalog's meta
``<table>_from`` (``summed_from``) tells them apart from a record that was deleted: from that
commit (for base_sums: base version) on, every row-writing commit and every base has its
record, so a missing one is damage.

A commit whose rows and record are both deleted leaves nothing to compare; its row in
``commits`` still proves it wrote rows of its table (its kind, its one table, rows_changed > 0:
``lost_commits``), so reads that need its rows are refused and fsck names it.
"""
import functools
import itertools
import json
import zlib

import numpy as np

NEVER = 2**62  # no marker (a catalog this code never opened): every record counts as optional
MISSING = "has no checksum: its commit's {} record is missing"


def create_tables(db):
    """The checksum tables (and lifetimes.py's removals), and the marker of each: the first commit
    (base version) whose record is certain (1 for a new catalog; an existing table's first record;
    else the next commit)."""
    existing = set(db.table_names())
    head = db.execute("select coalesce(max(id), 0) from commits").fetchone()[0]
    db["delta_sums"].create({"tbl": str, "commit_id": int, "rows": bytes}, pk=("tbl", "commit_id"), if_not_exists=True)
    db["pair_sums"].create({"tbl": str, "commit_id": int, "pairs": bytes}, pk=("tbl", "commit_id"), if_not_exists=True)
    db["base_sums"].create({"tbl": str, "version": int, "sums": bytes}, pk=("tbl", "version"), if_not_exists=True)
    db["removals"].create({"tbl": str, "commit_id": int, "keys": bytes}, pk=("tbl", "commit_id"), if_not_exists=True)
    for table, column in (("delta_sums", "commit_id"), ("pair_sums", "commit_id"), ("base_sums", "version"),
                          ("removals", "commit_id")):
        if not db.execute("select 1 from meta where key=?", [f"{table}_from"]).fetchone():
            first = db.execute(f"select min({column}) from {table}").fetchone()[0] if table in existing else None
            db.execute("insert into meta values (?, ?)", [f"{table}_from", str(first or head + 1)])


def summed_from(query, table) -> int:
    """The first commit whose ``table`` record is certain (``query``: an execute of the catalog)."""
    row = query("select value from meta where key=?", [f"{table}_from"]).fetchone()
    return int(row[0]) if row else NEVER


# The commit kinds that write a record of each table for their one table, what they write, and
# where it lives (a commit some of whose rows are left is checked row by row instead).
# "+tbl": SQLite would otherwise search deltas by its primary key's tbl prefix, scanning every key of
# the table once per commit without a record (gc drops those of compacted commits): 34 s at the
# start of a STEM-1B KB with 100,000 edited tokens, 5 ms through the commit_id index.
WRITERS = {"delta_sums": (("edit", "inject", "revert"), "rows", "select 1 from deltas where commit_id=c.id and +tbl=:tbl"),
           "pair_sums": (("mosaic-add", "mosaic-replace", "revert"), "pairs",  # a remove writes no pair (lifetimes.py)
                         "select 1 from mosaic_pairs where added_in=c.id and tbl=:tbl")}


def lost_commits(query, table, records) -> list:
    """[(commit, why)] of the commits from summed_from(records) on that wrote rows of ``table``
    (their commits row says so) and have neither a ``records`` record nor a row left."""
    kinds, noun, rows_left = WRITERS[records]
    lost = query(f"select id, kind, rows_changed from commits c where tables=:tables and id>=:since and rows_changed>0 "
                 f"and kind in (select value from json_each(:kinds)) and not exists (select 1 from {records} "
                 f"where tbl=:tbl and commit_id=c.id) and not exists ({rows_left}) order by id",
                 {"tables": json.dumps([table]), "since": summed_from(query, records), "kinds": json.dumps(kinds),
                  "tbl": table}).fetchall()
    return [(c, f"({kind}, {n} {noun}) wrote {noun} of it, but they and its {records} record are missing (deleted)")
            for c, kind, n in lost]


def row_sums(token_ids, layers, stored) -> bytes:
    """The delta_sums record of a commit's rows: (token, layer, crc32) int64 triples."""
    crcs = [zlib.crc32(np.ascontiguousarray(v).data) for v in stored]
    return np.array([token_ids, layers, crcs], dtype=np.int64).T.tobytes()


def delta_sums(rows) -> list:
    """(token, layer, crc32) of delta rows [(token, layer, bytes)], as check_commit takes them."""
    return [(t, layer, zlib.crc32(data)) for t, layer, data in rows]


def pair_sum(label: str, key: bytes, value: bytes) -> int:
    return zlib.crc32(value, zlib.crc32(key, zlib.crc32(label.encode("utf-8", "surrogatepass"))))


def pair_record(pairs) -> bytes:
    """The pair_sums record of a commit's pairs [(layer, head, id, label, key bytes, value bytes)]."""
    quads = [(layer, head, i, pair_sum(label, k, v)) for layer, head, i, label, k, v in pairs]
    return np.array(quads, dtype=np.int64).reshape(-1, 4).tobytes()


def check_commit(record, sums, width=3) -> dict:
    """Compare a commit's rows, as (key..., crc32) tuples of ``width``, with its record: {key:
    what is wrong}, empty when they match."""
    listed = np.frombuffer(record, np.int64).reshape(-1, width)
    actual = np.array(sums, dtype=np.int64).reshape(-1, width)
    if np.array_equal(actual, listed):  # the usual case: SQLite returns a commit's rows in the order written
        return {}
    expected = {tuple(r[:-1]): r[-1] for r in listed.tolist()}
    damaged = {}
    for *key, crc in sums:
        want = expected.pop(tuple(key), None)
        if want is None:
            damaged[tuple(key)] = "is not listed in its commit's checksums (added)"
        elif crc != want:
            damaged[tuple(key)] = "does not match its checksum"
    for key in expected:
        damaged[key] = "is missing (deleted)"
    return damaged


def check_commits(rows, records, since, table, width) -> dict:
    """Every commit's rows against its record: ``rows`` (commit, key..., crc32) ordered by commit,
    ``records`` {commit: record}, ``since`` summed_from(table). Returns {commit: {key: why}} of the
    damaged ones: a changed, added or deleted row, or a record missing from ``since`` on (every
    row of the commit); a commit before ``since`` without a record is unchecked, not damaged."""
    damaged, records = {}, dict(records)
    for commit, group in itertools.groupby(rows, key=lambda r: r[0]):
        sums = [r[1:] for r in group]
        record = records.pop(commit, None)
        if record is not None:
            bad = check_commit(record, sums, width)
        else:
            bad = {tuple(s[:-1]): MISSING.format(table) for s in sums} if commit >= since else {}
        if bad:
            damaged[commit] = bad
    for commit, record in records.items():  # commits none of whose rows are left
        bad = check_commit(record, [], width)
        if bad:
            damaged[commit] = bad
    return damaged


def without(record, keys, width) -> bytes:
    """A record less the rows whose keys are in ``keys`` (rows gc deleted)."""
    listed = np.frombuffer(record, np.int64).reshape(-1, width)
    return listed[np.array([tuple(r[:-1]) not in keys for r in listed.tolist()], bool).reshape(-1)].tobytes()


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
