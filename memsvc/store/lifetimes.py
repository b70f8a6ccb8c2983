"""Checksums of lifetimes (issue 19): a token or a mosaic pair lives while added_in <= v <
removed_in, and removed_in is set by the commit that removes it (a revert of an injection, a
mosaic remove, replace or revert) in a column no row checksum covers, so one flipped removed_in
silently changed which rows are alive at every later version.

Catalog table ``removals(tbl, commit_id, keys)``: per (table, commit of a ``REMOVING`` kind), the
keys of the rows that commit removed, int64 rows of ``width`` columns: (token id,) for a bank
table, (layer, head, pair id, added_in) for a mosaic store. It is written in the commit's
transaction even when the commit removed nothing, so from the marker ``removals_from``
(checksums.create_tables) on a missing record is damage. ``check`` compares the rows that end
with the records, at load and in fsck: a row that ends at another version than its record says,
or ends with no record listing it, is damaged from the first version where the two disagree.

``mark_bank_table`` and ``mark_mosaic_store`` note, at load, the damage a table's records show
beyond single rows: lifetimes, lost removals records, commits lost with their row checksums
(checksums.lost_commits) and bases whose base_sums record is lost.
"""
import json

import numpy as np

from memsvc.store.checksums import WRITERS, lost_commits, summed_from
from memsvc.store.commit_log import NEVER

REMOVING = ("revert", "mosaic-remove", "mosaic-replace")
LOST = "may have ended rows of it, but its removals record is missing (deleted)"


def record(keys, width) -> bytes:
    """The removals record of a commit: the keys of the rows it removed."""
    return np.array(keys, np.int64).reshape(-1, width).tobytes()


def without(keys_record, keys, width) -> bytes:
    """A record less ``keys`` (rows gc deleted)."""
    listed = np.frombuffer(keys_record, np.int64).reshape(-1, width)
    return listed[np.array([tuple(k) not in keys for k in listed.tolist()], bool).reshape(-1)].tobytes()


def check(query, table, width, ended, lifetime) -> tuple:
    """The lifetimes of ``table`` against its removals records. ``ended``: {key: (added_in,
    removed_in)} of its rows that end (removed_in < NEVER); ``lifetime(key)``: (added_in,
    removed_in) of a row, None when there is none. Returns ({key: (first version it is wrong at,
    why)}, {commit: why} of commits whose record is lost); rows that end before the marker, or
    at a commit whose record is lost, are not compared (unchecked, or refused with that commit)."""
    since = summed_from(query, "removals")
    records = {c: np.frombuffer(keys, np.int64).reshape(-1, width).tolist()
               for c, keys in query("select commit_id, keys from removals where tbl=?", [table]).fetchall()}
    removing = query("select id from commits where tables=? and id>=? and kind in (select value from json_each(?))",
                     [json.dumps([table]), since, json.dumps(REMOVING)]).fetchall()
    lost = {c: LOST for (c,) in removing if c not in records}
    listed = {tuple(k): c for c, keys in records.items() for k in keys}
    damaged = {}
    for key, (added, removed) in ended.items():
        said = listed.pop(key, None)
        if said is None and (removed < since or removed in lost):
            continue
        if said != removed:
            damaged[key] = (max(added, min(removed, NEVER if said is None else said)),
                            f"ends at version {removed}, " + ("which no removals record lists" if said is None else
                                                              f"its removals record says {said}"))
    for key, said in listed.items():  # listed as removed, yet the row lives (or is gone)
        added, removed = lifetime(key) or (said, NEVER)
        damaged[key] = (max(added, said), f"ends {'never' if removed >= NEVER else f'at version {removed}'}, "
                                          f"its removals record says {said}")
    return damaged, lost


def check_table(query, table, kind) -> tuple:
    """``check`` of a bank table (``kind`` "bank") or a mosaic store ("mosaic") from the catalog."""
    if kind == "bank":
        cols, source, width = "token_id", "tokens", 1
    else:
        cols, source, width = "layer, head, pair_id, added_in", "mosaic_pairs", 4
    ended = {tuple(r[:-2]): tuple(r[-2:]) for r in query(
        f"select {cols}, added_in, removed_in from {source} where tbl=? and removed_in<?", [table, NEVER]).fetchall()}
    where = " and ".join(f"{c}=?" for c in cols.split(", "))
    return check(query, table, width, ended, lambda key: query(
        f"select added_in, removed_in from {source} where tbl=? and {where}", [table, *key]).fetchone())


def mark_bank_table(t, query):
    """Note in TableState ``t`` its lost base_sums records, lost commits and wrong lifetimes."""
    since = summed_from(query, "base_sums")
    for version, _ in t.bases:
        if version >= since:
            t.base_sums.setdefault(version, None)  # None: the record is lost (TableState.gather refuses)
    damaged, lost = check_table(query, t.name, "bank")
    t.lifetime_damage = {key[0]: damage for key, damage in damaged.items()}
    t.lost = ([(c, why, True) for c, why in lost_commits(query, t.name, "delta_sums")] +  # needed up to the next base
              [(c, why, False) for c, why in lost.items()])  # lifetimes: at every later version


def mark_mosaic_store(t, query):
    """Note in MosaicTable ``t`` its lost commits, lost removals records and wrong pair lifetimes."""
    damaged, lost = check_table(query, t.name, "mosaic")
    t.lost = lost_commits(query, t.name, "pair_sums") + list(lost.items())
    t.lifetime_damage = {}
    for (layer, head, i, a), (start, why) in damaged.items():
        t.lifetime_damage.setdefault((layer, head), []).append(
            (None, start, f"the lifetime of pair {i} added by commit {a} {why}"))


def needs_marking(commit, rows) -> bool:
    """Whether a replica must mark the table of a commit it applied again (``commit``: its
    commits row, ``rows``: {catalog table: rows}): a removing commit, or one that should have
    written rows and a record and came with neither (rare, so the full marking is cheap)."""
    writes = commit["kind"] in WRITERS["delta_sums"][0] + WRITERS["pair_sums"][0] and commit["rows_changed"] > 0
    return commit["kind"] in REMOVING or (writes and not any(
        rows.get(table) for table in ("deltas", "delta_sums", "mosaic_pairs", "pair_sums")))


def record_findings(query) -> list:
    """fsck's findings of what the records show beyond single rows: commits lost with their row
    checksums that a retained version needs, lost removals records and wrong lifetimes."""
    problems, retained = [], [v for (v,) in query("select id from commits where gone=0").fetchall()]
    for (name,) in query("select name from tables order by name").fetchall():
        bases = sorted(v for (v,) in query("select version from bases where tbl=?", [name]).fetchall())
        problems += [f"delta: table {name!r} commit {c} {why}" for c, why in lost_commits(query, name, "delta_sums")
                     if any(max((b for b in bases if b <= v), default=-1) < c <= v for v in retained)]
        problems += _lifetime_findings(query, f"table {name!r}", name, "bank")
    for (name,) in query("select name from mosaic_tables order by name").fetchall():
        problems += [f"pair: mosaic store {name!r} commit {c} {why}" for c, why in lost_commits(query, name, "pair_sums")]
        problems += _lifetime_findings(query, f"mosaic store {name!r}", name, "mosaic")
    return problems


def _lifetime_findings(query, what, name, kind) -> list:
    damaged, lost = check_table(query, name, kind)
    keys = ("token {}" if kind == "bank" else "layer {} head {} pair {} added by commit {}")
    return ([f"lifetime: {what} commit {c} {why}" for c, why in sorted(lost.items())] +
            [f"lifetime: {what} {keys.format(*key)} {why}" for key, (_, why) in sorted(damaged.items())])
