"""Checking LZ4 frames without trusting them: the hot part of the .aedat4 packet check.

aedat4_check.py lets dv-processing 2.0.4 decode a packet only after its LZ4 frame passed here
(dv spins forever on some damaged LZ4 payloads; see that module). Two entry points, both Numba,
both releasing the GIL, both returning the decoded size or a negative code (LZ4_ERRORS):
- `_lz4_walk(src, p, end)`: checks the frame src[p:end] (header and its checksum, block sizes,
  every sequence's literal and match lengths and match offsets, the end-of-block rules)
  without decoding anything: event packets, where the time goes.
- `_lz4_frame(src, p, end, out, early=False)`: the same checks while decoding the first
  len(out) bytes into out (packet heads and the small frame/IMU/trigger packets).
Both are stricter than the LZ4 library where the format's rules allow it (a zero match offset,
the end-of-block rules): valid encoders never produce those, and dv must never see an error
the library reports. tests/test_aedat4_check.py holds the fast walk equal to a plain
one-sequence-at-a-time reference walk on valid and damaged frames.
"""

from __future__ import annotations

import numba
import numpy as np

LZ4_ERRORS = {-1: "LZ4 frame too short", -2: "no LZ4 frame magic", -3: "bad LZ4 frame header",
               -4: "LZ4 frame cut short", -5: "bad LZ4 block size", -6: "bad LZ4 literal run",
               -7: "bad LZ4 match", -8: "LZ4 block breaks the end-of-block rules",
               -9: "bytes after the LZ4 frame", -10: "bad LZ4 header checksum"}


@numba.njit(cache=True, nogil=True)
def _xxh32_small(src, p, n):
    """xxHash32 (seed 0) of src[p:p+n] for n < 16: the LZ4 frame descriptor checksum."""
    P1, P2, P3, P4, P5 = 2654435761, 2246822519, 3266489917, 668265263, 374761393
    M = 0xFFFFFFFF
    h = (P5 + n) & M
    i = p
    while i + 4 <= p + n:
        v = np.int64(src[i]) | (np.int64(src[i + 1]) << 8) | (np.int64(src[i + 2]) << 16) \
            | (np.int64(src[i + 3]) << 24)
        h = (h + v * P3) & M
        h = (((h << 17) | (h >> 15)) & M) * P4 & M
        i += 4
    while i < p + n:
        h = (h + np.int64(src[i]) * P5) & M
        h = (((h << 11) | (h >> 21)) & M) * P1 & M
        i += 1
    h ^= h >> 15
    h = (h * P2) & M
    h ^= h >> 13
    h = (h * P3) & M
    h ^= h >> 16
    return h


@numba.njit(cache=True, nogil=True)
def _lz4_frame_header(src, p, end):
    """Check the LZ4 frame descriptor at p; -> position of the first block, or an error."""
    if end - p < 7:
        return -1
    if not (src[p] == 0x04 and src[p + 1] == 0x22 and src[p + 2] == 0x4D and src[p + 3] == 0x18):
        return -2
    flg = np.int64(src[p + 4])
    bd = np.int64(src[p + 5])
    if (flg >> 6) != 1 or (flg & 3) != 0 or (bd & 0x8F) != 0 or ((bd >> 4) & 7) < 4:
        return -3
    q = p + 6 + 8 * ((flg >> 3) & 1)
    if q + 1 > end:
        return -1
    if ((_xxh32_small(src, p + 4, q - p - 4) >> 8) & 0xFF) != src[q]:
        return -10
    return q + 1


@numba.njit(cache=True, nogil=True)
def _lz4_frame(src, p, end, out, early=False):
    """Check the LZ4 frame src[p:end] and copy its first len(out) decoded bytes into out.

    Returns the decoded size, or a negative code (see LZ4_ERRORS); with early=True it stops
    (returning len(out)) as soon as out is full, having checked only that far. _lz4_walk checks
    the same rules without decoding (literals past the block maximum are reported there as a
    bad match, unless they end the block).
    Stricter than the LZ4 library where the format's rules allow it (a zero match offset, the
    end-of-block rules): valid encoders never produce those, and dv must never see an error the
    library reports.
    """
    q = _lz4_frame_header(src, p, end)
    if q < 0:
        return q
    flg = np.int64(src[p + 4])
    block_max = np.int64(1) << (8 + 2 * ((np.int64(src[p + 5]) >> 4) & 7))
    indep = (flg >> 5) & 1
    bchk = (flg >> 4) & 1
    cchk = (flg >> 2) & 1
    limit = out.shape[0]
    produced = np.int64(0)
    while True:
        if q + 4 > end:
            return -4
        bs = np.int64(src[q]) | (np.int64(src[q + 1]) << 8) | (np.int64(src[q + 2]) << 16) \
            | (np.int64(src[q + 3]) << 24)
        q += 4
        if bs == 0:
            break
        raw = bs >> 31
        bs &= 0x7FFFFFFF
        if bs > block_max or q + bs + 4 * bchk > end:
            return -5
        if early and produced >= limit:
            return limit
        if raw:
            for i in range(min(bs, max(limit - produced, 0))):
                out[produced + i] = src[q + i]
            produced += bs
        else:
            ip = q
            iend = q + bs
            op = produced
            oend = produced + block_max
            low = produced if indep else np.int64(0)
            last_start = np.int64(-1)
            last_end = np.int64(-1)
            while True:
                token = np.int64(src[ip])
                ip += 1
                n = token >> 4
                if n == 15:
                    while True:
                        if ip >= iend:
                            return -6
                        b = np.int64(src[ip])
                        ip += 1
                        n += b
                        if b != 255:
                            break
                if ip + n > iend or op + n > oend:
                    return -6
                for i in range(min(n, max(limit - op, 0))):
                    out[op + i] = src[ip + i]
                ip += n
                op += n
                if ip == iend:
                    break
                if ip + 2 > iend:
                    return -7
                off = np.int64(src[ip]) | (np.int64(src[ip + 1]) << 8)
                ip += 2
                if off == 0 or op - off < low:
                    return -7
                n = token & 15
                if n == 15:
                    while True:
                        if ip >= iend:
                            return -7
                        b = np.int64(src[ip])
                        ip += 1
                        n += b
                        if b != 255:
                            break
                n += 4
                if op + n > oend or ip >= iend:
                    return -7
                for i in range(min(n, max(limit - op, 0))):
                    out[op + i] = out[op + i - off]
                last_start = op
                op += n
                last_end = op
                if early and op >= limit:
                    return limit
            if last_end >= 0 and (last_end > op - 5 or last_start > op - 12):
                return -8
            produced = op
        q += bs + 4 * bchk
    q += 4 * cchk
    if q != end:
        return -9
    return produced


# The walk of an event packet's LZ4 blocks is the check's hot loop (a 10 M-event file has ~20 M
# sequences). Each token's position comes from the token before it, so walking a block is one
# chain of dependent loads, and the core mostly waits on it. So:
# - "Short" sequences (both lengths < 15: token, <= 14 literals, 2 offset bytes, <= 17 bytes)
#   that start more than _FAST_END bytes before their block's end are walked by fast loops with
#   only the match-offset check, unsigned indices (no negative-index fix-up on the chain), and
#   no per-sequence bounds: such a sequence ends more than 8 bytes before the block does, so no
#   bound can fail, and if it holds the block's last match, the final literals (> 8 bytes) meet
#   the end rules whatever the match's length (they can fail only after a final sequence of at
#   most 8 bytes). Anything else (a long length, a failing offset, the block's last bytes) is
#   walked by _lz4_seq with every rule checked, which then reports the error. Output past the
#   block maximum is checked when a fast loop stops: output only grows and the fast loops raise
#   no other error, so the error is the same.
# - Outputs count from the block's start, and `base` = how far before it a match may reach
#   (produced - low), so a block can be walked before the blocks ahead of it are.
# - _lz4_walk walks up to _LANES compressed blocks of a frame at once (_lz4_walk_lanes),
#   interleaving their independent chains. Linked blocks after the first are walked assuming the
#   blocks before them are full, as LZ4 encoders write all but a frame's last; blocks after one
#   that is not are walked again, one by one. Errors keep their order: an earlier block's first,
#   then a bad block header after the blocks.
# The result is exactly that of the plain one-sequence-at-a-time walk (tests/test_aedat4_check.py
# holds the two equal on valid and damaged frames).
_FAST_END = 25                 # a short sequence (<= 17 bytes), then a final one of <= 8
_LANES = 4                     # blocks walked at once (_lz4_lanes_fast is written for 4)
_SHORT_TOKEN = np.array([(t >> 4) < 15 and (t & 15) < 15 for t in range(256)], np.bool_)


@numba.njit(cache=True, nogil=True)
def _lz4_seq(src, ip, iend, op, olim, base):
    """Walk the sequence at ip (< iend) with every bound checked. op: decoded bytes so far in
    this block, olim: the block maximum, base: how far before the block a match may reach.
    -> (code, ip, op, match start): code 0 after a match, 1 when the literals end the block,
    else the error (see LZ4_ERRORS)."""
    token = np.int64(src[ip])
    ip += 1
    n = token >> 4
    if n == 15:
        while True:
            if ip >= iend:
                return -6, ip, op, op
            b = np.int64(src[ip])
            ip += 1
            n += b
            if b != 255:
                break
    ip += n
    op += n
    if ip >= iend:
        if ip == iend and op <= olim:
            return 1, ip, op, op
        return -6, ip, op, op
    if ip + 2 > iend:
        return -7, ip, op, op
    off = np.int64(src[ip]) | (np.int64(src[ip + 1]) << 8)
    ip += 2
    n = token & 15
    if n == 15:
        while True:
            if ip >= iend:
                return -7, ip, op, op
            b = np.int64(src[ip])
            ip += 1
            n += b
            if b != 255:
                break
    if off == 0 or op - off < -base:
        return -7, ip, op, op
    start = op
    op += n + 4
    if ip >= iend or op > olim:
        return -7, ip, op, start
    return 0, ip, op, start


@numba.njit(cache=True, nogil=True)
def _lz4_end_rules(op, last_start, last_end):
    """The block's decoded size, or -8 if its last match ends too close to the block's end."""
    if last_end >= 0 and (last_end > op - 5 or last_start > op - 12):
        return np.int64(-8)
    return op


@numba.njit(cache=True, nogil=True)
def _lz4_walk_from(src, ip, iend, op, olim, base, last_start, last_end):
    """Walk a block from the sequence at ip to its end (state as in _lz4_seq; last_start/end:
    the last match so far, -1 if none); -> the block's decoded size or an error."""
    fast_end = iend - _FAST_END
    x = op + base            # in the fast loop, output counts from `base` before the block
    while True:
        ip_in = ip
        while ip < fast_end:
            t = np.int64(src[np.uint64(ip)])
            if not _SHORT_TOKEN[t]:
                break
            nxt = ip + (t >> 4) + 3
            off = np.int64(src[np.uint64(nxt - 2)]) | (np.int64(src[np.uint64(nxt - 1)]) << 8)
            y = x + (t >> 4)
            if np.uint64(off - 1) >= np.uint64(y):        # off == 0, or reaching too far
                break
            x = y + (t & 15) + 4
            ip = nxt
        if ip != ip_in:
            op = x - base
            if op > olim:
                return np.int64(-7)
            last_end = op
            last_start = op - 4          # only the end rules read it; see the comment above
        code, ip, op, start = _lz4_seq(src, ip, iend, op, olim, base)
        if code < 0:
            return code
        if code == 1:
            return _lz4_end_rules(op, last_start, last_end)
        last_start = start
        last_end = op
        x = op + base


@numba.njit(cache=True, nogil=True)
def _lz4_lanes_fast(src, p0, p1, p2, p3, x0, x1, x2, x3, budget):
    """_lz4_walk_lanes' fast loop: up to `budget` short sequences in each of the four lanes
    (p: the next token, x: output counted from base before the block) -> (p0..p3, x0..x3).
    It stops at the first lane that cannot go on, the lanes before it one sequence ahead.
    Each lane's work is written out in turn (the core interleaves the lanes): computing one
    step of all four at once keeps too much in registers."""
    while budget > 0:
        t = np.int64(src[np.uint64(p0)])
        nxt = p0 + (t >> 4) + 3
        off = np.int64(src[np.uint64(nxt - 2)]) | (np.int64(src[np.uint64(nxt - 1)]) << 8)
        y = x0 + (t >> 4)
        if not _SHORT_TOKEN[t] or np.uint64(off - 1) >= np.uint64(y):
            break
        x0 = y + (t & 15) + 4
        p0 = nxt
        t = np.int64(src[np.uint64(p1)])
        nxt = p1 + (t >> 4) + 3
        off = np.int64(src[np.uint64(nxt - 2)]) | (np.int64(src[np.uint64(nxt - 1)]) << 8)
        y = x1 + (t >> 4)
        if not _SHORT_TOKEN[t] or np.uint64(off - 1) >= np.uint64(y):
            break
        x1 = y + (t & 15) + 4
        p1 = nxt
        t = np.int64(src[np.uint64(p2)])
        nxt = p2 + (t >> 4) + 3
        off = np.int64(src[np.uint64(nxt - 2)]) | (np.int64(src[np.uint64(nxt - 1)]) << 8)
        y = x2 + (t >> 4)
        if not _SHORT_TOKEN[t] or np.uint64(off - 1) >= np.uint64(y):
            break
        x2 = y + (t & 15) + 4
        p2 = nxt
        t = np.int64(src[np.uint64(p3)])
        nxt = p3 + (t >> 4) + 3
        off = np.int64(src[np.uint64(nxt - 2)]) | (np.int64(src[np.uint64(nxt - 1)]) << 8)
        y = x3 + (t >> 4)
        if not _SHORT_TOKEN[t] or np.uint64(off - 1) >= np.uint64(y):
            break
        x3 = y + (t & 15) + 4
        p3 = nxt
        budget -= 1
    return p0, p1, p2, p3, x0, x1, x2, x3


@numba.njit(cache=True, nogil=True)
def _lz4_walk_lanes(src, starts, ends, bases, n, olim, out):
    """Walk the n <= _LANES compressed blocks src[starts[i]:ends[i]] at once, their chains
    interleaved; out[i] = what _lz4_walk_from returns for block i alone (bases[i]: its base).
    A lane without a block of its own (fewer blocks, or its block done) repeats the first live
    lane's work, so the fast loop needs no per-lane branches; its results are dropped."""
    ip = np.empty(_LANES, np.int64)
    op = np.zeros(_LANES, np.int64)
    last_start = np.empty(_LANES, np.int64)
    last_end = np.empty(_LANES, np.int64)
    fast_end = np.empty(_LANES, np.int64)
    live = np.zeros(_LANES, np.bool_)
    alone = np.zeros(_LANES, np.bool_)   # blocks to finish alone
    lane = np.empty(_LANES, np.int64)    # whose state each lane runs: its own or a live lane's
    pos = np.empty(_LANES, np.int64)     # where the fast loop left each lane, and its output
    out_x = np.empty(_LANES, np.int64)
    for k in range(_LANES):
        ip[k] = starts[k]
        last_start[k] = last_end[k] = -1
        fast_end[k] = ends[k] - _FAST_END
        live[k] = k < n
    while True:
        n_live = 0
        for k in range(_LANES):
            n_live += live[k]
        for k in range(_LANES):
            if n_live == 1 and live[k]:
                alone[k] = True
                live[k] = False
            if alone[k]:
                out[k] = _lz4_walk_from(src, ip[k], ends[k], op[k], olim, bases[k],
                                        last_start[k], last_end[k])
                alone[k] = False
        m = -1                           # the first live lane
        for k in range(_LANES - 1, -1, -1):
            if live[k]:
                m = k
        if m < 0:
            return
        budget = np.int64(1 << 62)       # steps no lane can pass its fast end in: a short
        for k in range(_LANES):          # sequence takes <= 17 bytes
            lane[k] = k if live[k] else m
            budget = min(budget, (fast_end[lane[k]] - ip[lane[k]] + 16) // 17)
        i0, i1, i2, i3 = lane[0], lane[1], lane[2], lane[3]
        p0, p1, p2, p3 = ip[i0], ip[i1], ip[i2], ip[i3]
        x0 = op[i0] + bases[i0]          # output counted from `base` before the block
        x1 = op[i1] + bases[i1]
        x2 = op[i2] + bases[i2]
        x3 = op[i3] + bases[i3]
        p0, p1, p2, p3, x0, x1, x2, x3 = _lz4_lanes_fast(src, p0, p1, p2, p3, x0, x1, x2, x3,
                                                         budget)
        pos[0], pos[1], pos[2], pos[3] = p0, p1, p2, p3
        out_x[0], out_x[1], out_x[2], out_x[3] = x0, x1, x2, x3
        for k in range(_LANES):
            if not live[k]:
                continue
            base = bases[k]
            if pos[k] != ip[k]:
                ip[k] = pos[k]
                op[k] = out_x[k] - base
                if op[k] > olim:
                    out[k] = -7
                    live[k] = False
                    continue
                last_end[k] = op[k]
                last_start[k] = op[k] - 4    # as in _lz4_walk_from
            if ip[k] >= fast_end[k]:         # the block's last bytes
                alone[k] = True
                live[k] = False
                continue
            t = np.int64(src[ip[k]])
            p = ip[k] + (t >> 4) + 1
            off = np.int64(src[p]) | (np.int64(src[p + 1]) << 8)
            if _SHORT_TOKEN[t] and np.uint64(off - 1) < np.uint64(op[k] + base + (t >> 4)):
                continue                     # not what stopped the loop
            code, ip[k], op[k], start = _lz4_seq(src, ip[k], ends[k], op[k], olim, base)
            if code < 0 or code == 1:
                out[k] = code if code < 0 else _lz4_end_rules(op[k], last_start[k], last_end[k])
                live[k] = False
            else:
                last_start[k] = start
                last_end[k] = op[k]


@numba.njit(cache=True, nogil=True)
def _lz4_walk(src, p, end):
    """Check the LZ4 frame src[p:end] like _lz4_frame, decoding nothing; -> size or error."""
    q = _lz4_frame_header(src, p, end)
    if q < 0:
        return q
    flg = np.int64(src[p + 4])
    block_max = np.int64(1) << (8 + 2 * ((np.int64(src[p + 5]) >> 4) & 7))
    linked = 1 - ((flg >> 5) & 1)
    bchk = (flg >> 4) & 1
    cchk = (flg >> 2) & 1
    produced = np.int64(0)
    starts = np.zeros(_LANES, np.int64)     # compressed blocks held for the next lane walk
    ends = np.zeros(_LANES, np.int64)
    bases = np.zeros(_LANES, np.int64)
    out = np.zeros(_LANES, np.int64)
    held = 0
    code = np.int64(0)
    done = False
    while not done:
        raw = bs = np.int64(0)
        if q + 4 > end:
            code = -4
        else:
            bs = np.int64(src[q]) | (np.int64(src[q + 1]) << 8) \
                | (np.int64(src[q + 2]) << 16) | (np.int64(src[q + 3]) << 24)
            q += 4
            raw = bs >> 31
            bs &= 0x7FFFFFFF
            if raw == 0 and bs == 0:
                done = True
            elif bs > block_max or q + bs + 4 * bchk > end:
                code = -5
        done = done or code < 0
        if held and (done or raw or held == _LANES):
            # linked blocks are walked assuming the held blocks before them are full; those
            # after one that is not are walked again, one by one, from their real start
            for i in range(held):
                bases[i] = linked * (produced + i * block_max)
            _lz4_walk_lanes(src, starts, ends, bases, held, block_max, out)
            again = False
            for i in range(held):
                if again:
                    out[i] = _lz4_walk_from(src, starts[i], ends[i], np.int64(0), block_max,
                                            produced, np.int64(-1), np.int64(-1))
                if out[i] < 0:
                    return out[i]
                produced += out[i]
                again = again or (linked and out[i] != block_max)
            held = 0
        if done:
            break
        if raw:
            produced += bs
        else:
            starts[held] = q
            ends[held] = q + bs
            held += 1
        q += bs + 4 * bchk
    if code < 0:
        return code
    q += 4 * cchk
    if q != end:
        return np.int64(-9)
    return produced
