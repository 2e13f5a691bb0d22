"""Numba kernels for Prophesee EVT 2.0 / EVT 3.0 words: streaming decoders and encoders.

Decoders are resumable state machines. Each call decodes `words[start:]` into caller-owned
output arrays (field views of an EVENT_DTYPE / TRIGGER_DTYPE array) from index `n_ev` / `n_tr`
on, and stops early when the outputs could overflow, so a packet never grows past its buffer.
All decoder state lives in a small int64 array (`new_evt2_state()` / `new_evt3_state()`) that
the caller keeps between calls, so a file can be fed in chunks of any size, cut anywhere on a
word boundary, and decode exactly as if it were one buffer. The input words are only read.

Every call returns (next_word, n_ev, n_tr, status): status 0 means "stopped cleanly" (input used
up, or an output full); BAD_WORD means `words[next_word]` has a type this encoding does not
define. The caller turns that into a one-line error with the byte offset.

Time, in microseconds:
- EVT 2.0: t = TIME_HIGH (28 bits) << 6 | the 6 low bits in each CD / trigger word (34 bits).
- EVT 3.0: t = TIME_HIGH (12 bits) << 12 | TIME_LOW (12 bits) (24 bits). A TIME_HIGH that
  changes resets TIME_LOW to 0 until the next TIME_LOW word (the sensor sends one right after).
- Both counters wrap. A TIME_HIGH that goes back by at least half its range is a wrap, and adds
  one full range (2^34 / 2^24 us) to every later time, so times stay monotonic and 64-bit.
- Words before the first TIME_HIGH carry no usable time: they are skipped and counted
  (`state[SKIPPED]`), as the vendor's decoder does.

EVT 3.0 words (4-bit type, 12-bit payload): ADDR_Y (0x0) sets y and marks the row as CD;
0x1 (EM row on ATIS sensors) marks it as not CD; ADDR_X (0x2) emits one event at x with the
word's polarity; VECT_BASE_X (0x3) sets base x and polarity; VECT_12 (0x4) / VECT_8 (0x5)
emit one event per set bit at base x + bit and advance base x by 12 / 8; TIME_LOW (0x6);
TIME_HIGH (0x8); EXT_TRIGGER (0xA); CONTINUED_4 (0x7), IMU (0xD), OTHERS (0xE) and CONTINUED_12
(0xF) are skipped. 0x9, 0xB and 0xC are undefined: BAD_WORD.
EVT 2.0 words (4-bit type, 28 bits): CD_OFF (0x0) / CD_ON (0x1) with 6-bit time, x (11 bits),
y (11 bits); TIME_HIGH (0x8); EXT_TRIGGER (0xA); IMU (0xD), OTHERS (0xE), CONTINUED (0xF) are
skipped; everything else is BAD_WORD.

Triggers become TRIGGER_DTYPE with dv-processing's TriggerType: edge value 1 -> 1 (external
signal rising edge), 0 -> 2 (falling edge). The trigger channel id has no field there and is
dropped.

Encoders turn sorted EVENT_DTYPE fields (+ optional triggers) into words that these decoders read
back exactly: TIME_HIGH words step by less than half the range (so a long gap or a start far
from 0 still decodes to the same 64-bit time), and the EVT 3.0 encoder packs runs of events with
the same t, y and polarity and increasing x into VECT_12 / VECT_8 words. They are resumable like
the decoders: what the decoder will hold after the words written so far (TIME_HIGH, TIME_LOW,
row, vector base) lives in a small int64 array (`new_encoder_state()`) the caller keeps between
calls, so a stream encoded chunk by chunk gives the words of one call over all of it (each
call's events and triggers must not be earlier than the previous call's).
"""

from __future__ import annotations

import numba
import numpy as np

OK = 0
BAD_WORD = 1

# -- decoder state slots ------------------------------------------------------------------------
HAVE_TIME = 0   # 1 once a TIME_HIGH word was seen
TIME_HIGH = 1   # last TIME_HIGH payload
TIME_LOW = 2    # EVT3: last TIME_LOW payload
LOOPS = 3       # number of TIME_HIGH wraps seen
SKIPPED = 4     # words skipped because they came before the first TIME_HIGH
Y = 5           # EVT3: current row
IS_CD = 6       # EVT3: 1 after ADDR_Y (CD row), 0 before any row or after an EM row
BASE_X = 7      # EVT3: vector base x
BASE_POL = 8    # EVT3: vector polarity
HAVE_BASE = 9   # EVT3: 1 once a VECT_BASE_X was seen
NO_ROW = 10     # EVT3: events dropped because no ADDR_Y / VECT_BASE_X came before them
_STATE_LEN = 11

EVT2_HIGH_BITS = 28
EVT2_LOW_BITS = 6
EVT3_HIGH_BITS = 12
EVT3_LOW_BITS = 12
MAX_VECTOR_EVENTS = 12  # the most events one word can emit

# -- encoder state slots (what the decoder holds after the words written so far; -1: nothing) -----
ENC_HIGH = 0    # absolute TIME_HIGH
ENC_LOW = 1     # EVT3: TIME_LOW
ENC_Y = 2       # EVT3: row
ENC_BASE = 3    # EVT3: vector base x
ENC_POL = 4     # EVT3: vector polarity
_ENC_STATE_LEN = 5


def new_encoder_state() -> np.ndarray:
    return np.full(_ENC_STATE_LEN, -1, dtype=np.int64)


def new_evt2_state() -> np.ndarray:
    return np.zeros(_STATE_LEN, dtype=np.int64)


def new_evt3_state() -> np.ndarray:
    return np.zeros(_STATE_LEN, dtype=np.int64)


# -- decoders -----------------------------------------------------------------------------------

@numba.njit(cache=True, nogil=True)
def decode_evt2(words, start, state, ev_t, ev_x, ev_y, ev_p, n_ev, tr_t, tr_type, n_tr):
    """Decode EVT 2.0 uint32 words from `start`; see the module doc for the contract."""
    cap_ev = ev_t.shape[0]
    cap_tr = tr_t.shape[0]
    have_time = state[HAVE_TIME]
    high = state[TIME_HIGH]
    loops = state[LOOPS]
    skipped = state[SKIPPED]
    half = np.int64(1) << (EVT2_HIGH_BITS - 1)
    base = (loops << (EVT2_HIGH_BITS + EVT2_LOW_BITS)) | (high << EVT2_LOW_BITS)
    status = OK
    i = start
    n = words.shape[0]
    while i < n:
        if n_ev >= cap_ev or n_tr >= cap_tr:
            break
        w = np.int64(words[i])
        kind = w >> 28
        if kind <= 1:  # CD_OFF / CD_ON
            if have_time:
                ev_t[n_ev] = base | ((w >> 22) & 0x3F)
                ev_x[n_ev] = (w >> 11) & 0x7FF
                ev_y[n_ev] = w & 0x7FF
                ev_p[n_ev] = kind
                n_ev += 1
            else:
                skipped += 1
        elif not (kind == 0x8 or kind == 0xA or kind >= 0xD):
            status = BAD_WORD
            break
        elif not have_time and kind != 0x8:
            skipped += 1
        elif kind == 0x8:  # EVT_TIME_HIGH
            new_high = w & 0xFFFFFFF
            if have_time and high - new_high >= half:
                loops += 1
            high = new_high
            have_time = 1
            base = (loops << (EVT2_HIGH_BITS + EVT2_LOW_BITS)) | (high << EVT2_LOW_BITS)
        elif kind == 0xA:  # EXT_TRIGGER
            tr_t[n_tr] = base | ((w >> 22) & 0x3F)
            tr_type[n_tr] = 1 if (w & 1) else 2
            n_tr += 1
        # else IMU (0xD), OTHERS (0xE), CONTINUED (0xF): skipped
        i += 1
    state[HAVE_TIME] = have_time
    state[TIME_HIGH] = high
    state[LOOPS] = loops
    state[SKIPPED] = skipped
    return i, n_ev, n_tr, status


@numba.njit(cache=True, nogil=True)
def decode_evt3(words, start, state, ev_t, ev_x, ev_y, ev_p, n_ev, tr_t, tr_type, n_tr):
    """Decode EVT 3.0 uint16 words from `start`; see the module doc for the contract."""
    cap_ev = ev_t.shape[0] - MAX_VECTOR_EVENTS
    cap_tr = tr_t.shape[0]
    have_time = state[HAVE_TIME]
    high = state[TIME_HIGH]
    low = state[TIME_LOW]
    loops = state[LOOPS]
    skipped = state[SKIPPED]
    y = state[Y]
    is_cd = state[IS_CD]
    base_x = state[BASE_X]
    base_pol = state[BASE_POL]
    have_base = state[HAVE_BASE]
    no_row = state[NO_ROW]
    t = (loops << 24) | (high << 12) | low
    status = OK
    i = start
    n = words.shape[0]
    while i < n:
        if n_ev > cap_ev or n_tr >= cap_tr:
            break
        w = np.int64(words[i])
        kind = w >> 12
        v = w & 0xFFF
        if kind == 0x9 or kind == 0xB or kind == 0xC:
            status = BAD_WORD
            break
        if not have_time:
            if kind == 0x8:
                have_time = 1
                high = v
                low = 0
                t = (loops << 24) | (high << 12)
            else:
                skipped += 1
        elif kind == 0x2:  # EVT_ADDR_X: one event
            if is_cd:
                ev_t[n_ev] = t
                ev_x[n_ev] = v & 0x7FF
                ev_y[n_ev] = y
                ev_p[n_ev] = v >> 11
                n_ev += 1
            else:
                no_row += 1
        elif kind == 0x4 or kind == 0x5:  # VECT_12 / VECT_8
            nbits = 12 if kind == 0x4 else 8
            if is_cd and have_base:
                for b in range(nbits):
                    if (v >> b) & 1:
                        ev_t[n_ev] = t
                        ev_x[n_ev] = base_x + b
                        ev_y[n_ev] = y
                        ev_p[n_ev] = base_pol
                        n_ev += 1
            else:
                for b in range(nbits):
                    no_row += (v >> b) & 1
            base_x += nbits
        elif kind == 0x0:  # EVT_ADDR_Y
            y = v & 0x7FF
            is_cd = 1
        elif kind == 0x6:  # EVT_TIME_LOW
            low = v
            t = (loops << 24) | (high << 12) | low
        elif kind == 0x3:  # VECT_BASE_X
            base_x = v & 0x7FF
            base_pol = v >> 11
            have_base = 1
        elif kind == 0x8:  # EVT_TIME_HIGH
            if high - v >= 2048:
                loops += 1
            if v != high:
                low = 0
            high = v
            t = (loops << 24) | (high << 12) | low
        elif kind == 0xA:  # EXT_TRIGGER
            tr_t[n_tr] = t
            tr_type[n_tr] = 1 if (v & 1) else 2
            n_tr += 1
        elif kind == 0x1:  # EM row (ATIS): following addresses are not CD events
            is_cd = 0
        # else CONTINUED_4 (0x7), IMU (0xD), OTHERS (0xE), CONTINUED_12 (0xF): skipped
        i += 1
    state[HAVE_TIME] = have_time
    state[TIME_HIGH] = high
    state[TIME_LOW] = low
    state[LOOPS] = loops
    state[SKIPPED] = skipped
    state[Y] = y
    state[IS_CD] = is_cd
    state[BASE_X] = base_x
    state[BASE_POL] = base_pol
    state[HAVE_BASE] = have_base
    state[NO_ROW] = no_row
    return i, n_ev, n_tr, status


@numba.njit(cache=True, nogil=True)
def evt3_time_highs(words):
    """Every TIME_HIGH payload in an EVT 3.0 word array, in order (for checks and tests)."""
    out = np.empty(words.shape[0], dtype=np.int64)
    m = 0
    for i in range(words.shape[0]):
        if (words[i] >> 12) == 0x8:
            out[m] = words[i] & 0xFFF
            m += 1
    return out[:m]


# -- encoders -----------------------------------------------------------------------------------

@numba.njit(cache=True, nogil=True)
def _merge_order(ev_t, tr_t):
    """Positions of events (>= 0) and triggers (-1 - k) in one time-sorted sequence."""
    n, m = ev_t.shape[0], tr_t.shape[0]
    order = np.empty(n + m, dtype=np.int64)
    i = j = k = 0
    while i < n or j < m:
        if j >= m or (i < n and ev_t[i] <= tr_t[j]):
            order[k] = i
            i += 1
        else:
            order[k] = -1 - j
            j += 1
        k += 1
    return order


@numba.njit(cache=True, nogil=True)
def _step_high(out, k, cur, target, high_bits, kind_shift, kind, payload_shift):
    """Write TIME_HIGH words that move the decoder from absolute high `cur` to `target`.

    Steps are below half the counter range, so the decoder's wrap rule sees every wrap.
    """
    mask = (np.int64(1) << high_bits) - 1
    step = (np.int64(1) << (high_bits - 1)) - 1
    while target - cur > step:
        cur += step
        out[k] = (kind << kind_shift) | ((cur & mask) << payload_shift)
        k += 1
    if target != cur:
        out[k] = (kind << kind_shift) | ((target & mask) << payload_shift)
        k += 1
    return k


@numba.njit(cache=True, nogil=True)
def encode_evt2(ev_t, ev_x, ev_y, ev_p, tr_t, tr_type, out, state):
    """Sorted events (+ sorted triggers) -> EVT 2.0 words in `out`; returns the word count.
    `state` (new_encoder_state()) carries the decoder's TIME_HIGH from call to call."""
    order = _merge_order(ev_t, tr_t)
    k = 0
    cur = state[ENC_HIGH]
    for q in range(order.shape[0]):
        j = order[q]
        t = ev_t[j] if j >= 0 else tr_t[-1 - j]
        target = t >> EVT2_LOW_BITS
        if cur < 0:
            first = target if target < (np.int64(1) << EVT2_HIGH_BITS) else np.int64(0)
            out[k] = (np.int64(0x8) << 28) | first
            k += 1
            cur = first
        if target != cur:
            k = _step_high(out, k, cur, target, EVT2_HIGH_BITS, np.int64(28), np.int64(0x8),
                           np.int64(0))
            cur = target
        low = t & 0x3F
        if j >= 0:
            kind = np.int64(1) if ev_p[j] > 0 else np.int64(0)
            out[k] = (kind << 28) | (low << 22) | (np.int64(ev_x[j]) << 11) | np.int64(ev_y[j])
        else:
            value = np.int64(1) if tr_type[-1 - j] == 1 else np.int64(0)
            out[k] = (np.int64(0xA) << 28) | (low << 22) | value
        k += 1
    state[ENC_HIGH] = cur
    return k


@numba.njit(cache=True, nogil=True)
def encode_evt3(ev_t, ev_x, ev_y, ev_p, tr_t, tr_type, out, state):
    """Sorted events (+ sorted triggers) -> EVT 3.0 words in `out`; returns the word count.

    A run of consecutive events with the same t, y and polarity and strictly increasing x that
    fits in 12 columns becomes one VECT_12 (or VECT_8 when it fits in 8) word after a
    VECT_BASE_X (skipped when the decoder's base already covers the run); a lone event becomes
    ADDR_X. Decoding yields the run in the same order, so the round trip is exact. `state`
    (new_encoder_state()) carries what the decoder holds from call to call.
    """
    order = _merge_order(ev_t, tr_t)
    nq = order.shape[0]
    k = 0
    cur = state[ENC_HIGH]   # absolute TIME_HIGH the decoder holds
    low = state[ENC_LOW]    # TIME_LOW the decoder holds
    y = state[ENC_Y]        # row the decoder holds
    base = state[ENC_BASE]  # vector base x the decoder holds
    base_pol = state[ENC_POL]
    q = 0
    while q < nq:
        j = order[q]
        t = ev_t[j] if j >= 0 else tr_t[-1 - j]
        target = t >> 12
        if cur < 0:
            first = target if target < 4096 else np.int64(0)
            out[k] = (np.int64(0x8) << 12) | first
            k += 1
            cur = first
            low = 0
        if target != cur:
            k = _step_high(out, k, cur, target, EVT3_HIGH_BITS, np.int64(12), np.int64(0x8),
                           np.int64(0))
            cur = target
            low = 0  # the decoder resets TIME_LOW when TIME_HIGH changes
        if (t & 0xFFF) != low:
            low = t & 0xFFF
            out[k] = (np.int64(0x6) << 12) | low
            k += 1
        if j < 0:
            value = np.int64(1) if tr_type[-1 - j] == 1 else np.int64(0)
            out[k] = (np.int64(0xA) << 12) | value
            k += 1
            q += 1
            continue
        ey = np.int64(ev_y[j])
        ex = np.int64(ev_x[j])
        pol = np.int64(1) if ev_p[j] > 0 else np.int64(0)
        if ey != y:
            out[k] = ey  # ADDR_Y, type 0
            k += 1
            y = ey
        # where would a vector start? reuse the decoder's base when it covers this x
        start = ex
        if base >= 0 and base_pol == pol and base <= ex < base + 12:
            start = base
        # the run: following events (not interrupted by a trigger) with the same t, y, p and
        # strictly increasing x inside [start, start + 12)
        mask = np.int64(1) << (ex - start)
        last_x = ex
        r = q + 1
        while r < nq:
            jr = order[r]
            if jr < 0 or ev_t[jr] != t or np.int64(ev_y[jr]) != ey:
                break
            if (np.int64(1) if ev_p[jr] > 0 else np.int64(0)) != pol:
                break
            xr = np.int64(ev_x[jr])
            if xr <= last_x or xr >= start + 12:
                break
            mask |= np.int64(1) << (xr - start)
            last_x = xr
            r += 1
        if r - q >= 2:
            if start != base or base_pol != pol:
                out[k] = (np.int64(0x3) << 12) | (pol << 11) | start
                k += 1
            if last_x - start < 8:
                out[k] = (np.int64(0x5) << 12) | mask
                base = start + 8
            else:
                out[k] = (np.int64(0x4) << 12) | mask
                base = start + 12
            base_pol = pol
            k += 1
            q = r
        else:
            out[k] = (np.int64(0x2) << 12) | (pol << 11) | ex
            k += 1
            q += 1
    state[ENC_HIGH] = cur
    state[ENC_LOW] = low
    state[ENC_Y] = y
    state[ENC_BASE] = base
    state[ENC_POL] = base_pol
    return k
