"""The LZ4 walk of the .aedat4 packet check (evstream/sources/lz4_check.py, used by
aedat4_check.py) against a plain reference walk written here from the LZ4 frame and block
format, one sequence at a time, with the check's rules and error codes. The fast walk (short-sequence loops, four blocks at once,
later blocks' starts guessed) must give the same decoded size or the same error code on valid
frames (from the small LZ4 writer below, and from dv-processing) and on damaged ones (flipped
bits, bad tokens and offsets, truncations, bad block sizes, trailing bytes)."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from conftest import random_events
from evstream.sources import aedat4_check as chk
from evstream.sources import lz4_check as lz4
from evstream.sources.writer import Aedat4Writer

# -- the reference: one sequence at a time, every rule checked where the format puts it ---------


@numba.njit(cache=True)
def _ref_length(src, ip, iend, n):
    """A length nibble of 15 continues in bytes while they are 255 -> (length, ip, ok)."""
    if n == 15:
        while True:
            if ip >= iend:
                return n, ip, False
            b = np.int64(src[ip])
            ip += 1
            n += b
            if b != 255:
                break
    return n, ip, True


@numba.njit(cache=True)
def ref_block(src, ip, iend, op, oend, low):
    """Walk one compressed block: -> op after it, or -6 (literals), -7 (match), -8 (end rules)."""
    last_start = last_end = np.int64(-1)
    while True:
        token = np.int64(src[ip])
        lit, ip, ok = _ref_length(src, ip + 1, iend, token >> 4)
        if not ok:
            return -6
        ip += lit
        op += lit
        if ip >= iend:                       # literals reach the block's end: the last sequence
            if ip > iend or op > oend:
                return -6
            break
        if ip + 2 > iend:
            return -7
        offset = np.int64(src[ip]) + 256 * np.int64(src[ip + 1])
        length, ip, ok = _ref_length(src, ip + 2, iend, token & 15)
        if not ok or offset == 0 or op - offset < low:
            return -7
        last_start = op
        op += length + 4
        last_end = op
        if ip >= iend or op > oend:
            return -7
    if last_end >= 0 and (op - last_end < 5 or op - last_start < 12):
        return -8
    return op


@numba.njit(cache=True)
def ref_walk(src, p, end):
    """Walk the LZ4 frame src[p:end] block by block: -> decoded size or the error code."""
    q = lz4._lz4_frame_header(src, p, end)
    if q < 0:
        return q
    flg = np.int64(src[p + 4])
    block_max = np.int64(1) << (8 + 2 * ((np.int64(src[p + 5]) >> 4) & 7))
    produced = np.int64(0)
    while True:
        if q + 4 > end:
            return -4
        size = np.int64(src[q]) + 256 * np.int64(src[q + 1]) + 65536 * np.int64(src[q + 2]) \
            + 16777216 * np.int64(src[q + 3])
        q += 4
        if size == 0:
            break
        raw = size >= 2 ** 31
        size %= 2 ** 31
        if size > block_max or q + size + 4 * ((flg >> 4) & 1) > end:
            return -5
        if raw:
            produced += size
        else:
            low = produced if (flg >> 5) & 1 else 0
            produced = ref_block(src, q, q + size, produced, produced + block_max, low)
            if produced < 0:
                return produced
        q += size + 4 * ((flg >> 4) & 1)
    q += 4 * ((flg >> 2) & 1)
    return produced if q == end else -9


# -- a small LZ4 frame writer: random sequences (the walk never decodes, so any bytes do) -------


@numba.njit(cache=True)
def _put_sequence(out, o, lit, offset, length):
    """Write a sequence with `lit` (random) literals at out[o:] (offset 0: literals only, the
    block's last sequence) -> the position after it."""
    m = length - 4
    out[o] = (min(lit, 15) << 4) | (min(m, 15) if offset else 0)
    o = _put_length_bytes(out, o + 1, lit)
    out[o:o + lit] = np.random.randint(0, 256, lit).astype(np.uint8)
    o += lit
    if offset == 0:
        return o
    out[o] = offset & 255
    out[o + 1] = offset >> 8
    return _put_length_bytes(out, o + 2, m)


@numba.njit(cache=True)
def _put_length_bytes(out, o, length):
    """The extra length bytes of a token nibble of 15 (255s, then the rest) -> position after."""
    n = length - 15
    while n >= 0:
        out[o] = min(n, 255)
        o += 1
        n = n - 255 if n >= 255 else -1
    return o


@numba.njit(cache=True)
def _random_block(seed, size, history, style):
    """A valid compressed block decoding to `size` bytes, `history` bytes before it in reach.
    style 0: mostly short sequences (as dv writes events), 1: many long lengths and offsets at
    the edge of reach."""
    np.random.seed(seed)
    out = np.zeros(2 * size + 64, np.uint8)
    o = np.int64(0)
    op = np.int64(0)
    while size - op >= 13 and np.random.random() >= 0.0005:
        r = np.random.random()
        lit = np.random.randint(0, 2) if r < 0.7 - 0.4 * style else (
            np.random.randint(2, 15) if r < 0.9 - 0.3 * style else np.random.randint(15, 600))
        lit = min(lit, size - 12 - op)               # the last match starts >= 12 before the end
        if op + lit + history == 0:
            lit = 1                                  # nothing to copy from yet
        start = op + lit
        r = np.random.random()
        length = np.random.randint(4, 19) if r < 0.9 - 0.4 * style else np.random.randint(19, 700)
        length = min(length, size - 5 - start)       # and ends >= 5 before it
        reach = min(start + history, 65535)
        r = np.random.random()
        offset = np.random.randint(1, min(reach, 64) + 1) if r < 0.8 - 0.5 * style else (
            reach if r < 0.9 else np.random.randint(1, reach + 1))
        o = _put_sequence(out, o, lit, offset, length)
        op = start + length
    o = _put_sequence(out, o, size - op, 0, 4)       # the last sequence: literals only
    return out[:o].copy()


def lz4_frame(rng, sizes, *, linked=True, raw=(), style=0, **flags) -> bytes:
    """An LZ4 frame whose blocks decode to `sizes` bytes; blocks whose index is in `raw` are
    stored uncompressed. flags: as for frame_of."""
    blocks, produced = [], 0
    for k, size in enumerate(sizes):
        if k in raw:
            blocks.append((rng.integers(0, 256, size, dtype=np.uint8).tobytes(), True))
        else:
            history = produced if linked else 0
            seed = int(rng.integers(2 ** 31))
            blocks.append((_random_block(seed, size, history, style).tobytes(), False))
        produced += size
    return frame_of(rng, blocks, linked=linked, **flags)


def frame_of(rng, blocks, *, linked=True, block_checksums=False, content_checksum=False,
             content_size=False, bd=4) -> bytes:
    """An LZ4 frame of the given (block bytes, stored uncompressed) pairs."""
    flg = 0x40 | (0 if linked else 0x20) | (0x10 if block_checksums else 0) \
        | (0x08 if content_size else 0) | (0x04 if content_checksum else 0)
    desc = bytes([flg, bd << 4]) + (bytes(8) if content_size else b"")
    hc = (int(lz4._xxh32_small(np.frombuffer(desc, np.uint8), 0, len(desc))) >> 8) & 0xFF
    out = bytearray(b"\x04\x22\x4d\x18" + desc + bytes([hc]))
    for data, raw in blocks:
        out += (len(data) | (1 << 31 if raw else 0)).to_bytes(4, "little") + data
        out += rng.bytes(4) if block_checksums else b""
    out += bytes(4) + (rng.bytes(4) if content_checksum else b"")
    return bytes(out)


def _length_bytes(n: int) -> bytes:
    return bytes([255] * (n // 255) + [n % 255])


def block_of(seqs, tail: int | None) -> bytes:
    """A compressed block written by hand: seqs of (literals, match offset, match length), then
    `tail` final literals (None: no final sequence). Literal bytes are zeros: the walk never
    reads them."""
    out = bytearray()
    for lit, offset, length in seqs:
        out.append((min(lit, 15) << 4) | min(length - 4, 15))
        out += (_length_bytes(lit - 15) if lit >= 15 else b"") + bytes(lit)
        out += offset.to_bytes(2, "little")
        out += _length_bytes(length - 19) if length >= 19 else b""
    if tail is not None:
        out.append(min(tail, 15) << 4)
        out += (_length_bytes(tail - 15) if tail >= 15 else b"") + bytes(tail)
    return bytes(out)


def _frames(rng):
    """Valid frames of every shape the walk handles differently."""
    full = 1 << 16
    yield lz4_frame(rng, [full, full, full, 5000])                          # as dv writes them
    yield lz4_frame(rng, [full] * 5, style=1)
    yield lz4_frame(rng, [full, full, 300], linked=False)
    yield lz4_frame(rng, [full, full, full], block_checksums=True, content_checksum=True,
                    content_size=True)
    yield lz4_frame(rng, [full, 1000, full, 40, full])                     # short inner blocks
    yield lz4_frame(rng, [700, full, 3], linked=False, style=1)
    yield lz4_frame(rng, [full, full, full, full], raw=(1,))
    yield lz4_frame(rng, [full, 2000, full], raw=(0, 2))
    yield lz4_frame(rng, [1 << 18, 1 << 18, 7000], bd=5)
    yield lz4_frame(rng, [0, 12, 13, 4])                                    # tiny blocks
    yield lz4_frame(rng, [])
    for _ in range(6):
        n = int(rng.integers(1, 6))
        yield lz4_frame(rng, [int(rng.integers(0, full + 1)) for _ in range(n)],
                        linked=bool(rng.integers(2)), block_checksums=bool(rng.integers(2)),
                        style=int(rng.integers(2)))


def _damage(rng, frame: bytes, blocks: list[tuple[int, int]]):
    """Damaged copies of a frame -> (bytes, end): flipped bits anywhere and near block ends
    (where the walk leaves its fast loop), bad tokens and offsets, cut or extended frames."""
    n = len(frame)
    for kind in range(12):
        b = bytearray(frame)
        end = n
        if kind < 3:                                      # a few flipped bits anywhere
            for pos in rng.integers(0, n, kind + 1):
                b[pos] ^= 1 << int(rng.integers(8))
        elif blocks and kind < 6:                         # near a block's start or end
            start, stop = blocks[int(rng.integers(len(blocks)))]
            pos = int(rng.integers(max(start, stop - 40), stop)) if kind < 5 else \
                int(rng.integers(start, min(stop, start + 40)))
            b[pos] ^= 1 << int(rng.integers(8))
        elif blocks and kind < 9:                         # a byte set to a telling value
            start, stop = blocks[int(rng.integers(len(blocks)))]
            pos = int(rng.integers(start, stop))
            b[pos] = (0xFF, 0x00, 0xF0)[kind - 6]
        elif kind == 9:
            end = int(rng.integers(0, n))                 # cut short
        elif kind == 10:
            b += rng.bytes(int(rng.integers(1, 9)))      # bytes after the frame
            end = len(b)
        elif blocks:                                      # a block size changed
            start, _ = blocks[int(rng.integers(len(blocks)))]
            b[start - 4 + int(rng.integers(3))] ^= 1 << int(rng.integers(8))
        yield bytes(b), end


def _block_spans(frame: bytes) -> list[tuple[int, int]]:
    flg = frame[4]
    q = 7 + 8 * ((flg >> 3) & 1)
    spans = []
    while (size := int.from_bytes(frame[q:q + 4], "little")) != 0:
        spans.append((q + 4, q + 4 + (size & 0x7FFFFFFF)))
        q += 4 + (size & 0x7FFFFFFF) + 4 * ((flg >> 4) & 1)
    return spans


def _readonly(a: np.ndarray) -> np.ndarray:
    """Read-only, like the checker's memory map: numba then compiles one version of each walk."""
    a.flags.writeable = False
    return a


def _walks(data: bytes, end: int | None, pad: int = 16) -> tuple[int, int]:
    """(fast walk, reference walk) of the frame data[:end], placed after and before other bytes:
    the bytes around a frame must not change its answer."""
    end = len(data) if end is None else end
    rng = np.random.default_rng(end)
    buf = np.frombuffer(rng.bytes(pad) + data[:end] + rng.bytes(pad), np.uint8)
    got = int(lz4._lz4_walk(buf, pad, pad + end))
    assert got == int(lz4._lz4_walk(np.frombuffer(data[:end] + bytes(pad), np.uint8), 0, end))
    return got, int(ref_walk(buf, pad, pad + end))


# -- the tests ------------------------------------------------------------------------------------

def test_valid_frames_walk_to_their_size():
    rng = np.random.default_rng(1)
    for frame in _frames(rng):
        got, want = _walks(frame, len(frame))
        assert got == want >= 0


def test_damaged_frames_give_the_reference_error():
    rng = np.random.default_rng(2)
    seen = set()
    for frame in _frames(rng):
        spans = _block_spans(frame)
        for _ in range(25):
            for data, end in _damage(rng, frame, spans):
                got, want = _walks(data, end)
                assert got == want, (len(frame), end)
                seen.add(min(want, 0))
    # the damage reaches every rule (else this test would prove little)
    assert seen >= {0, -1, -2, -3, -4, -5, -6, -7, -8, -9, -10}, seen


def test_second_block_walked_again_when_the_first_is_short():
    """Linked blocks: B is walked alongside A assuming A fills its 64 KiB; a match in B that
    reaches before the frame's start is caught only with A's real size (1000 bytes)."""
    rng = np.random.default_rng(3)
    a = (block_of([(1, 1, 4)] * 190, 50), False)                  # 1000 bytes
    n_b = 2000 * 5 + 5 + 500 * 5 + 20
    for reach, ok in ((0, True), (1, False)):
        # B: 2000 short sequences (10,000 bytes), one whose match reaches `reach` bytes before
        # the frame's first byte, 500 more, 20 final literals
        b = (block_of([(1, 1, 4)] * 2000 + [(1, 1000 + 10_001 + reach, 4)] + [(1, 3, 4)] * 500,
                      20), False)
        two = frame_of(rng, [a, b])
        assert _walks(two, len(two)) == ((1000 + n_b,) * 2 if ok else (-7, -7))
        three = frame_of(rng, [a, b, b])
        assert _walks(three, len(three)) == ((1000 + 2 * n_b,) * 2 if ok else (-7, -7))
    # unlinked blocks: a match reaches only into its own block, whatever came before
    for reach, ok in ((10_001, True), (10_002, False)):
        b = (block_of([(1, 1, 4)] * 2000 + [(1, reach, 4)], 20), False)
        frame = frame_of(rng, [a, b], linked=False)
        assert _walks(frame, len(frame)) == ((1000 + 10_025,) * 2 if ok else (-7, -7))


def test_stored_blocks_between_compressed_ones():
    """A block stored uncompressed counts for the matches after it, not before."""
    rng = np.random.default_rng(6)
    stored = (bytes(3000), True)
    before = (block_of([(1, 1, 4)] * 998, 10), False)                      # 5000 bytes
    for reach, ok in ((0, True), (1, False)):
        # 5000 bytes, one match reaching `reach` bytes before the frame's first byte
        a = (block_of([(1, 1, 4)] * 200 + [(1, 1001 + reach, 4)] + [(1, 1, 4)] * 797, 10), False)
        assert _walks(frame_of(rng, [a, stored]), None) == ((8000,) * 2 if ok else (-7, -7))
        assert _walks(frame_of(rng, [stored, a]), None) == (8000, 8000)     # into the stored
        b = (block_of([(1, 1, 4)] * 200 + [(1, 5000 + 3000 + 1001 + reach, 4)], 20), False)
        frame = frame_of(rng, [before, stored, b])
        assert _walks(frame, None) == ((9025,) * 2 if ok else (-7, -7))


def _with_block_size(frame: bytes, k: int, size: int) -> bytes:
    """The frame with block k's size field set to `size`."""
    start = _block_spans(frame)[k][0]
    return frame[:start - 4] + size.to_bytes(4, "little") + frame[start:]


def test_errors_keep_their_order():
    """The frame's first error is the one reported, whichever block of a pair, or which block
    header after them, holds it."""
    rng = np.random.default_rng(4)
    short = [(1, 1, 4)] * 3000
    ok = block_of(short, 20)
    bad = {-7: block_of(short[:1500] + [(1, 0, 4)] + short[1500:], 20),    # a zero offset
           -6: block_of(short, 30)[:-10],                                   # literals cut off
           -8: block_of(short, 3)}                                          # match ends too late
    assert _walks(frame_of(rng, [(ok, False)]), None) == (15_020,) * 2
    for first, second in ((-7, -6), (-6, -7), (-8, -7), (-7, -8), (-6, -8)):
        frame = frame_of(rng, [(bad[first], False), (bad[second], False)])
        assert _walks(frame, None) == (first, first)
        frame = frame_of(rng, [(ok, False), (bad[first], False), (bad[second], False)])
        assert _walks(frame, None) == (first, first)
        frame = frame_of(rng, [(ok, False), (ok, False), (bad[first], False)])
        assert _walks(frame, None) == (first, first)
        # a block after them too big for the frame's blocks (64 KiB): reported after them
        frame = frame_of(rng, [(ok, False), (bad[first], False), (ok, False)])
        assert _walks(_with_block_size(frame, 2, 1 << 20), None) == (first, first)
        frame = frame_of(rng, [(bad[first], False), (ok, False)])
        assert _walks(_with_block_size(frame, 1, 1 << 20), None) == (first, first)
    for blocks in ([ok], [ok, ok], [ok, ok, ok]):
        frame = frame_of(rng, [(b, False) for b in blocks] + [(ok, False)])
        assert _walks(_with_block_size(frame, len(blocks), 1 << 20), None) == (-5, -5)
        frame = frame_of(rng, [(b, False) for b in blocks])
        assert _walks(frame[:-4], None) == (-4, -4)               # no end mark


def test_rules_at_the_edges_of_the_fast_loops():
    """The rules the fast loops check late or not at all, where they bite: a block ending right
    after a match (a short sequence ending exactly at the block's end), output past the block
    maximum in short sequences, a zero offset, sequences just before the end (end rules), each
    in a block walked alone or beside others (first or later in the frame)."""
    rng = np.random.default_rng(5)
    short = [(1, 1, 4)] * 3000
    full = block_of([(1, 1, 4)] * 13_100, 36)                          # 65,536 bytes
    cases = {block_of([(1, 1, 4)] * 13_108, 20): -7,                   # 65,560 bytes
             block_of(short[:10] + [(0, 0, 4)] + short, 20): -7}
    # before the end: 3000 sequences of 5 bytes (3 compressed), or 900 of the longest short
    # ones (18 bytes, 17 compressed: the fast loops' steps are counted by these)
    for before, size_before, lits in ((short, 15_000, range(16)),
                                      ([(14, 1, 4)] * 900, 16_200, (0, 13, 14))):
        for pad in range(2):
            seqs = before + [(0, 1, 4)] * pad
            for lit in lits:
                cases[block_of(seqs + [(lit, 1, 4 + pad)], None)] = -7    # ends after a match
                # the end rules: >= 5 final literals, the last match starting >= 12 before the end
                for length, tail in ((7, 5), (6, 5), (9, 4), (5, 7), (4, 7), (4, 8), (5, 6),
                                     (4, 11), (4, 12)):
                    ok = tail >= 5 and length + tail >= 12
                    size = size_before + 4 * pad + lit + length + tail
                    cases[block_of(seqs + [(lit, 1, length)], tail)] = size if ok else -8
    for block, want in cases.items():
        size = want if want >= 0 else 0
        for blocks, total in (([block], size), ([block, full], size + 65_536),
                              ([full, block], 65_536 + size),
                              ([full, full, block], 2 * 65_536 + size)):
            frame = frame_of(rng, [(b, False) for b in blocks])
            got, ref = _walks(frame, None)
            assert got == ref == (want if want < 0 else total), (len(block), blocks.index(block))
    # output past the maximum in the block of a pair that reaches its end first
    over = block_of([(1, 1, 4)] * 13_108, 20)
    many = block_of([(1, 1, 4)] + [(0, 1, 4)] * 15_999, 1535)         # 65,536 bytes
    for blocks in ([over, many], [many, over]):
        assert _walks(frame_of(rng, [(b, False) for b in blocks]), None) == (-7, -7)


def test_dv_written_packets_check_like_the_reference(tmp_path):
    """Event packets as dv-processing writes them (LZ4, 64 KiB linked blocks), damaged in
    memory: the packet pass (_check_packets) stops at the packet the reference rejects, with the
    reference's code (or a flatbuffer error on a packet the walk passes)."""
    path = tmp_path / "ev.aedat4"
    ev = random_events(300_000, duration_us=300_000, seed=5)
    with Aedat4Writer(path, width=346, height=260, camera="t") as w:
        for chunk in np.array_split(ev, 3):
            w.write_events(chunk)
    lay = chk.read_layout(str(path))
    data = _readonly(np.fromfile(path, np.uint8))
    kinds = np.array([chk.KINDS.get(lay.streams[s].type, 0) for s in lay.stream_ids.tolist()],
                     np.int64)
    assert lay.compression == 1 and (kinds == 1).all() and lay.sizes.max() > 1 << 17

    def check(src):
        progress = np.array([0, -1, 0], np.int64)
        stop = np.zeros(1, np.int64)
        chk._check_packets(src, lay.offsets, lay.sizes, kinds, True, progress, stop)
        return int(progress[1]), int(progress[2])

    assert check(data) == (-1, 0)
    rng = np.random.default_rng(6)
    codes = set()
    for _ in range(150):
        src = data.copy()
        k = int(rng.integers(len(lay.offsets)))
        p, size = int(lay.offsets[k]), int(lay.sizes[k])
        for pos in rng.integers(p + 7, p + size, int(rng.integers(1, 3))):
            src[pos] ^= 1 << int(rng.integers(8))
        bad, code = check(_readonly(src))
        refs = [int(ref_walk(src, o, o + s)) for o, s in zip(lay.offsets, lay.sizes)]
        if bad < 0:
            assert min(refs) >= 0
            continue
        assert min(refs[:bad], default=0) >= 0
        assert refs[bad] == code or (code == chk._FB_ERROR and refs[bad] >= 0), (refs[bad], code)
        codes.add(code)
    assert {-6, -7} <= codes, codes


@pytest.mark.parametrize("name", ["davis346_aestream_davis.aedat4",
                                  "davis346_wheel_2024_11_26_11_34_19_crop100x100.aedat4",
                                  "dvxplorer-lite_tonic_sample.aedat4"])
def test_real_recordings_pass(realdata, name):
    path = str(realdata / "aedat4" / name)
    lay = chk.read_layout(path)
    src = _readonly(np.fromfile(path, np.uint8))
    for o, s in zip(lay.offsets.tolist(), lay.sizes.tolist()):
        assert lz4._lz4_walk(src, o, o + s) == ref_walk(src, o, o + s) > 0
    c = chk.PacketChecker(path, lay, background=False)
    c.wait_all()
    assert int(c.progress[0]) == len(lay.offsets)


# -- the packet table, parsed with numpy gathers ---------------------------------------------------

def _walk_table(raw: bytes) -> np.ndarray:
    """The reference: the FileDataTable walked entry by entry with the bounds-checked reader."""
    b = chk._Buf(raw)
    if b.get("I", 0) != len(raw) - 4:
        raise ValueError("size prefix")
    root = b.table(4 + b.get("I", 4))
    vec = b.ref(root, 0)
    rows = []
    for i in range(b.get("I", vec) if vec is not None else 0):
        slot = vec + 4 + 4 * i
        t = b.table(slot + b.get("I", slot))
        pinfo = t[1][1] if len(t[1]) > 1 else 0
        sid, size = (b.get("i", t[0] + pinfo), b.get("i", t[0] + pinfo + 4)) if pinfo else (0, 0)
        rows.append((b.field(t, 0, "q", 0), size, sid))
    return np.array(rows, np.int64).reshape(-1, 3)


def test_packet_table_rows_equal_an_entry_by_entry_walk_also_when_damaged(tmp_path):
    import lz4.frame

    path = tmp_path / "t.aedat4"
    with Aedat4Writer(path, width=64, height=48, atomic=True, packet_events=37) as w:
        w.write_events(random_events(3000, 64, 48, seed=3))
    lay = chk.read_layout(str(path))
    assert len(lay.offsets) == 82
    raw = lz4.frame.decompress(path.read_bytes()[lay.table_pos:])
    good = chk._table_rows(np.frombuffer(raw, np.uint8))
    assert np.array_equal(good, _walk_table(raw))
    assert np.array_equal(np.sort(good[:, 0]), lay.offsets)
    rng = np.random.default_rng(0)
    agreed = 0
    for k in range(400):                # flipped bytes and truncations
        bad = bytearray(raw)
        if k % 4 == 0:
            bad = bad[:int(rng.integers(0, len(bad)))]
        else:
            bad[int(rng.integers(0, len(bad)))] ^= int(rng.integers(1, 256))
        try:
            ref = _walk_table(bytes(bad))
        except ValueError:
            ref = None
        try:
            got = chk._table_rows(np.frombuffer(bytes(bad), np.uint8))
        except chk._TableError:
            got = None
        if ref is not None and got is not None:
            assert np.array_equal(got, ref)
            agreed += 1
        elif got is not None:          # the gathers also check each vtable fits: stricter
            pytest.fail(f"mutation {k}: parsed a table the reference refused")
    assert agreed > 100
