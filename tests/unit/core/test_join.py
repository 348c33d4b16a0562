"""Join edge cases, one test each."""

from __future__ import annotations

import math
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.ids import compact_id, compact_ids
from stream.core.join import JoinBuffer, Outcome, is_pair


def test_prediction_then_label_joins() -> None:
    jb = JoinBuffer(ttl_s=100)
    assert jb.add_prediction("r", (0.0, "p"))[0] is Outcome.PENDING
    assert jb.add_label("r", (50.0, "l")) == (Outcome.JOINED, [(Outcome.JOINED, (0.0, "p"))], (50.0, "l"))
    assert jb.pending() == (0, 0)


def test_label_before_prediction_joins() -> None:
    jb = JoinBuffer(ttl_s=100)
    assert jb.add_label("r", (5.0, "l"))[0] is Outcome.PENDING
    assert jb.add_prediction("r", (1.0, "p")) == (Outcome.JOINED, (1.0, "p"), (5.0, "l"))


def test_label_exactly_at_the_ttl_joins_and_one_second_later_is_late() -> None:
    jb = JoinBuffer(ttl_s=100)
    jb.add_prediction("a", (0.0, "p"))
    jb.add_prediction("b", (0.0, "p"))
    assert jb.add_label("a", (100.0, "l"))[0] is Outcome.JOINED
    assert jb.add_label("b", (101.0, "l"))[0] is Outcome.LATE


def test_late_label_after_its_prediction_expired_is_late_not_orphaned() -> None:
    jb = JoinBuffer(ttl_s=100, bucket_s=10)
    jb.add_prediction("r", (0.0, "p"))
    expired, orphaned = jb.expire(200.0)
    assert expired == [(0.0, "p")] and orphaned == []
    assert jb.add_label("r", (150.0, "l")) == (Outcome.LATE, [], (150.0, "l"))
    assert jb.add_label("r", (160.0, "l"))[0] is Outcome.DUPLICATE


def test_orphaned_label_is_held_until_its_ttl() -> None:
    jb = JoinBuffer(ttl_s=100, bucket_s=10)
    jb.add_label("r", (0.0, "l"))
    assert jb.expire(90.0) == ([], [])
    assert jb.expire(110.0) == ([], [(0.0, "l")])
    assert jb.add_label("r", (115.0, "l"))[0] is Outcome.DUPLICATE


def test_a_prediction_after_an_orphaned_label_pairs_with_the_next_label_whatever_its_model_s_number() -> None:
    for model in (0, 1):
        jb = JoinBuffer(ttl_s=100, bucket_s=10)
        jb.several = True
        jb.add_label("r", (0.0, "early"))
        assert jb.expire(200.0) == ([], [(0.0, "early")])
        assert jb.add_prediction("r", (200.0, "p"), model)[0] is Outcome.PENDING
        assert jb.add_label("r", (210.0, "l"))[:2] == (Outcome.JOINED, [(Outcome.JOINED, (200.0, "p"))]), model


def test_unmatched_prediction_expires_after_the_ttl() -> None:
    jb = JoinBuffer(ttl_s=100, bucket_s=10)
    jb.add_prediction("r", (0.0, "p"))
    assert jb.expire(100.0) == ([], [])  # deadline reached, not passed
    assert jb.expire(110.0) == ([(0.0, "p")], [])
    assert jb.add_prediction("r", (1.0, "p"))[0] is Outcome.DUPLICATE


def test_first_prediction_and_first_label_win() -> None:
    jb = JoinBuffer(ttl_s=100)
    jb.add_prediction("r", (0.0, "first"))
    assert jb.add_prediction("r", (1.0, "second"))[0] is Outcome.DUPLICATE
    assert jb.add_label("r", (2.0, "l1"))[1] == [(Outcome.JOINED, (0.0, "first"))]
    assert jb.add_label("r", (3.0, "l2"))[0] is Outcome.DUPLICATE
    assert jb.add_prediction("r", (4.0, "third"))[0] is Outcome.DUPLICATE


def test_duplicate_labels_while_waiting_for_the_prediction() -> None:
    jb = JoinBuffer(ttl_s=100)
    jb.add_label("r", (1.0, "first"))
    assert jb.add_label("r", (2.0, "second"))[0] is Outcome.DUPLICATE
    assert jb.add_prediction("r", (0.0, "p"))[2] == (1.0, "first")


def test_pending_label_that_is_too_late_for_its_prediction() -> None:
    jb = JoinBuffer(ttl_s=10)
    jb.add_label("r", (50.0, "l"))
    assert jb.add_prediction("r", (0.0, "p"))[0] is Outcome.LATE


def test_uuid_ids_are_kept_as_numbers_and_stay_distinct_from_other_spellings() -> None:
    jb = JoinBuffer(ttl_s=100)
    rid = "6fa03847-181e-4a78-8a0f-3ba8dc11b05d"
    jb.add_prediction(rid, (0.0, "p"))
    jb.add_prediction(rid.upper(), (0.0, "P"))  # another string: another request
    jb.add_prediction(rid.replace("-", ""), (0.0, "q"))
    jb.add_prediction(rid[:30] + "-" + rid[31:], (0.0, "r"))  # a fifth dash: not a canonical UUID
    assert int(rid.replace("-", ""), 16) in jb.ids and len(jb.ids) == 4
    assert jb.add_label(rid, (1.0, "l")) == (Outcome.JOINED, [(Outcome.JOINED, (0.0, "p"))], (1.0, "l"))
    assert jb.add_label(rid.upper(), (1.0, "l"))[1] == [(Outcome.JOINED, (0.0, "P"))]
    assert jb.add_label(rid, (2.0, "l"))[0] is Outcome.DUPLICATE


def joined(jb: JoinBuffer) -> set[object]:
    """The ids whose pairs can still be revised."""
    return {key for key, slot in jb.ids.items() if is_pair(slot)}


def several(ttl_s: float = 100, bucket_s: float = 60.0) -> JoinBuffer:
    jb = JoinBuffer(ttl_s=ttl_s, bucket_s=bucket_s)
    jb.several = True  # as the engine sets it once it meets a second model
    return jb


def test_one_label_pairs_with_each_model_s_first_prediction_in_any_order() -> None:
    jb = several()
    assert jb.add_prediction("r", (0.0, "champion"), model=0)[0] is Outcome.PENDING
    assert jb.add_prediction("r", (1.0, "challenger"), model=1)[0] is Outcome.PENDING
    assert jb.add_prediction("r", (2.0, "again"), model=1)[0] is Outcome.DUPLICATE  # duplicates are per model
    outcome, matches, _ = jb.add_label("r", (10.0, "l"))
    assert outcome is Outcome.JOINED and matches == [(Outcome.JOINED, (0.0, "champion")),
                                                     (Outcome.JOINED, (1.0, "challenger"))]
    assert jb.add_prediction("r", (20.0, "shadow"), model=2) == (Outcome.SHARED, (20.0, "shadow"), (10.0, "l"))
    assert jb.add_label("r", (30.0, "l2"))[0] is Outcome.DUPLICATE  # the first label wins
    assert jb.pending() == (0, 0)


def test_a_label_before_every_prediction_serves_each_model_and_goes_at_its_ttl() -> None:
    jb = several(ttl_s=100, bucket_s=10)
    jb.add_label("r", (5.0, "l"))
    assert jb.add_prediction("r", (1.0, "a"), model=1)[0] is Outcome.JOINED
    assert jb.add_prediction("r", (2.0, "b"), model=0)[0] is Outcome.SHARED
    assert jb.pending() == (0, 0) and jb.expire(120.0) == ([], [])  # joined: not orphaned
    assert not joined(jb) and jb.add_prediction("r", (3.0, "c"), model=2)[0] is Outcome.PENDING
    assert jb.add_prediction("r", (4.0, "d"), model=1)[0] is Outcome.DUPLICATE


def test_a_shared_label_after_a_model_s_ttl_expires_that_prediction_only() -> None:
    jb = several(ttl_s=10)
    jb.add_prediction("r", (0.0, "early"), model=0)
    jb.add_prediction("r", (45.0, "on time"), model=1)
    outcome, matches, _ = jb.add_label("r", (50.0, "l"))
    assert outcome is Outcome.JOINED and [m[0] for m in matches] == [Outcome.LATE, Outcome.JOINED]


def test_every_model_s_state_goes_with_the_request_s_tombstones() -> None:
    jb = several(ttl_s=100, bucket_s=10)
    jb.add_prediction("r", (0.0, "a"), model=0)
    jb.add_prediction("r", (0.0, "b"), model=3)
    jb.add_label("r", (1.0, "l"))
    jb.add_prediction("s", (0.0, "b"), model=3)
    jb.expire(math.inf)
    assert not jb.ids and not jb.others and not jb.labels


def test_a_label_that_paired_serves_a_model_met_later_until_its_deadline() -> None:
    jb = JoinBuffer(ttl_s=100, bucket_s=10)
    jb.add_label("r", (5.0, "l"))  # before its prediction
    jb.add_prediction("r", (1.0, "a"))
    jb.add_prediction("s", (1.0, "a"))
    jb.add_label("s", (5.0, "l"))  # after it
    assert joined(jb) == {"r", "s"} and jb.others == {} and set(jb.ids) == {"r", "s"}
    jb.several = True  # as the engine sets it once it meets a second model
    assert jb.add_prediction("r", (2.0, "b"), model=1)[0] is Outcome.SHARED
    assert jb.add_prediction("s", (2.0, "b"), model=1)[0] is Outcome.SHARED
    jb.expire(130.0)  # past 5 + 100 and 2 + 100
    assert not joined(jb)


def test_an_earlier_label_revises_the_pair_and_a_later_one_is_a_duplicate() -> None:
    jb = JoinBuffer(ttl_s=100)
    jb.add_prediction("r", (0.0, "p"))
    jb.add_label("r", (20.0, "late"))
    assert jb.add_label("r", (30.0, "later"))[0] is Outcome.DUPLICATE
    assert jb.add_label("r", (10.0, "early")) == (Outcome.REVISED, [(Outcome.JOINED, (0.0, "p"))], (10.0, "early"))
    assert jb.replaced == ((20.0, "late"), [(Outcome.JOINED, (0.0, "p"))])
    assert jb.add_label("r", (10.0, "a tie")) == (Outcome.REVISED, [(Outcome.JOINED, (0.0, "p"))], (10.0, "a tie"))
    assert jb.add_label("r", (10.0, "early"))[0] is Outcome.DUPLICATE  # "a tie" < "early"


def test_latest_lets_the_latest_label_win_even_when_it_makes_the_pair_late() -> None:
    jb = JoinBuffer(ttl_s=100, duplicate_labels="latest")
    jb.add_prediction("r", (0.0, "p"))
    jb.add_label("r", (20.0, "first"))
    assert jb.add_label("r", (10.0, "older"))[0] is Outcome.DUPLICATE
    assert jb.add_label("r", (150.0, "fix"))[1] == [(Outcome.LATE, (0.0, "p"))]


def test_a_waiting_label_is_replaced_by_one_that_wins() -> None:
    jb = JoinBuffer(ttl_s=100, bucket_s=10)
    jb.add_label("r", (50.0, "second"))
    assert jb.add_label("r", (40.0, "first"))[0] is Outcome.DUPLICATE
    assert jb.add_prediction("r", (0.0, "p"))[2] == (40.0, "first")
    jb.add_label("s", (50.0, "second"))
    jb.add_label("s", (40.0, "first"))
    assert jb.expire(155.0) == ([], [(40.0, "first")])  # orphaned at the winner's deadline, once
    assert jb.expire(300.0) == ([], [])


@settings(max_examples=300, deadline=None)
@given(numbers=st.lists(st.integers(0, 2**128 - 1), min_size=16, max_size=40),
       edits=st.lists(st.tuples(st.integers(0, 39), st.integers(0, 35), st.sampled_from("0aFg-_ é")), max_size=6),
       upper=st.booleans())
def test_compact_ids_equal_compact_id_of_each(numbers: list[int], edits: list[tuple[int, int, str]],
                                              upper: bool) -> None:
    ids = [str(uuid.UUID(int=n)) for n in numbers]
    for row, at, char in edits:
        if row < len(ids):
            ids[row] = ids[row][:at] + char + ids[row][at + 1:]
    if upper and ids:
        ids[0] = ids[0].upper()
    assert compact_ids(ids) == [compact_id(r) for r in ids]
