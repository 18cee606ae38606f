"""What protects the receiver: header-only parsing, a decode memory budget, and peer admission.

- :func:`read_header` parses a received data set up to its Pixel Data, without decoding pixels. A
  deflated data set is inflated in bounded chunks: only the first :data:`HEADER_BYTES` are kept, the
  rest is counted and dropped, so a deflate bomb (e.g. 143 KB inflating to 147 MB of RGB pixels) costs
  no memory here.
- :func:`decode_cost` is the readers' own estimate of an instance's decode peak memory
  (:mod:`medforensics.io.budget`: encoded data, decoded array, float working copies, float32
  frames out), computed from the received header — the same estimate the decode worker checks
  against its per-decode budget before allocating.
- :class:`DecodeBudget` holds the receiver's global memory budget: an instance waits until its
  estimated cost fits next to the instances in progress (and a slot is free); one over the
  per-decode limit (``medforensics.io``'s budget, at most the global one) is refused with a named
  error before anything is allocated.
- :class:`PeerGate` admits a TCP connection (before any association thread exists) only from allowed
  addresses and while that peer holds fewer than ``max_per_peer`` connections, so a few idle sockets
  cannot occupy every association slot.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import zlib
from collections import Counter
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

#: Inflated bytes of a deflated data set kept for parsing its header (the rest is only counted).
HEADER_BYTES = 8 << 20
#: Default global decode budget (all decodes in progress together) and concurrent decodes.
DEFAULT_DECODE_BUDGET = 4 << 30
DEFAULT_CONCURRENT_DECODES = 2

_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}


class RefusedInstance(Exception):
    """An instance the receiver will not decode (over the memory budget); ``reason`` names why."""

    def __init__(self, reason: str, comment: str = "over the receiver's decode budget"):
        self.reason = reason
        self.comment = comment[:64]  # for the C-STORE response's Error Comment (LO)
        super().__init__(reason)


@dataclass
class Header:
    """The parsed data set without its pixels, and the size of the data set once inflated (if deflated)."""

    dataset: Any
    inflated_bytes: int | None = None


def _stop_at_pixels(tag: Any, vr: Any, length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


def read_header(data: bytes, transfer_syntax: str, *, inflate_limit: int) -> Header:
    """Parse an encoded data set (no File Meta) up to its Pixel Data; every element is converted.

    Raises ``ValueError`` (and whatever pydicom raises) when the data set cannot be parsed, and
    :class:`RefusedInstance` when a deflated data set inflates to more than ``inflate_limit`` bytes.
    """
    from pydicom.filereader import read_dataset
    from pydicom.uid import UID

    ts = UID(transfer_syntax)
    inflated = None
    stream = data
    if ts.is_deflated:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        stream = inflater.decompress(data, HEADER_BYTES)
        inflated = len(stream)
        tail = inflater.unconsumed_tail
        while tail and not inflater.eof and inflated <= inflate_limit:  # bytes after the stream's end: padding
            chunk = inflater.decompress(tail, 1 << 20)
            if not chunk and inflater.unconsumed_tail == tail:
                break  # no progress: a truncated stream
            inflated += len(chunk)
            tail = inflater.unconsumed_tail
        if not inflater.eof:
            inflated += len(inflater.flush())
        if inflated > inflate_limit:
            raise RefusedInstance(f"deflated data set inflates to more than {_size(inflate_limit)} "
                                  f"(received {_size(len(data))}): over the receiver's decode budget",
                                  f"over decode budget: inflates to > {_size(inflate_limit)}")
    implicit = ts.is_implicit_VR if ts.is_transfer_syntax else True
    little = ts.is_little_endian if ts.is_transfer_syntax else True
    ds = read_dataset(BytesIO(stream), implicit, little, stop_when=_stop_at_pixels)
    for _ in ds.iterall():  # convert every raw element now: a broken sequence fails here, not later
        pass
    return Header(ds, inflated)


def decode_cost(header: Header, max_frames: int, encoded_bytes: int) -> int:
    """Estimated peak bytes of decoding the instance (0 when it has no image pixel module).

    ``encoded_bytes``: the data set as received (a deflated one counts as its inflated size).
    """
    from ..io.dicom import _decode_cost, _header_dims  # the readers' estimate (medforensics.io.budget)
    from ..io.intensity import IntensityConfig

    ds = header.dataset
    dims = _header_dims(ds)
    if dims is None:
        return 0
    n, spp = dims[0], dims[3]
    pooled = str(ds.get("Modality") or "").upper() == "MR" and spp == 1  # MR volumes pool every frame
    decode = list(range(n)) if pooled else list(range(min(n, max(1, max_frames))))
    encoded = max(encoded_bytes, header.inflated_bytes or 0)
    try:
        return _decode_cost(ds, Path("received"), dims, encoded, decode, modality=None,
                            config=IntensityConfig()).total
    except Exception:  # an odd header the estimate cannot read: the decoder will judge it
        return 0


class DecodeBudget:
    """A global decode budget: at most ``slots`` instances and ``total_bytes`` estimated bytes at once.

    ``per_decode`` (default ``total_bytes``) is the most one instance may need.
    """

    def __init__(self, total_bytes: int = DEFAULT_DECODE_BUDGET, slots: int = DEFAULT_CONCURRENT_DECODES,
                 per_decode: int | None = None):
        if total_bytes <= 0 or slots <= 0:
            raise ValueError(f"decode budget and concurrent decodes must be positive, got {total_bytes}, {slots}")
        self.total_bytes = int(total_bytes)
        self.per_decode = min(self.total_bytes, int(per_decode or total_bytes))
        self.slots = int(slots)
        self._used = 0
        self._active = 0
        self._cond = threading.Condition()

    def check(self, cost: int) -> None:
        """Raise :class:`RefusedInstance` when ``cost`` can never fit."""
        if cost > self.per_decode:
            raise RefusedInstance(f"decoding needs about {_size(cost)} of memory, over the receiver's decode "
                                  f"budget of {_size(self.per_decode)} per instance",
                                  f"over decode budget: needs {_size(cost)} > {_size(self.per_decode)}")

    def acquire(self, cost: int, timeout: float | None = None) -> bool:
        """Wait until ``cost`` fits (after :meth:`check`); ``False`` on timeout."""
        self.check(cost)
        with self._cond:
            ok = self._cond.wait_for(lambda: self._active < self.slots and self._used + cost <= self.total_bytes,
                                     timeout)
            if ok:
                self._active += 1
                self._used += cost
            return ok

    def release(self, cost: int) -> None:
        with self._cond:
            self._active -= 1
            self._used -= cost
            self._cond.notify_all()

    @property
    def in_use(self) -> tuple[int, int]:
        """(decodes in progress, estimated bytes held)."""
        with self._cond:
            return self._active, self._used


def parse_networks(entries: Iterable[str] | None) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None:
    """``["10.0.0.5", "192.168.1.0/24", "::1"]`` → networks; ``None``/empty → ``None`` (everyone).

    Raises ``ValueError`` naming the entry that is not an address or network.
    """
    if not entries:
        return None
    nets = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError as err:
            raise ValueError(f"not an IP address or network: {entry!r} ({err})") from None
    return nets


def _peer_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class PeerGate:
    """Admission of TCP connections by peer address and per-peer connection count (thread-safe)."""

    def __init__(self, allowed: Iterable[str] | None = None, max_per_peer: int = 4):
        if max_per_peer <= 0:
            raise ValueError(f"max_per_peer must be positive, got {max_per_peer}")
        self.networks = parse_networks(allowed)
        self.max_per_peer = int(max_per_peer)
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.refused_address = 0
        self.refused_busy = 0

    def allowed(self, host: str) -> bool:
        if self.networks is None:
            return True
        ip = _peer_ip(host)
        return ip is not None and any(ip in net for net in self.networks if ip.version == net.version)

    def admit(self, host: str) -> bool:
        """Count a new connection from ``host`` if it may open one; call :meth:`leave` when it ends."""
        if not self.allowed(host):
            with self._lock:
                self.refused_address += 1
            log.warning("refused a connection from %s: address not allowed", host)
            return False
        with self._lock:
            if self._open[host] >= self.max_per_peer:
                self.refused_busy += 1
                log.warning("refused a connection from %s: it already holds %d", host, self._open[host])
                return False
            self._open[host] += 1
            return True

    def leave(self, host: str) -> None:
        with self._lock:
            self._open[host] -= 1
            if self._open[host] <= 0:
                del self._open[host]

    def open_connections(self, host: str) -> int:
        with self._lock:
            return self._open[host]


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
