"""Two share processes split the owner pass: each finds the owners of every other chunk of input.

Both processes of a replay in two shares read every row of the input, and each keeps the rows of
its requests (``replay.ownership``: a row's request id read and hashed): the one piece of work both
would do in full. With an ``Exchange``, the process of share 0 finds the owners of the even chunks
and the other those of the odd ones, and each sends what it found to the other through a pipe.
Each reads ``AHEAD_CHUNKS`` ahead of what it decodes, so that the other finds the owners it needs
while this one decodes a batch, and neither waits.

Both processes go through the same chunks in the same order (the same inputs read the same way),
so a message needs no name: the next message is the next chunk of the other's parity. A message
is a chunk's owners, a byte a row, after its length. Writes never block (what the pipe cannot take
yet waits in a buffer, written while the process waits to read), so two processes that both send
before they read cannot hold each other up. A process whose peer has ended (its pipe closed)
raises ``ExchangeFailed`` instead of waiting for ever (so does one that finds that the other read a
chunk of another length: an input that changed meanwhile).

>>> left, right = pair()
>>> left.send(bytes([0, 1, 1])); right.receive()
b'\\x00\\x01\\x01'
>>> left.close(); right.close()
"""

from __future__ import annotations

import os
import select
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Exchange", "ExchangeFailed", "keep", "pair"]

_HEADER = 4  # a message's length, little-endian, before it
# Chunks read ahead (and their owners sent, for those of this process's parity): enough to cover
# a batch the decoder takes at once (``bulk.CHUNK_LINES`` rows of this share: about twice as many
# read, 3 chunks of 2 MiB of the benchmark's lines), so that the other process finds what it needs
# while this one decodes (each waited 0.001-0.005 s in all; with one chunk ahead, up to 0.26 s).
AHEAD_CHUNKS = 4
Chunk = tuple[list[int], list[Any], int]  # (sequence numbers, raws, bytes they stand for), as ``_Inputs.numbered``


class ExchangeFailed(RuntimeError):
    """The other process ended (or failed) before sending what this one waits for, or it read
    another number of rows in a chunk (an input that changed while replay read it)."""


class Exchange:
    """One process's end: share ``me`` (0 or 1), reading the other's messages from ``read_fd``
    and writing its own to ``write_fd`` (both its own to close: ``close``)."""

    def __init__(self, me: int, read_fd: int, write_fd: int) -> None:
        self.me, self.read_fd, self.write_fd = me, read_fd, write_fd
        os.set_blocking(write_fd, False)
        self._poll = select.poll()  # not select.select: any descriptor number
        self._poll.register(read_fd, select.POLLIN)
        self.chunks_seen = 0  # chunks gone through so far, every input together: their parity says who reads them
        self._out = bytearray()
        self._in = bytearray()
        self.closed = False

    def owned(self, chunks: Iterator[Chunk], owners: Callable[[list[Any], list[int]], list[int]]
              ) -> Iterator[tuple[Chunk, bytes]]:
        """Each of ``chunks`` with its rows' owners (a byte a row): found here with ``owners``
        for a chunk of this process's parity, else received from the other process."""
        ahead: deque[tuple[Chunk, bytes | None]] = deque()

        def pull() -> bool:
            chunk = next(chunks, None)
            if chunk is None:
                return False
            mine = self.chunks_seen % 2 == self.me
            self.chunks_seen += 1
            found = bytes(owners(chunk[1], chunk[0])) if mine else None
            if found is not None:
                self.send(found)
            ahead.append((chunk, found))
            return True

        while ahead or pull():
            while len(ahead) < AHEAD_CHUNKS and pull():
                pass
            chunk, found = ahead[0]
            if found is None:
                found = self.receive()
                if len(found) != len(chunk[1]):
                    raise ExchangeFailed(f"the other share's process read {len(found)} rows where this one read "
                                         f"{len(chunk[1])}: did an input change while replay read it?")
            ahead.popleft()
            yield chunk, found

    def send(self, message: bytes) -> None:
        """Queue ``message`` for the other process, and write what the pipe takes now."""
        self._out += len(message).to_bytes(_HEADER, "little") + message
        self._write()

    def receive(self) -> bytes:
        """The other process's next message (waiting for it, and writing this one's meanwhile)."""
        while True:
            if len(self._in) >= _HEADER:
                size = int.from_bytes(self._in[:_HEADER], "little")
                if len(self._in) >= _HEADER + size:
                    message = bytes(self._in[_HEADER:_HEADER + size])
                    del self._in[:_HEADER + size]
                    return message
            if self._out:
                self._poll.register(self.write_fd, select.POLLOUT)
            ready = dict(self._poll.poll())
            if self._out:
                self._poll.unregister(self.write_fd)
            if ready.get(self.write_fd):
                self._write()
            if ready.get(self.read_fd):
                data = os.read(self.read_fd, 1 << 20)
                if not data:
                    raise ExchangeFailed("the other share's process ended before sending its part of the owner pass")
                self._in += data

    def close(self) -> None:
        """Write what is left for the other process (which reads all it needs), then close both
        ends; again, nothing."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._out:
                os.set_blocking(self.write_fd, True)  # nothing to read any more: wait while it is read
                while self._out:
                    self._write()
        except (OSError, ExchangeFailed):  # the other process has gone: nothing left to give it
            pass
        finally:
            os.close(self.read_fd)
            os.close(self.write_fd)

    def _write(self) -> None:
        try:
            written = os.write(self.write_fd, self._out)
        except BlockingIOError:
            return
        except BrokenPipeError:
            raise ExchangeFailed("the other share's process ended before reading this one's part of the owner "
                                 "pass") from None
        del self._out[:written]


def pair() -> tuple[Exchange, Exchange]:
    """Both ends, for shares 0 and 1 (before a fork: each process closes the other's, ``keep``)."""
    a, b = os.pipe(), os.pipe()
    return Exchange(0, a[0], b[1]), Exchange(1, b[0], a[1])


def keep(mine: Exchange, other: Exchange) -> Exchange:
    """In a process after the fork: close the other end's descriptors, and return its own."""
    os.close(other.read_fd)
    os.close(other.write_fd)
    return mine
