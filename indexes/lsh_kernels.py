"""The compiled (numba) half of a SimHash read (indexes/lsh.py): the inclusion probability
as the kernel evaluates it, the bucket walk (`collide`) and the weighing of retrieved rows,
plain (`read`) or over a `PackedRows` copy (`sample_packed`), released from the GIL.
"""

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic


def inclusion(cosine, bits, tables):
    """u(p) = P[at least 2 of L tables collide], p = 1 − arccos(cos)/π, in float64.

    1 − P[0] − P[1] cancels when L·p^K is small, and a retrieved key's weight is 1/u, so there
    we use the leading term C(L, 2) t² (1 − t)^(L−2) (relative error < L·t/3 < 1e-5).
    """
    p = 1.0 - math.acos(min(max(cosine, -1.0), 1.0)) / math.pi
    t = p**bits  # P[one table collides]
    miss = math.log1p(-min(t, 1.0 - 1e-16))  # log(1 − t), finite when p = 1
    if tables * t < 3e-5:
        return tables * (tables - 1) / 2 * t * t * math.exp((tables - 2) * miss)
    return -math.expm1(tables * miss) - tables * t * math.exp((tables - 1) * miss)


_inclusion_scalar = numba.njit(cache=True)(inclusion)  # the kernel's scalar copy


def bitsets(n):
    """Zeroed scratch for `collide`: seen-once and seen-twice bits over n slots."""
    words = (n + 63) // 64
    return np.zeros(words, np.uint64), np.zeros(words, np.uint64)


@numba.njit(cache=True, nogil=True)
def collide(code, order, starts, once, twice, slots, lo, hi):
    """Slots in [lo, hi) sharing a bucket with `code` (L,) in >= 2 tables, ascending: writes them
    to slots[lo:] and returns them. once, twice: `bitsets`, zero on entry and on exit in the words
    of [lo, hi); lo is a multiple of 64, so callers with disjoint ranges share the bitsets. A
    bucket's slots are ascending (a stable sort), so binary search finds the range in each.

    Two bitsets (125 KB each at n = 10^6, in L2) rather than a byte counter per slot (1 MB): the
    list comes from scanning the seen-twice words, skipping zero ones, and only those words are
    cleared (2.7 -> 1.9 ms a query at n = 10^6, 328k collisions, issue #6). Ascending slots make
    the row reads that follow move forward through memory."""
    for t in range(code.shape[0]):
        first, end = starts[t, code[t]], starts[t, code[t] + 1]
        bucket = order[first:end]
        for j in range(first + np.searchsorted(bucket, lo), first + np.searchsorted(bucket, hi)):
            s = order[j]
            bit = np.uint64(1) << np.uint64(s & 63)
            twice[s >> 6] |= once[s >> 6] & bit
            once[s >> 6] |= bit
    count = lo
    for w in range(lo >> 6, (hi + 63) >> 6):
        bits = twice[w]
        if bits:
            twice[w] = 0
            while bits:
                slots[count] = (w << 6) + trailing_zeros(bits)
                count += 1
                bits &= bits - np.uint64(1)
    once[lo >> 6:(hi + 63) >> 6] = 0
    return slots[lo:count]


@intrinsic
def _prefetch(typingctx, array, index):
    """Ask the CPU for the cache line of array[index] now (llvm.prefetch: read, keep cached);
    index: an integer or a tuple of them."""

    def codegen(context, builder, signature, args):
        array_type, index_type = signature.args
        array = context.make_array(array_type)(context, builder, args[0])
        if isinstance(index_type, types.BaseTuple):
            index = [context.cast(builder, a, t, types.intp)
                     for a, t in zip(cgutils.unpack_tuple(builder, args[1]), index_type.types)]
        else:
            index = [context.cast(builder, args[1], index_type, types.intp)]
        pointer = cgutils.get_item_pointer(context, builder, array_type, array, index)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(pointer, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(array, index), codegen


@intrinsic
def _half(typingctx, rows, row, j):
    """The j-th float16 of rows[row] (float32 words holding float16 pairs, low half first) as a
    float32. One float16 per call keeps a row's loop contiguous, so LLVM vectorises it into
    8-wide F16C conversions: scoring 2.9x faster than unpacking a word's two halves together."""

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        start = [context.cast(builder, args[1], signature.args[1], types.intp), context.get_constant(types.intp, 0)]
        halves = builder.bitcast(cgutils.get_item_pointer(context, builder, array_type, array, start),
                                 ir.IntType(16).as_pointer())
        bits = builder.load(builder.gep(halves, [context.cast(builder, args[2], signature.args[2], types.intp)]))
        return builder.fpext(builder.bitcast(bits, ir.HalfType()), ir.FloatType())

    return types.float32(rows, row, j), codegen


@numba.njit(cache=True, nogil=True, inline="always")  # as a call: ~25% of the scoring pass
def log_inclusion(cosine, log_u, bits, tables):
    """log u_i from the `log_inclusion_table` cubics, or exactly where they are NaN (or cos ∉ [-1, 1])."""
    if -1.0 <= cosine <= 1.0:
        x = (cosine + 1.0) * (log_u.shape[0] / 2)
        cell = min(int(x), log_u.shape[0] - 1)
        x -= cell
        if log_u[cell, 0] == log_u[cell, 0]:
            return log_u[cell, 0] + x * (log_u[cell, 1] + x * (log_u[cell, 2] + x * log_u[cell, 3]))
    return math.log(_inclusion_scalar(cosine, bits, tables))


@numba.njit(cache=True, nogil=True, inline="always")
def _online_weight(score, cosine, top, total, acc, log_u, bits, tables):
    """One retrieved key of the online softmax, score = β q·k_i: -> (top, total, w_i / e^top) with
    top the running max and total Σ w / e^top so far; acc is rescaled in place when top grows."""
    if score > top:
        scale = math.exp(top - score)
        total *= scale
        acc *= acc.dtype.type(scale)
        top = score
    weight = math.exp(score - top - log_inclusion(cosine, log_u, bits, tables))
    return top, total + weight, weight


# Rows asked for ahead of use: enough to keep several random reads in flight, few enough that
# they are still cached when used (4 and 8 measured alike at n = 10^6, d = 64; none: 1.6x slower).
_AHEAD = 4


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _weigh(q, slots, rows, norms, keys, values, beta, shift, q_norm, bits, tables, log_u, alive):
    """-> (Σ_S w_i v_i / e^top (dv,), top, Σ_S w_i / e^top, |S|), w_i = exp(β q·k_i)/u_i over
    the retrieved slots (rows: their ids) whose rows are alive (all when `alive` is empty).
    One pass, each row read once: top is the running max of β q·k (online softmax; acc is
    rescaled when it grows). Dot products and acc in the store's dtype, weights and u in float64."""
    top, total, kept = -np.inf, 0.0, 0
    acc = np.zeros(values.shape[1], values.dtype)  # local: no aliasing with the rows, so it vectorises
    for i in range(slots.shape[0]):
        if i + _AHEAD < slots.shape[0]:  # random rows: prefetch, or wait for each in turn
            ahead = rows[i + _AHEAD]
            for j in range(0, keys.shape[1], 64 // keys.itemsize):  # each 64-byte line of the row
                _prefetch(keys, (ahead, j))
            for j in range(0, values.shape[1], 64 // values.itemsize):
                _prefetch(values, (ahead, j))
            _prefetch(norms, slots[i + _AHEAD])
        row = rows[i]
        if alive.shape[0] and not alive[row]:
            continue
        kept += 1
        dot = keys.dtype.type(0)
        for j in range(keys.shape[1]):
            dot += q[j] * keys[row, j]
        cosine = (dot - shift) / (q_norm * max(norms[slots[i]], 1e-12))  # the hashed cosine
        top, total, weight = _online_weight(beta * np.float64(dot), cosine, top, total, acc, log_u, bits, tables)
        w = values.dtype.type(weight)
        for j in range(values.shape[1]):
            acc[j] += w * values[row, j]
    return acc, top, total, kept


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _weigh_packed(q, slots, ids, norms, rows, dk, dv, half, beta, shift, q_norm, bits, tables, log_u, alive):
    """`_weigh` over a `PackedRows` copy: row slots[i] holds the key (dk values) then the dv values,
    float16 pairs in float32 words when `half`, else float32; ids (n,): every slot's id, for
    `alive`. float32 sums."""
    top, total, kept = -np.inf, 0.0, 0
    key_words = np.uint64((dk + 1) // 2 if half else dk)
    acc = np.zeros(dv, np.float32)
    for i in range(slots.shape[0]):
        if i + _AHEAD < slots.shape[0]:
            for j in range(0, rows.shape[1], 16):  # each 64-byte line of the row
                _prefetch(rows, (slots[i + _AHEAD], j))
            _prefetch(norms, slots[i + _AHEAD])
        row = np.uint64(slots[i])  # unsigned indexes skip numba's negative-index wraparound, which kept
        if alive.shape[0] and not alive[ids[row]]:  # the row loops from vectorising (scoring 1.8x slower)
            continue
        kept += 1
        dot = np.float32(0)
        if half:
            for j in range(dk):
                dot += q[j] * _half(rows, row, j)
        else:
            for j in range(key_words):
                dot += q[j] * rows[row, j]
        cosine = (dot - shift) / (q_norm * max(norms[row], 1e-12))  # the hashed cosine
        top, total, weight = _online_weight(beta * np.float64(dot), cosine, top, total, acc, log_u, bits, tables)
        w = np.float32(weight)
        if half:
            for j in range(dv):
                acc[j] += w * _half(rows, row, 2 * key_words + j)
        else:
            for j in range(dv):
                acc[j] += w * rows[row, key_words + j]
    return acc, top, total, kept


@numba.njit(cache=True, nogil=True)
def sample_packed(lo, hi, q, code, order, starts, once, twice, buffer, ids, norms, rows, dk, dv, half, beta, shift,
                   q_norm, bits, tables, log_u, alive):
    """`collide` over slots [lo, hi), then `_weigh_packed` over what it retrieved: one range's
    whole read, GIL released."""
    slots = collide(code, order, starts, once, twice, buffer, lo, hi)
    return _weigh_packed(q, slots, ids, norms, rows, dk, dv, half, beta, shift, q_norm, bits, tables, log_u, alive)


@numba.njit(cache=True, nogil=True)
def read(queries, codes, order, starts, ids, norms, centre, keys, values, beta, bits, tables, log_u, alive, out, lse,
          retrieved):
    """For each query m: S = `collide` of its codes[:, m], then `_weigh` over S. Writes
    out[m] = Σ_S w_i v_i / Σ_S w_i, lse[m] = log Σ_S w_i and retrieved[m] = |S| (0, -inf, 0 when
    S is empty: the empty-shard convention). Scratch is per call, so reads may run in parallel."""
    once = np.zeros((ids.shape[0] + 63) // 64, np.uint64)
    twice = np.zeros_like(once)
    buffer = np.empty(ids.shape[0], np.int32)
    for m in range(queries.shape[0]):
        q = queries[m].astype(keys.dtype)
        shift = (q.astype(np.float64) * centre).sum()  # hashed cosine = (q·k − q·c) / (|q| |k − c|)
        q_norm = math.sqrt((q.astype(np.float64) ** 2).sum())
        slots = collide(codes[:, m], order, starts, once, twice, buffer, 0, ids.shape[0])
        # ids gathered first: read inside the loop they delay each prefetch by a dependent load
        acc, top, total, retrieved[m] = _weigh(q, slots, ids[slots], norms, keys, values, beta, shift, q_norm,
                                               bits, tables, log_u, alive)
        if total > 0:
            out[m] = acc / total
            lse[m] = top + math.log(total)
        else:
            out[m] = 0
            lse[m] = -np.inf
