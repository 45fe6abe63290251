"""Content-Encoding decoding that never inflates more than a step at a time.

httpx decodes each network read whole: 64 KiB of gzipped zeros become 64 MiB in
one call, before any size cap can look at them. Here every decoder hands out at
most ``STEP`` bytes per piece (a little more for brotli, whose buffer grows in
blocks), and only when asked for the next piece, so a caller that stops at its
cap has decoded at most one step past it, whatever the compression ratio and
however many encodings are stacked.

Only what is decoded here is asked for (``ACCEPT_ENCODING``): gzip and deflate
always, br and zstd when their modules are installed.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def _optional(module: str) -> Any:
    """An optional module (as httpx treats brotli and zstandard), or None."""
    try:
        return importlib.import_module(module)
    except ImportError:  # pragma: no cover - depends on what is installed
        return None


_BROTLI = _optional("brotli")
if _BROTLI is not None and not hasattr(_BROTLI.Decompressor(), "can_accept_more_data"):
    _BROTLI = None  # before 1.2 brotli cannot bound its output: leave br unasked for
_ZSTANDARD = _optional("zstandard")

# The most a decoder hands out in one piece (and so the most it can overshoot a cap by).
STEP = 64 * 1024


class DecodeError(Exception):
    """The body is not validly encoded, or encoded in a way this service does not decode."""


def _inflate(chunks: Iterable[bytes], wbits: int) -> Iterator[bytes]:
    decompressor = zlib.decompressobj(wbits)
    for chunk in chunks:
        pending = chunk
        while True:
            try:
                piece = decompressor.decompress(pending, STEP)
            except zlib.error as error:
                raise DecodeError(str(error)) from None
            pending = decompressor.unconsumed_tail
            if piece:
                yield piece
            if decompressor.eof:
                return  # what follows the stream is ignored, as httpx does
            # A full piece may leave output inside zlib with no input left: ask again.
            if not pending and len(piece) < STEP:
                break
    try:
        rest = decompressor.flush()  # bounded: every byte of input has been consumed
    except zlib.error as error:  # pragma: no cover - flush after decompress rarely fails
        raise DecodeError(str(error)) from None
    if rest:
        yield rest


def _gunzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    return _inflate(chunks, zlib.MAX_WBITS | 16)


def _deflate(chunks: Iterable[bytes]) -> Iterator[bytes]:
    # "deflate" is meant to be zlib-wrapped, yet many servers send raw deflate: the first
    # two bytes tell which (a zlib header says method 8 and is a multiple of 31).
    stream = iter(chunks)
    head = b""
    for chunk in stream:
        head += chunk
        if len(head) >= 2:
            break
    wrapped = len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
    return _inflate(_prepend(head, stream), zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _unbrotli(chunks: Iterable[bytes]) -> Iterator[bytes]:
    decompressor = _BROTLI.Decompressor()
    try:
        for chunk in chunks:
            piece = decompressor.process(chunk, output_buffer_limit=STEP)
            # Output held back by the limit comes with empty input; asking stops once
            # a call gives nothing and the decoder will take input again.
            while piece or not decompressor.can_accept_more_data():
                if piece:
                    yield piece
                piece = decompressor.process(b"", output_buffer_limit=STEP)
    except _BROTLI.error as error:
        raise DecodeError(str(error)) from None


class _Reader:
    """A file-like view of an iterator of chunks (zstandard reads from files)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


def _unzstd(chunks: Iterable[bytes]) -> Iterator[bytes]:
    reader = _ZSTANDARD.ZstdDecompressor().stream_reader(
        _Reader(chunks), read_size=16 * 1024, read_across_frames=True
    )
    try:
        while piece := reader.read(STEP):
            yield piece
    except _ZSTANDARD.ZstdError as error:
        raise DecodeError(str(error)) from None


_DECODERS: dict[str, Callable[[Iterable[bytes]], Iterator[bytes]]] = {
    "gzip": _gunzip,
    "x-gzip": _gunzip,
    "deflate": _deflate,
}
if _BROTLI is not None:
    _DECODERS["br"] = _unbrotli
if _ZSTANDARD is not None:
    _DECODERS["zstd"] = _unzstd

ACCEPT_ENCODING = ", ".join(name for name in _DECODERS if name != "x-gzip")


def decoded(raw: Iterable[bytes], encodings: list[str]) -> Iterator[bytes]:
    """The body of ``raw`` (as sent) decoded, ``encodings`` being Content-Encoding's list in
    the order they were applied; raises DecodeError naming an encoding not decoded here."""
    stream: Iterable[bytes] = raw
    # The last encoding applied is the first to undo.
    for name in reversed([name.strip().lower() for name in encodings if name.strip()]):
        if name == "identity":
            continue
        decoder = _DECODERS.get(name)
        if decoder is None:
            raise DecodeError(
                f"it is encoded as {name!r}, which was not asked for "
                f"(Accept-Encoding: {ACCEPT_ENCODING})"
            )
        stream = decoder(stream)
    return iter(stream)
