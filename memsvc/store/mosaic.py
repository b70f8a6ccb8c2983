"""Memory Mosaic stores: the knowledge base's second table kind ("mosaic").

A store holds (key, value) pairs grouped by (layer, head). Key dim and value dim are fixed per
store; each pair has an int id (unique among the live pairs of its group) and an optional label
(e.g. the fact it encodes). Keys are stored unit-normalised, k / ||k||, because the kernel
exp(β q·k) assumes unit keys; queries are used as given (their norm scales β).

Every add, remove and replace is a KB-wide commit (CommitLog.commit), so versions interleave
with bank edits. SQLite keeps one row per pair *version* with added_in / removed_in: a replace
closes the old row and opens a new one under the same id. Memory mirrors each group as arrays
over *slots* (rows in write order), so reading version v is the mask added_in <= v < removed_in
and no read touches SQLite.

    >>> kb.mosaic.create("facts", num_layers=2, num_heads=4, key_dim=64, value_dim=64).version
    7
    >>> kb.mosaic.add("facts", 0, 1, keys, values, labels=["Paris is in France", ...]).ids
    array([0, 1, ...])
    >>> kb.mosaic.query("facts", 0, 1, queries, beta=8.0).outputs      # EXACT, at the head

Reads return (o, lse, n) (indexes/mosaic.py), so results of several stores merge exactly
(`merge`). Modes:

- EXACT: kernel_regression over the pairs alive at the version read.
- TOPK: kernel average over the k best keys. Stores created with a `topk_index` kind search an
  ANN index (indexes.ann, metric ip) that follows the group's newest pairs; a read of an older
  version than the group's last change, or a store without an index, uses exact top-k.
- LSH: MagicPIG sampling through a SimHashIndex per (group, K, L). It holds every retained slot
  (hashes and a packed copy of its key and value, indexes/lsh.py PackedRows), removed ones
  included, catches up with new slots before answering (the catch-up is reported as
  `index_lag`), and its retrieved slots are filtered by the version mask. Keys are sampled
  independently, so the filtered estimate stays unbiased for the pairs alive at any version.

Lifetime: gc deletes the pair rows that no retained version reads; indexes live in memory only
and are rebuilt on first use after the KB is opened or gc'd.

Checksums (checksums.py): each commit records its pairs in pair_sums; a pair that fails (a flipped
byte, a deleted or added row, a lost record) makes every read of its group at a version where it
lives FailedPrecondition naming store, layer and head (`MosaicTable.check_intact`), never a result.
"""
import bisect
import threading
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np

from indexes.lsh import SimHashConfig, SimHashIndex, choose_tables
from indexes.mosaic import kernel_regression, lsh_regression, topk_regression
from memsvc.core.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, OutOfRange, ResourceExhausted
from memsvc.core.mosaic import BetaPolicy, LshParams, MosaicInfo, MosaicResult, PairsResult
from memsvc.core.values import CommitResult, TableInfo
from memsvc.store import lifetimes
from memsvc.store.checksums import check_commits, pair_record, pair_sum, summed_from, without
from memsvc.store.commit_log import NEVER, CommitLog, check_table_name
from memsvc.store.mosaic_groups import FollowingIndex, GroupChange, Pairs
from memsvc.store.mosaic_input import (MosaicLimits, check_lsh, check_matrix, check_pair_ids, check_policy,
                                       check_query_work, check_shape, hashed_cosines, resolve_beta, unit_keys)

MODES = ("exact", "topk", "lsh")
TOPK_INDEX_KINDS = ("exact", "hnsw")  # ANN kinds that build without training queries
MAX_INDEXES_PER_STORE = 16  # cached LSH/ANN indexes per store; the oldest is dropped first


@dataclass
class MosaicTable:
    name: str
    num_layers: int
    num_heads: int
    key_dim: int
    value_dim: int
    created_in: int
    policy: BetaPolicy
    topk_index: str
    groups: dict = field(default_factory=dict)  # (layer, head) -> Pairs
    indexes: dict = field(default_factory=dict)  # (mode, layer, head, knobs...) -> FollowingIndex
    damaged: dict = field(default_factory=dict)  # (layer, head) -> [(slot, or None: from commit on, commit, why)]
    lost: list = field(default_factory=list)  # [(commit, why)]: every group's reads from it on are refused
    lifetime_damage: dict = field(default_factory=dict)  # (layer, head) -> [(None, first wrong version, why)] (lifetimes.py)
    _index_lock: threading.Lock = field(default_factory=threading.Lock)

    def group(self, layer, head) -> Pairs:
        for value, size, what in ((layer, self.num_layers, "layer"), (head, self.num_heads, "head")):
            if not 0 <= value < size:
                raise OutOfRange(f"{what}: {value} out of range [0, {size}) for mosaic store {self.name!r}")
        return self.groups[(layer, head)]

    def mark_damaged(self, damaged: dict):
        """Pairs that failed their checksums, {commit: {(layer, head, pair id): why}} (check_commits)."""
        for commit, bad in damaged.items():
            for (layer, head, pair_id), why in bad.items():
                if (layer, head) in self.groups:
                    p = self.groups[(layer, head)]
                    slot = np.flatnonzero((p.ids == pair_id) & (p.added_in == commit))
                    self.damaged.setdefault((layer, head), []).append(
                        (int(slot[0]) if len(slot) else None, commit, f"pair {pair_id} written by commit {commit} {why}"))

    def check_intact(self, layer, head, version=None, copied=()):
        """FailedPrecondition when a damaged pair of the group lives at ``version`` or is ``copied``
        (slots whose bytes a write carries over: a revert's, a replace's labels)."""
        pairs = self.groups[(layer, head)]
        for commit, why in self.lost:
            if version is not None and commit <= version:
                raise FailedPrecondition(f"data: mosaic store {self.name!r} layer {layer} head {head} at version {version}: "
                                         f"commit {commit} {why}; restore the catalog from a backup")
        for slot, commit, why in self.damaged.get((layer, head), []) + self.lifetime_damage.get((layer, head), []):
            lives = version is not None and (commit <= version if slot is None else
                                             pairs.added_in[slot] <= version < pairs.removed_in[slot])
            if lives or slot in copied:
                raise FailedPrecondition(f"data: mosaic store {self.name!r} layer {layer} head {head}"
                                         f"{'' if version is None else f' at version {version}'}: {why}; "
                                         "restore the catalog from a backup")

    def following(self, key, make, values=False) -> FollowingIndex:
        """The cached index under `key`, created empty on first use (`FollowingIndex`)."""
        with self._index_lock:
            if key not in self.indexes:
                if len(self.indexes) >= MAX_INDEXES_PER_STORE:
                    del self.indexes[next(iter(self.indexes))]
                self.indexes[key] = FollowingIndex(make, values)
            return self.indexes[key]


# ---------------------------------------------------------------- the store

class MosaicStore:
    """Every mosaic store of one knowledge base: persisted in its catalog (tables mosaic_tables,
    mosaic_pairs), mirrored in memory; every write is a commit of the KB's CommitLog."""

    def __init__(self, log: CommitLog):
        self.log = log
        self._create_schema()
        self.tables = {}
        self._load()

    def _create_schema(self):
        db = self.log.db
        db["mosaic_tables"].create({"name": str, "num_layers": int, "num_heads": int, "key_dim": int, "value_dim": int,
                                    "created_in": int, "beta0": float, "beta1": float, "alpha": float,
                                    "topk_index": str}, pk="name", if_not_exists=True)
        db["mosaic_pairs"].create({"tbl": str, "layer": int, "head": int, "pair_id": int, "added_in": int,
                                   "removed_in": int, "label": str, "key": bytes, "value": bytes},
                                  pk=("tbl", "layer", "head", "pair_id", "added_in"), if_not_exists=True)

    def _load(self):
        since = summed_from(self.log.query, "pair_sums")
        for r in self.log.db["mosaic_tables"].rows:
            t = self.new_table(r["name"], r["num_layers"], r["num_heads"], r["key_dim"], r["value_dim"],
                                r["created_in"], BetaPolicy(r["beta0"], r["beta1"], r["alpha"]), r["topk_index"])
            sums = []  # (commit, layer, head, pair id, crc32) of every stored pair
            for (layer, head), pairs in t.groups.items():
                rows = self.log.query("select pair_id, added_in, removed_in, label, key, value from mosaic_pairs "
                                      "where tbl=? and layer=? and head=? order by rowid", [t.name, layer, head]).fetchall()
                if rows:
                    ids, added, removed, labels, keys, values = zip(*rows)
                    t.groups[(layer, head)] = Pairs(
                        np.array(ids, np.int64), np.frombuffer(b"".join(keys), np.float32).reshape(len(rows), t.key_dim),
                        np.frombuffer(b"".join(values), np.float32).reshape(len(rows), t.value_dim), tuple(labels),
                        np.array(added, np.int64), np.array(removed, np.int64))
                    sums += [(a, layer, head, i, pair_sum(label, k, v)) for i, a, _, label, k, v in rows]
            records = self.log.query("select commit_id, pairs from pair_sums where tbl=?", [t.name]).fetchall()
            t.mark_damaged(check_commits(sorted(sums, key=lambda s: s[0]), dict(records), since, "pair_sums", 4))
            lifetimes.mark_mosaic_store(t, self.log.query)
            self.tables[t.name] = t

    @staticmethod
    def new_table(name, num_layers, num_heads, key_dim, value_dim, created_in, policy, topk_index):
        t = MosaicTable(name, num_layers, num_heads, key_dim, value_dim, created_in, policy, topk_index)
        t.groups = {(l, h): Pairs.empty(key_dim, value_dim) for l in range(num_layers) for h in range(num_heads)}
        return t

    def table(self, name, version) -> MosaicTable:
        t = self.tables.get(name)
        if t is None or t.created_in > version:
            raise NotFound(f"table: unknown mosaic store {name!r}" + ("" if t is None else f" at version {version}"))
        return t

    # ---------------------------------------------------------------- catalog reads

    def describe_store(self, name, version=None, tag=None) -> MosaicInfo:
        v = self.log.resolve_version(version, tag)
        t = self.table(name, v)
        counts = np.zeros((t.num_layers, t.num_heads), np.int64)
        for (layer, head), pairs in t.groups.items():  # skipping empty groups: 3.5 ms, not 142, for 245 x 245
            counts[layer, head] = np.count_nonzero(pairs.alive(v)) if len(pairs.added_in) else 0
        return MosaicInfo(t.name, t.num_layers, t.num_heads, t.key_dim, t.value_dim, t.created_in, counts,
                          t.policy, t.topk_index, v)

    def list_stores(self, version=None, tag=None) -> list:
        v = self.log.resolve_version(version, tag)
        return [self.describe_store(name, v) for name, t in sorted(self.tables.items()) if t.created_in <= v]

    def describe(self, name, version) -> TableInfo:
        """The store as a KB table (kind "mosaic"): vocab_size = live pairs, dim = key dim."""
        info = self.describe_store(name, version)
        return TableInfo(name=name, kind="mosaic", dtype="float32", vocab_size=int(info.pairs.sum()),
                         num_layers=info.num_layers, dim=info.key_dim, created_version=info.created_version,
                         base_version=info.created_version, version=info.version)

    def list_tables(self, version) -> list:
        return [self.describe(name, version) for name, t in sorted(self.tables.items()) if t.created_in <= version]

    def read_pairs(self, name, layer, head, version=None, tag=None) -> dict:
        """The live pairs of a group at a version: ids, keys (unit), values, labels (the export)."""
        v = self.log.resolve_version(version, tag)
        t = self.table(name, v)
        pairs = t.group(layer, head)
        t.check_intact(layer, head, v)
        alive = np.flatnonzero(pairs.alive(v))
        return {"ids": pairs.ids[alive], "keys": pairs.keys[alive], "values": pairs.values[alive],
                "labels": [pairs.labels[i] for i in alive], "version": v}

    # ---------------------------------------------------------------- writes

    def create(self, name, num_layers, num_heads, key_dim, value_dim, policy=None, topk_index="",
               author="", message="") -> PairsResult:
        """An empty store (one commit)."""
        check_table_name(name)
        check_shape(num_layers=num_layers, num_heads=num_heads, key_dim=key_dim, value_dim=value_dim)
        policy = check_policy(policy or BetaPolicy())
        if topk_index not in ("",) + TOPK_INDEX_KINDS:
            raise InvalidArgument(f"topk_index: {topk_index!r} is not one of {', '.join(TOPK_INDEX_KINDS)} (or empty)")
        with self.log.lock:
            self.log.check_unused(name)

            def write(conn, version):
                conn.execute("insert into mosaic_tables values (?,?,?,?,?,?,?,?,?,?)",
                             [name, num_layers, num_heads, key_dim, value_dim, version, policy.beta0, policy.beta1,
                              policy.alpha, topk_index])

            def publish(version):
                self.tables[name] = self.new_table(name, num_layers, num_heads, key_dim, value_dim, version, policy,
                                                    topk_index)

            version = self.log.commit("mosaic-create", [name], write, publish, author, message or f"create mosaic {name}")
            return PairsResult(version, 0, np.zeros(0, np.int64))

    def add(self, name, layer, head, keys, values, ids=None, labels=None, author="", message="") -> PairsResult:
        """Add pairs to group (layer, head) as one commit; ids default to the next unused ones."""
        with self.log.lock:
            t = self.table(name, self.log.head)
            pairs = t.group(layer, head)
            keys, values = unit_keys(keys, t.key_dim), check_matrix("values", values, t.value_dim, "value dim")
            if len(values) != len(keys):
                raise InvalidArgument(f"values: {len(values)} rows for {len(keys)} keys")
            if ids is None:
                ids = np.arange(len(keys), dtype=np.int64) + int(pairs.ids.max(initial=-1)) + 1
            ids = check_pair_ids(ids)
            if len(ids) != len(keys):
                raise InvalidArgument(f"ids: {len(ids)} ids for {len(keys)} keys")
            taken = ids[np.isin(ids, pairs.ids[pairs.alive(self.log.head)])]
            if len(taken):
                raise Conflict(f"ids: pair id {int(taken[0])} already exists in {name!r} layer {layer} head {head}; replace it")
            change = GroupChange(layer, head, np.zeros(0, np.int64), ids, keys, values, self._labels(labels, len(ids)))
            return self._commit(t, [change], "mosaic-add", author, message or f"add {len(ids)} pairs to {name}", ids)

    def remove(self, name, layer, head, ids, author="", message="") -> PairsResult:
        with self.log.lock:
            t = self.table(name, self.log.head)
            ids = check_pair_ids(ids)
            slots = t.group(layer, head).slots_of(ids, self.log.head)
            change = GroupChange(layer, head, slots, np.zeros(0, np.int64), np.zeros((0, t.key_dim), np.float32),
                                 np.zeros((0, t.value_dim), np.float32), [])
            return self._commit(t, [change], "mosaic-remove", author, message or f"remove {len(ids)} pairs from {name}", ids)

    def replace(self, name, layer, head, ids, keys, values, labels=None, author="", message="") -> PairsResult:
        """New keys/values (and labels; default: kept) for existing pair ids, as one commit."""
        with self.log.lock:
            t = self.table(name, self.log.head)
            pairs = t.group(layer, head)
            ids = check_pair_ids(ids)
            slots = pairs.slots_of(ids, self.log.head)
            keys, values = unit_keys(keys, t.key_dim), check_matrix("values", values, t.value_dim, "value dim")
            if not len(ids) == len(keys) == len(values):
                raise InvalidArgument(f"keys: {len(ids)} ids, {len(keys)} keys and {len(values)} values")
            if labels is None:
                t.check_intact(layer, head, copied=slots.tolist())
            labels = [pairs.labels[s] for s in slots] if labels is None else self._labels(labels, len(ids))
            change = GroupChange(layer, head, slots, ids, keys, values, labels)
            return self._commit(t, [change], "mosaic-replace", author, message or f"replace {len(ids)} pairs in {name}", ids)

    @staticmethod
    def _labels(labels, n):
        labels = [""] * n if labels is None or len(labels) == 0 else [str(x) for x in labels]
        if len(labels) != n:
            raise InvalidArgument(f"labels: {len(labels)} labels for {n} pairs")
        return labels

    def _commit(self, t: MosaicTable, changes, kind, author, message, ids) -> PairsResult:
        def write(conn, version):
            for c in changes:
                pairs = t.groups[(c.layer, c.head)]
                conn.executemany("update mosaic_pairs set removed_in=? where tbl=? and layer=? and head=? and pair_id=? and added_in=?",
                                 [(version, t.name, c.layer, c.head, int(pairs.ids[s]), int(pairs.added_in[s])) for s in c.remove_slots])
                conn.executemany("insert into mosaic_pairs values (?,?,?,?,?,?,?,?,?)",
                                 [(t.name, c.layer, c.head, i, version, NEVER, label, k.tobytes(), val.tobytes())
                                  for i, label, k, val in zip(c.ids.tolist(), c.labels, c.keys, c.values)])
            conn.execute("insert into pair_sums values (?,?,?)", [t.name, version, pair_record(
                (c.layer, c.head, i, label, k.tobytes(), val.tobytes()) for c in changes
                for i, label, k, val in zip(c.ids.tolist(), c.labels, c.keys, c.values))])
            if kind in lifetimes.REMOVING:
                conn.execute("insert into removals values (?,?,?)", [t.name, version, lifetimes.record(
                    [(c.layer, c.head, int(t.groups[(c.layer, c.head)].ids[s]), int(t.groups[(c.layer, c.head)].added_in[s]))
                     for c in changes for s in c.remove_slots.tolist()], 4)])

        def publish(version):
            for c in changes:
                t.groups[(c.layer, c.head)] = t.groups[(c.layer, c.head)].changed(
                    version, c.remove_slots, c.ids, c.keys, c.values, c.labels)

        rows = sum(len(c) for c in changes)
        version = self.log.commit(kind, [t.name], write, publish, author, message, rows)
        return PairsResult(version, rows, ids)

    def revert(self, version, author="", message="") -> CommitResult:
        """Undo one pairs commit with a new commit: pairs it added are removed, pairs it removed
        (or replaced) come back. Refused while a later commit changed the same pair ids."""
        with self.log.lock:
            info = self.log.commit_info(version)
            if info.kind == "mosaic-create":
                raise FailedPrecondition(f"version: commit {version} creates a mosaic store; only pair commits can be reverted")
            t = self.table(info.tables[0], self.log.head)
            changes, ids = [], []
            for (layer, h), pairs in t.groups.items():
                added, removed = np.flatnonzero(pairs.added_in == version), np.flatnonzero(pairs.removed_in == version)
                if (pairs.removed_in[added] < NEVER).any() or np.isin(pairs.ids[removed], pairs.ids[pairs.added_in > version]).any():
                    raise FailedPrecondition(f"version: pairs of commit {version} in layer {layer} head {h} were changed "
                                             "again by a later commit; revert that one first")
                if len(added) or len(removed):
                    t.check_intact(layer, h, copied=removed.tolist())
                    changes.append(GroupChange(layer, h, added, pairs.ids[removed], pairs.keys[removed],
                                               pairs.values[removed], [pairs.labels[s] for s in removed]))
                    ids += pairs.ids[np.concatenate([added, removed])].tolist()
            result = self._commit(t, changes, "revert", author, message or f"revert {version}: {info.message}",
                                  np.unique(np.array(ids, np.int64)))
            return CommitResult(version=result.version, rows_changed=result.rows_changed)

    def gc(self, conn, retained) -> int:
        """Delete pair rows that no retained version reads (inside gc's transaction); returns the count."""
        keep_versions = sorted(retained)
        stale = []
        for t in self.tables.values():
            for (layer, head), pairs in t.groups.items():
                for i, a, r in zip(pairs.ids.tolist(), pairs.added_in.tolist(), pairs.removed_in.tolist()):
                    j = bisect.bisect_left(keep_versions, a)  # the oldest retained version >= added_in
                    if j == len(keep_versions) or keep_versions[j] >= r:
                        stale.append((t.name, layer, head, i, a, r))
        conn.executemany("delete from mosaic_pairs where tbl=? and layer=? and head=? and pair_id=? and added_in=?",
                         [s[:5] for s in stale])
        gone, ended = {}, {}  # (store, commit) -> what of its pairs' records / removals records gc deleted here
        for name, layer, head, i, a, r in stale:
            gone.setdefault((name, a), set()).add((layer, head, i))
            ended.setdefault((name, r), set()).add((layer, head, i, a))
        for (name, a), keys in gone.items():
            for (record,) in conn.execute("select pairs from pair_sums where tbl=? and commit_id=?", [name, a]).fetchall():
                conn.execute("update pair_sums set pairs=? where tbl=? and commit_id=?", [without(record, keys, 4), name, a])
        for (name, r), keys in ended.items():
            for (record,) in conn.execute("select keys from removals where tbl=? and commit_id=?", [name, r]).fetchall():
                conn.execute("update removals set keys=? where tbl=? and commit_id=?", [lifetimes.without(record, keys, 4), name, r])
        return len(stale)

    # ---------------------------------------------------------------- reads

    def query(self, name, layer, head, queries, *, beta=None, policy=None, mode="exact", k=0,
              lsh: LshParams | None = None, version=None, tag=None, limits: MosaicLimits | None = None) -> MosaicResult:
        """Kernel regression of queries (m, key_dim) over group (layer, head) at a version.

        β: `beta`, else `policy` (β1·n^α + β0 over the n pairs read), else the store's policy.
        mode: "exact", "topk" (needs k >= 1) or "lsh" (`lsh` knobs). ``limits``: the most work
        a server accepts (ResourceExhausted beyond)."""
        if mode not in MODES:
            raise InvalidArgument(f"mode: {mode!r} is not one of {', '.join(MODES)}")
        v = self.log.resolve_version(version, tag)
        t = self.table(name, v)
        pairs = t.group(layer, head)
        t.check_intact(layer, head, v)
        queries = check_matrix("queries", queries, t.key_dim, "key dim")
        if mode == "topk" and k < 1:
            raise InvalidArgument(f"k: TOPK needs k >= 1, got {k}")
        lsh = check_lsh(lsh or LshParams())
        alive = pairs.alive(v)
        n = int(np.count_nonzero(alive))
        check_query_work(limits, len(queries), n, mode, k, lsh)
        beta = resolve_beta(beta, check_policy(policy) if policy is not None else t.policy, n)
        result = MosaicResult(outputs=None, lse=None, n=n, version=v, beta=beta, mode=mode)
        if n == 0 or mode == "exact":
            result.outputs, result.lse, _ = kernel_regression(queries, *pairs.live(alive), beta)
        elif mode == "topk":
            self._topk(t, layer, head, v, queries, beta, k, result)
        else:
            self._lsh(t, layer, head, v, queries, beta, lsh, result, limits)
        return result

    def _topk(self, t, layer, head, v, queries, beta, k, result):
        def make(slots, keys):
            from indexes.ann import IndexConfig, build_index

            return build_index(IndexConfig(kind=t.topk_index, metric="ip", progress=False), slots, keys)

        index = t.following(("topk", layer, head), make) if t.topk_index else None
        with index.lock if index else nullcontext():
            pairs = t.groups[(layer, head)]  # the newest, read under the lock: the index never runs ahead of it
            alive = pairs.alive(v)
            if index is None or v < pairs.last_change():  # the index holds the group's newest pairs only
                result.outputs, result.lse, _ = topk_regression(queries, *pairs.live(alive), beta, k)
                return
            result.index_lag = index.sync(pairs, alive)
            result.outputs, result.lse, _ = topk_regression(queries, pairs.keys, pairs.values, beta, k,
                                                            lambda q, kk: index.index.search(q, kk))

    def _lsh(self, t, layer, head, v, queries, beta, lsh, result, limits):
        def make(slots, keys, values):
            tables = lsh.tables or (choose_tables(lsh.bits, lsh.budget, hashed_cosines(keys)) if lsh.budget
                                    else SimHashConfig.tables)
            if limits is not None and tables > limits.max_lsh_tables:
                raise ResourceExhausted(f"lsh.budget: {lsh.budget} needs {tables} tables, over the limit of "
                                        f"{limits.max_lsh_tables}; ask for a smaller budget or fewer bits")
            index = SimHashIndex(SimHashConfig(bits=lsh.bits, tables=tables), t.key_dim)
            index.add(slots, keys, values)  # the index reads its own packed rows (indexes/lsh.py PackedRows)
            return index

        index = t.following(("lsh", layer, head, lsh.bits, lsh.tables, lsh.budget), make, values=True)
        with index.lock:
            pairs = t.groups[(layer, head)]
            result.index_lag = index.sync(pairs, np.ones(len(pairs.ids), bool))  # every retained slot
            result.lsh_tables = index.index.config.tables
            result.outputs, result.lse, _, result.touched = lsh_regression(
                queries, pairs.keys, pairs.values, beta, index.index, alive=pairs.alive(v))
