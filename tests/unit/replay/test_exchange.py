"""The owner pass split between two share processes (``replay.exchange``): each end sees every
chunk with the owners ``owners`` gives it, whoever found them, and never waits for ever."""

from __future__ import annotations

import threading
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.replay.exchange import AHEAD_CHUNKS, Chunk, Exchange, ExchangeFailed, pair

pytestmark = pytest.mark.unit


def chunks_of(sizes: list[int]) -> list[Chunk]:
    out, first = [], 0
    for size in sizes:
        rows = [b'{"request_id":"r%d"}' % (first + i) for i in range(size)]
        out.append((list(range(first, first + size)), rows, sum(map(len, rows))))
        first += size
    return out


def owners(raws: list[Any], sequences: list[int]) -> list[int]:
    return [zlib.crc32(raw) % 2 for raw in raws]


def both(chunks: list[Chunk], ends: tuple[Exchange, Exchange], stop_after: int | None = None
         ) -> tuple[list[Any], list[Any], list[BaseException]]:
    """What each end yields, going through ``chunks`` at once in two threads (the second end stops
    after ``stop_after`` chunks, closing its end, when given)."""
    seen: list[list[Any]] = [[], []]
    computed: list[list[Any]] = [[], []]
    errors: list[BaseException] = []

    def side(me: int) -> None:
        def counted(raws: list[Any], sequences: list[int]) -> list[int]:
            computed[me].append(sequences[:1])
            return owners(raws, sequences)

        try:
            for n, (chunk, found) in enumerate(ends[me].owned(iter(chunks), counted)):
                if me == 1 and stop_after is not None and n == stop_after:
                    break
                seen[me].append((chunk[0], found))
        except BaseException as exc:
            errors.append(exc)
        finally:
            ends[me].close()

    other = threading.Thread(target=side, args=(1,), daemon=True)
    other.start()
    side(0)
    other.join(timeout=60)
    assert not other.is_alive(), "an end waits for ever"
    return seen, computed, errors


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=3 * AHEAD_CHUNKS))
def test_each_end_sees_every_chunk_with_its_owners_and_finds_half(sizes: list[int]) -> None:
    chunks = chunks_of(sizes)
    seen, computed, errors = both(chunks, pair())
    assert not errors
    expected = [(chunk[0], bytes(owners(chunk[1], chunk[0]))) for chunk in chunks]
    assert seen[0] == expected and seen[1] == expected
    assert len(computed[0]) == (len(chunks) + 1) // 2 and len(computed[1]) == len(chunks) // 2


def test_messages_larger_than_a_pipe_hold_no_one_up() -> None:
    """Both ends send before they read, chunks of a million rows (a megabyte of owners each)."""
    chunks = chunks_of([1_000_000, 1_000_000, 3, 1_000_000, 1_000_000])
    seen, _, errors = both(chunks, pair())
    assert not errors and [len(found) for _, found in seen[0]] == [1_000_000, 1_000_000, 3, 1_000_000, 1_000_000]
    assert seen[0] == seen[1]


def test_an_end_whose_peer_stops_raises_instead_of_waiting() -> None:
    chunks = chunks_of([10] * (4 * AHEAD_CHUNKS))
    _, _, errors = both(chunks, pair(), stop_after=2)
    assert len(errors) == 1 and isinstance(errors[0], ExchangeFailed)


def test_an_input_read_otherwise_by_the_other_is_refused() -> None:
    ends = pair()
    mine = chunks_of([5, 5])
    theirs = chunks_of([5, 6])  # its second chunk, found by it, has another length
    errors: list[BaseException] = []

    def run(end: Exchange, chunks: list[Chunk]) -> None:
        try:
            list(end.owned(iter(chunks), owners))
        except ExchangeFailed as exc:
            errors.append(exc)
        finally:
            end.close()

    other = threading.Thread(target=run, args=(ends[1], theirs), daemon=True)
    other.start()
    run(ends[0], mine)
    other.join(timeout=60)
    assert not other.is_alive()
    assert any("did an input change" in str(e) for e in errors)
