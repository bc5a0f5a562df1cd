"""Readers for event-camera files, in numpy: AEDAT 2.0, AEDAT 3.1 and N-MNIST's binary format.

Every reader returns a structured array of :data:`EVENT_DTYPE` (timestamps in µs,
polarity 1 = ON, 0 = OFF) and raises a one-line UserError naming the file on bad data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError

EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "<i1")])

_PACKET_HEADER = np.dtype([("eventType", "<i2"), ("eventSource", "<i2"), ("eventSize", "<i4"),
                           ("eventTSOffset", "<i4"), ("eventTSOverflow", "<i4"), ("eventCapacity", "<i4"),
                           ("eventNumber", "<i4"), ("eventValid", "<i4")])
POLARITY_EVENT = 1


def make_events(t, x, y, p) -> np.ndarray:
    ev = np.empty(len(t), EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = t, x, y, p
    return ev


def split_header(data: bytes) -> tuple[list[str], int]:
    """AEDAT header lines (each starts with '#') and the offset where binary data begins.

    AEDAT 3.x ends its header with ``#!END-HEADER``; AEDAT 2.0 simply stops having '#' lines.
    """
    lines, pos = [], 0
    while pos < len(data) and data[pos:pos + 1] == b"#":
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end + 1
        line = data[pos:end].decode("latin-1").rstrip("\r\n")
        lines.append(line)
        pos = end
        if line.startswith("#!END-HEADER"):
            break
    return lines, pos


def aedat_version(path: Path, lines: list[str]) -> str:
    if not lines or not lines[0].startswith("#!AER-DAT"):
        raise UserError(f"{path}: no '#!AER-DAT<version>' first line; expected an AEDAT 2.0 or 3.1 file")
    return lines[0][len("#!AER-DAT"):].strip()


def read_aedat(path: Path) -> np.ndarray:
    """Polarity events of an AEDAT 2.0 (DVS128 addresses) or AEDAT 3.1 file."""
    path = Path(path)
    data = path.read_bytes()
    lines, offset = split_header(data)
    version = aedat_version(path, lines)
    if version.startswith("2"):
        return decode_aedat2(path, data, offset)
    if version.startswith("3"):
        return decode_aedat31(path, data, offset)
    raise UserError(f"{path}: AEDAT version {version!r} not supported; expected 2.0 or 3.1")


def decode_aedat2(path: Path, data: bytes, offset: int) -> np.ndarray:
    """AEDAT 2.0: big-endian uint32 address then uint32 timestamp (µs) per event.

    DVS128 address: polarity bit 0 (1 = ON), x bits 1–7, y bits 8–14; bit 15 marks
    external (non-DVS) events, which are dropped.
    """
    body = len(data) - offset
    if body % 8:
        raise UserError(f"{path}: AEDAT 2.0 body of {body} bytes is not a whole number of 8-byte events "
                        "(truncated file?)")
    raw = np.frombuffer(data, np.dtype([("a", ">u4"), ("t", ">u4")]), offset=offset)
    addr = raw["a"]
    keep = (addr & 0x8000) == 0
    addr = addr[keep]
    return make_events(raw["t"][keep].astype(np.int64), (addr >> 1) & 0x7F, (addr >> 8) & 0x7F, addr & 1)


def decode_aedat31(path: Path, data: bytes, offset: int) -> np.ndarray:
    """AEDAT 3.1: packets, each a 28-byte little-endian header then ``eventCapacity × eventSize``
    bytes. Polarity events (type 1, 8 bytes): uint32 data (valid bit 0, polarity bit 1,
    y bits 2–16, x bits 17–31) and int32 timestamp, extended by ``eventTSOverflow << 31``.
    Other packet types are skipped; invalid events are dropped."""
    chunks, pos, n = [], offset, len(data)
    while pos < n:
        if pos + 28 > n:
            raise UserError(f"{path}: truncated AEDAT 3.1 packet header at byte {pos} "
                            f"(expected 28 bytes, {n - pos} left)")
        h = np.frombuffer(data, _PACKET_HEADER, 1, pos)[0]
        size, capacity, number = int(h["eventSize"]), int(h["eventCapacity"]), int(h["eventNumber"])
        if size <= 0 or capacity < 0 or not 0 <= number <= capacity:
            raise UserError(f"{path}: corrupt AEDAT 3.1 packet header at byte {pos} "
                            f"(eventSize {size}, eventCapacity {capacity}, eventNumber {number})")
        pos += 28
        length = capacity * size
        if pos + length > n:
            raise UserError(f"{path}: truncated AEDAT 3.1 packet at byte {pos - 28} "
                            f"(expected {length} bytes of events, {n - pos} left)")
        if int(h["eventType"]) == POLARITY_EVENT:
            if size < 8 or size % 4:
                raise UserError(f"{path}: polarity packet at byte {pos - 28} has eventSize {size}; "
                                "expected 8 (or a larger multiple of 4)")
            words = np.frombuffer(data, "<u4", number * size // 4, pos).reshape(number, size // 4)
            word, ts = words[:, 0], words[:, 1].view("<i4").astype(np.int64)
            valid = (word & 1) == 1
            word = word[valid]
            ts = ts[valid] | (np.int64(int(h["eventTSOverflow"])) << 31)
            chunks.append(make_events(ts, (word >> 17) & 0x7FFF, (word >> 2) & 0x7FFF, (word >> 1) & 1))
        pos += length
    return np.concatenate(chunks) if chunks else np.empty(0, EVENT_DTYPE)


def read_nmnist(path: Path) -> np.ndarray:
    """N-MNIST binary: 5 bytes (40 bits) per event: x (8 bits), y (8 bits), polarity (1 bit)
    and a 23-bit timestamp in µs, big-endian."""
    path = Path(path)
    raw = np.frombuffer(path.read_bytes(), np.uint8)
    if len(raw) % 5:
        raise UserError(f"{path}: {len(raw)} bytes is not a whole number of 5-byte N-MNIST events "
                        "(truncated file?)")
    raw = raw.reshape(-1, 5).astype(np.int64)
    t = ((raw[:, 2] & 0x7F) << 16) | (raw[:, 3] << 8) | raw[:, 4]
    return make_events(t, raw[:, 0], raw[:, 1], raw[:, 2] >> 7)
