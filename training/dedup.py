"""Exact and near-duplicate removal in bounded memory, the same in every process.

Exact: a 16-byte digest of the normalized text. Near: Jaccard similarity of word 5-gram shingles
>= 0.9, estimated by MinHash. The signature is one-permutation hashing with optimal
densification (Li, Owen & Zhang 2012; Shrivastava 2017): each shingle is hashed once and kept in
one of SLOTS bins, so a row costs one hash per shingle instead of one per shingle and
permutation; in pure Python that is what makes 100,000 rows take seconds. Candidates come from
LSH banding over the first BANDS x ROWS slots (a pair at 0.9 becomes a candidate with probability
above 0.9999) and are kept out only when the estimate over all SLOTS slots reaches the threshold.

Hashes are blake2b, never Python's hash(): the result must not depend on PYTHONHASHSEED.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from array import array

SHINGLE_WORDS = 5
THRESHOLD = 0.9
SLOTS = 64
BANDS, ROWS = 8, 4
_MASK32 = 0xFFFFFFFF
_WORDS = re.compile(r"\w+")


def normalize(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def digest(normalized: str) -> bytes:
    return hashlib.blake2b(normalized.encode(), digest_size=16).digest()


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def shingles(normalized: str) -> set[bytes]:
    words = _WORDS.findall(normalized)
    if len(words) < SHINGLE_WORDS:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + SHINGLE_WORDS]).encode() for i in range(len(words) - SHINGLE_WORDS + 1)}


def signature(normalized: str) -> array:
    """SLOTS 32-bit minimums: one-permutation hashing, empty bins filled by optimal densification."""
    bins = [None] * SLOTS
    for shingle in shingles(normalized):
        value = _hash64(shingle)
        slot, rest = value % SLOTS, (value // SLOTS) & _MASK32
        if bins[slot] is None or rest < bins[slot]:
            bins[slot] = rest
    if None in bins:
        original = bins[:]
        for slot in range(SLOTS):
            if original[slot] is None:
                bins[slot] = _borrow(original, slot)
    return array("I", bins)


def _probe(slot: int, attempt: int) -> int:
    return _hash64(b"%d:%d" % (slot, attempt)) % SLOTS


# Each empty bin borrows from the first filled bin of its own probe sequence (the same for every row).
_PROBES = [[_probe(slot, attempt) for attempt in range(256)] for slot in range(SLOTS)]


def _borrow(bins: list, slot: int) -> int:
    for donor in _PROBES[slot]:
        value = bins[donor]
        if value is not None and donor != slot:
            return value
    attempt = len(_PROBES[slot])
    while True:  # only rows with very few shingles get here
        donor = _probe(slot, attempt)
        if bins[donor] is not None and donor != slot:
            return bins[donor]
        attempt += 1


def similarity(first: array, second: array) -> float:
    return sum(a == b for a, b in zip(first, second, strict=True)) / SLOTS


class Deduplicator:
    """Feed rows in a fixed order; `seen` says whether a row duplicates one kept before it.

    Holds a digest per row seen, and per kept row its signature (SLOTS*4 bytes) and BANDS integer band keys.
    """

    def __init__(self):
        self._digests: set[bytes] = set()
        self._signatures = array("I")  # every kept row's SLOTS values, one flat array: no object per row
        self._bands: dict[int, int | list[int]] = {}

    def seen(self, text: str) -> str | None:
        """"exact", "near", or None (then the row is kept and remembered)."""
        normalized = normalize(text)
        key = digest(normalized)
        if key in self._digests:
            return "exact"
        sig = signature(normalized)
        band_keys = [self._band_key(band, sig) for band in range(BANDS)]
        candidates = set()
        for band_key in band_keys:
            found = self._bands.get(band_key)
            if found is not None:
                candidates.update(found if isinstance(found, list) else (found,))
        self._digests.add(key)  # a copy of a removed row is an exact duplicate too, whatever came first
        if any(similarity(sig, self._signatures[index * SLOTS:(index + 1) * SLOTS]) >= THRESHOLD
               for index in sorted(candidates)):
            return "near"
        index = len(self._signatures) // SLOTS
        self._signatures.extend(sig)
        for band_key in band_keys:
            found = self._bands.get(band_key)
            if found is None:
                self._bands[band_key] = index
            elif isinstance(found, list):
                found.append(index)
            else:
                self._bands[band_key] = [found, index]
        return None

    @staticmethod
    def _band_key(band: int, sig: array) -> int:
        start = band * ROWS
        key = band
        for value in sig[start:start + ROWS]:
            key = (key * 0x100000001B3 ^ value) & 0xFFFFFFFFFFFFFFFF
        return key
