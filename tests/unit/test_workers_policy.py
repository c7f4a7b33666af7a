"""The multi-process node's sans-I/O parts: which process takes the next viewer, the resource
ids that name it, the ports per worker and the merged /metrics."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.workers.metrics import merge_expositions
from relay.workers.policy import (
    FRONT,
    Assigner,
    split_session_id,
    worker_ports,
    worker_session_id,
)


def ready(count: int, **kw: object) -> Assigner:
    a = Assigner(count, **kw)  # type: ignore[arg-type]
    for i in range(count):
        a.report(i, ready=True, viewers=0)
    return a


def test_a_burst_spreads_between_reports() -> None:
    a = ready(3)
    picks = [a.pick() for _ in range(9)]
    assert sorted(picks.count(i) for i in range(3)) == [3, 3, 3]
    assert a.viewers() == 9


def test_least_loaded_by_report_then_pending() -> None:
    a = ready(3)
    a.report(0, ready=True, viewers=10)
    a.report(1, ready=True, viewers=4)
    a.report(2, ready=True, viewers=6)
    got = [a.pick() for _ in range(4)]
    assert got == [1, 1, 1, 2]  # 4,5,6 at 1 then 6 vs 7: ties go to the lower index


def test_front_weight_and_front_not_serving() -> None:
    a = ready(2, front_weight=5)
    assert [a.pick() for _ in range(5)] == [1] * 5
    assert a.pick() == 0  # 5 + 0 pending at the front against 5 at the worker: the front
    b = ready(2, front_serves=False)
    assert {b.pick() for _ in range(10)} == {1}


def test_busy_and_down_processes_are_skipped() -> None:
    a = ready(3, max_busy=0.8)
    a.report(1, ready=True, viewers=0, busy=0.95)
    assert {a.pick() for _ in range(4)} == {0, 2}
    a.down(2)
    assert a.pick() == 0
    a.report(0, ready=True, viewers=0, busy=0.9)
    assert a.pick() in (0, 1)  # all busy: the least loaded still takes it (its guard may 503)
    a.down(0)
    a.down(1)
    assert a.pick() is None


def test_release_and_exclude() -> None:
    a = ready(2)
    w = a.pick()
    assert w == 0
    a.release(w)
    assert a.viewers() == 0
    assert a.pick(frozenset({0})) == 1
    assert a.pick(frozenset({0, 1})) is None


def test_a_new_report_replaces_pending() -> None:
    a = ready(2)
    for _ in range(4):
        a.pick()
    a.report(1, ready=True, viewers=1)  # the worker counted only what reached it
    assert a.viewers() == 2 + 1


def test_at_least_one_process() -> None:
    with pytest.raises(ValueError):
        Assigner(0)


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ("abcDEF_-12", (FRONT, "abcDEF_-12")),
        ("1.abcDEF_-12", (1, "abcDEF_-12")),
        ("15.x", (15, "x")),
        ("x.abc", None),
        ("1.", None),
        ("1.a.b", None),
        ("1.a/b", None),
        ("1234.abc", None),
        ("-1.abc", None),
    ],
)
def test_resource_ids(resource: str, expected: tuple[int, str] | None) -> None:
    assert split_session_id(resource) == expected


def test_resource_ids_round_trip() -> None:
    assert worker_session_id(FRONT, "abc") == "abc"
    assert split_session_id(worker_session_id(3, "abc")) == (3, "abc")


def test_worker_ports() -> None:
    assert worker_ports(2, 8443, 8443) == worker_ports(2, 8443, 8443)
    p = worker_ports(2, 8443, 9000)
    assert (p.udp, p.tcp) == (8445, 9002)
    p = worker_ports(1, 0, 0)
    assert (p.udp, p.tcp) == (0, 0)


FRONT_TEXT = """# HELP stagecast_viewers Viewer sessions
# TYPE stagecast_viewers gauge
stagecast_viewers{room="a"} 3.0
# HELP stagecast_pulls_opened_total Pulls opened
# TYPE stagecast_pulls_opened_total counter
stagecast_pulls_opened_total 1.0
"""
WORKER_TEXT = """# HELP stagecast_viewers Viewer sessions
# TYPE stagecast_viewers gauge
stagecast_viewers{room="a"} 5.0
stagecast_viewers{room="b"} 1.0
# HELP stagecast_pulls_opened_total Pulls opened
# TYPE stagecast_pulls_opened_total counter
stagecast_pulls_opened_total 2.0
"""


def test_metrics_merge_labels_each_process_once_per_family() -> None:
    text = merge_expositions({0: FRONT_TEXT, 1: WORKER_TEXT, 2: "not { a metric"}).decode()
    assert text.count("# TYPE stagecast_viewers gauge") == 1
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    viewers = {
        (s.labels["worker"], s.labels["room"]): s.value for s in fams["stagecast_viewers"].samples
    }
    assert viewers == {("0", "a"): 3.0, ("1", "a"): 5.0, ("1", "b"): 1.0}
    opened = {s.labels["worker"]: s.value for s in fams["stagecast_pulls_opened"].samples}
    assert opened == {"0": 1.0, "1": 2.0}
    assert fams["stagecast_worker_scrape_errors"].samples[0].value == 1.0


def test_room_viewers_of_the_workers_are_their_reports_plus_what_went_since() -> None:
    a = Assigner(3, front_serves=False)
    a.report(1, ready=True, viewers=2, rooms={"r": 2})
    a.report(2, ready=True, viewers=1, rooms={"r": 1, "s": 0})
    assert a.worker_room_viewers("r") == 3
    picked = a.pick(room="r")
    assert picked in (1, 2) and a.worker_room_viewers("r") == 4
    a.release(picked, "r")  # the worker refused it
    assert a.worker_room_viewers("r") == 3
    a.pick(room="s")
    assert a.worker_room_viewers("s") == 1 and a.worker_room_viewers("r") == 3
    a.report(1, ready=True, viewers=1, rooms={"r": 1})  # a fresh report replaces its counts
    a.report(2, ready=True, viewers=0, rooms={})
    assert a.worker_room_viewers("r") == 1 and a.worker_room_viewers("s") == 0
    a.report(1, ready=True, viewers=1)  # a report without rooms keeps the last counts
    assert a.worker_room_viewers("r") == 1
