"""Placement as pure logic: resources parsed and detected, the placement decision as a table (nodes and
requests in, a choice or a reason out), the seed's ledger of holds. No event loop, no processes."""
from __future__ import annotations

import math

import pytest

import disto
from disto.launch import rank_gpu_env
from disto.placement import (Infeasible, Ledger, NodeRoom, check_request, check_strategy, check_timeout, detect_resources, format_resources,
                             parse_resources, place, visible_gpus)
from disto.placement import resources as resources_mod

GPU2 = {"gpu": 2.0}


def room(node_id: str, total: dict, free: dict | None = None, load: int = 0) -> NodeRoom:
    return NodeRoom(node_id, f"{node_id}:1", total, dict(total) if free is None else free, load)


@pytest.mark.parametrize("text,expected", [
    ("gpu=2,ssd=1", {"gpu": 2.0, "ssd": 1.0}),
    (" gpu = 2 , ssd=1 ,", {"gpu": 2.0, "ssd": 1.0}),
    ("memory=64G", {"memory": 64.0 * 2**30}),
    ("memory=1.5t,cpu=8", {"memory": 1.5 * 2**40, "cpu": 8.0}),
    ("gpu=0.5", {"gpu": 0.5}),
    ("", {}),
])
def test_parse_resources(text: str, expected: dict) -> None:
    assert parse_resources(text) == expected


@pytest.mark.parametrize("text,says", [
    ("gpu", "NAME=AMOUNT"), ("gpu=", "NAME=AMOUNT"), ("=2", "NAME=AMOUNT"), ("gpu=two", "expected a number"),
    ("gpu=-1", ">= 0"), ("gpu=inf", "finite"), ("gpu=nan", "finite"),
])
def test_parse_resources_refuses_bad_text(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_resources(text)


@pytest.mark.parametrize("request_,says", [
    ([("gpu", 1)], "dict"), ({"gpu": -1}, ">= 0"), ({"gpu": True}, "number"), ({"gpu": "1"}, "number"),
    ({"": 1}, "non-empty"), ({"a b": 1}, "without"), ({1: 1}, "string"), ({"gpu": math.nan}, "finite"),
])
def test_a_bad_request_says_what_is_wrong(request_: object, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        check_request(request_)


def test_zero_amounts_ask_for_nothing() -> None:
    assert check_request({"gpu": 0, "ssd": 1}) == {"ssd": 1.0}


@pytest.mark.parametrize("env,expected", [
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, ["0", "1"]),
    ({"CUDA_VISIBLE_DEVICES": "3"}, ["3"]),
    ({"CUDA_VISIBLE_DEVICES": ""}, []),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, []),
    ({"CUDA_VISIBLE_DEVICES": "0,-1,2"}, ["0"]),  # CUDA stops at the first invalid entry
    ({"CUDA_VISIBLE_DEVICES": "GPU-aa, GPU-bb"}, ["GPU-aa", "GPU-bb"]),
])
def test_visible_gpus_follow_cuda_visible_devices(env: dict, expected: list) -> None:
    assert visible_gpus(env) == expected


def test_visible_gpus_without_the_variable_come_from_the_driver(tmp_path, monkeypatch) -> None:
    for i in range(3):
        (tmp_path / f"0000:0{i}:00.0").mkdir()
    monkeypatch.setattr(resources_mod, "NVIDIA_GPUS", str(tmp_path))
    assert visible_gpus({}) == ["0", "1", "2"]
    monkeypatch.setattr(resources_mod, "NVIDIA_GPUS", str(tmp_path / "absent"))
    assert visible_gpus({}) == []


def test_detected_resources_and_declared_ones_on_top() -> None:
    found = detect_resources(None, {"CUDA_VISIBLE_DEVICES": "0,1"})
    assert found["gpu"] == 2 and found["cpu"] >= 1 and found["memory"] > 2**20
    declared = detect_resources({"gpu": 4, "ssd": 1}, {"CUDA_VISIBLE_DEVICES": ""})
    assert declared["gpu"] == 4 and declared["ssd"] == 1 and declared["cpu"] == found["cpu"]


def test_format_resources() -> None:
    assert format_resources({"ssd": 1, "gpu": 2.0, "memory": 16 * 2**30, "cpu": 0.5}) == \
        "cpu=0.5 gpu=2 memory=16G ssd=1"
    assert format_resources({}) == "nothing"


# (nodes, requests, strategy) -> the node ids chosen, or a piece of the reason
PLACEMENTS = [
    # one request: spread goes to the node with the fewest placed actors, then the most free
    ([room("a", GPU2, load=1), room("b", GPU2)], [{"gpu": 1}], "spread", ["b"]),
    ([room("a", GPU2, {"gpu": 1}), room("b", GPU2)], [{"gpu": 1}], "spread", ["b"]),
    # pack goes to the fullest node that still fits (best fit)
    ([room("a", GPU2), room("b", GPU2, {"gpu": 1})], [{"gpu": 1}], "pack", ["b"]),
    # only the nodes that have the label
    ([room("a", GPU2), room("b", {"ps": 1.0})], [{"ps": 1}], "spread", ["b"]),
    # a group: spread over every node, pack onto as few as take it
    ([room("a", GPU2), room("b", GPU2)], [{"gpu": 1}] * 4, "spread", ["a", "b", "a", "b"]),
    ([room("a", GPU2), room("b", GPU2)], [{"gpu": 1}] * 2, "pack", ["a", "a"]),
    ([room("a", GPU2), room("b", GPU2, {"gpu": 1})], [{"gpu": 1}] * 3, "pack", ["a", "a", "b"]),
    ([room("a", {"gpu": 4.0}), room("b", {"gpu": 4.0}), room("c", {"gpu": 4.0})], [{"gpu": 1}] * 6, "spread",
     ["a", "b", "c", "a", "b", "c"]),
    # nothing asked: spread by count, pack all on one
    ([room("a", {}), room("b", {})], [{}] * 3, "spread", ["a", "b", "a"]),
    ([room("a", {}), room("b", {})], [{}] * 3, "pack", ["a", "a", "a"]),
    # fractions add up
    ([room("a", {"gpu": 1.0})], [{"gpu": 0.5}, {"gpu": 0.25}, {"gpu": 0.25}], "spread", ["a", "a", "a"]),
    # mixed sizes: in order fails (the small one takes the big node), largest first fits
    ([room("a", {"gpu": 1.0}), room("b", {"gpu": 2.0})], [{"gpu": 1}, {"gpu": 2}], "spread", ["a", "b"]),
    ([room("a", {"gpu": 2.0}), room("b", {"gpu": 1.0})], [{"gpu": 1}, {"gpu": 2}], "spread", ["b", "a"]),
    # several resources at once
    ([room("a", {"gpu": 1.0, "cpu": 1.0}), room("b", {"gpu": 1.0, "cpu": 8.0})], [{"gpu": 1, "cpu": 4}],
     "spread", ["b"]),
    ([], [], "spread", []),
    # infeasible: the reason says what was asked and what each node has free
    ([room("a", GPU2, {"gpu": 0.0}), room("b", GPU2, {"gpu": 1.0})], [{"gpu": 2}], "spread",
     "cannot place gpu=2 (strategy spread): not enough free now. Nodes: a:1 gpu=0 free (of gpu=2); "
     "b:1 gpu=1 free (of gpu=2)"),
    ([room("a", GPU2)], [{"gpu": 1}] * 3, "pack", "3 x gpu=1 (strategy pack): more than the cluster has"),
    ([room("a", GPU2)], [{"tpu": 1}], "spread", "no node has 'tpu'"),
    ([], [{"gpu": 1}], "spread", "the cluster has no worker nodes"),
    ([room("a", {"gpu": 1.0, "cpu": 8.0})], [{"gpu": 1, "cpu": 9}], "spread", "cpu=8 gpu=1 free"),
]


@pytest.mark.parametrize("nodes,requests,strategy,expected", PLACEMENTS)
def test_placement_table(nodes: list, requests: list, strategy: str, expected: object) -> None:
    got = place(nodes, requests, strategy)
    if isinstance(expected, list):
        assert got == expected
    else:
        assert isinstance(got, Infeasible), got
        assert str(expected) in got.reason, got.reason


def test_infeasible_says_whether_waiting_can_help() -> None:
    busy = place([room("a", GPU2, {"gpu": 0.0})], [{"gpu": 1}])
    assert isinstance(busy, Infeasible) and not busy.never and busy.free == {"a:1": {"gpu": 0.0}}
    too_big = place([room("a", GPU2)], [{"gpu": 3}])
    assert isinstance(too_big, Infeasible) and too_big.never


def test_an_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="'spread', 'pack'"):
        place([room("a", GPU2)], [{"gpu": 1}], "random")
    with pytest.raises(ValueError, match="'spread', 'pack'"):
        check_strategy("SPREAD")
    for bad in (-1, True, "5"):
        with pytest.raises(ValueError, match="placement_timeout"):
            check_timeout(bad)
    assert check_timeout(None) is None and check_timeout(0) == 0 and check_strategy("pack") == "pack"


def test_ledger_holds_binds_and_releases() -> None:
    book = Ledger()
    book.add_node("a", "A:1", {"gpu": 2.0})
    book.add_node("b", "B:1", {"gpu": 1.0, "ps": 1.0})
    holds = book.reserve([{"gpu": 1}] * 3, "spread", owner="driver")
    assert not isinstance(holds, Infeasible)
    assert sorted(h.node_id for h in holds) == ["a", "a", "b"]
    assert book.free("a") == {"gpu": 0.0} and book.free("b") == {"gpu": 0.0, "ps": 1.0}
    assert isinstance(book.reserve([{"gpu": 1}], "spread", "driver"), Infeasible)  # all or nothing: no change
    assert book.free("b")["ps"] == 1.0
    assert book.bind(holds[0].hold_id, ("a", 16))
    assert book.release_actor(("a", 16)) == [holds[0]]
    assert book.free(holds[0].node_id)["gpu"] == 1.0
    assert book.release(holds[0].hold_id) is None  # twice: nothing
    assert not book.bind(holds[0].hold_id, ("a", 17))  # a released hold cannot be bound


def test_ledger_only_on_a_given_node() -> None:
    book = Ledger()
    book.add_node("a", "A:1", GPU2)
    book.add_node("b", "B:1", GPU2)
    holds = book.reserve([{"gpu": 2}], "spread", "d", node_id="b")
    assert not isinstance(holds, Infeasible) and holds[0].node_id == "b"
    assert isinstance(book.reserve([{"gpu": 1}], "spread", "d", node_id="b"), Infeasible)
    gone = book.reserve([{"gpu": 1}], "spread", "d", node_id="zzz")
    assert isinstance(gone, Infeasible) and "not a worker" in gone.reason


def test_ledger_releases_what_a_lost_node_held_placed_or_reserved() -> None:
    book = Ledger()
    book.add_node("a", "A:1", GPU2)
    book.add_node("b", "B:1", GPU2)
    on_a = book.reserve([{"gpu": 1}], "spread", "driver", node_id="a")[0]  # type: ignore[index]
    on_b = book.reserve([{"gpu": 1}], "spread", "driver", node_id="b")[0]  # type: ignore[index]
    child = book.reserve([{"gpu": 1}], "spread", "driver", node_id="b")[0]  # type: ignore[index]
    unbound = book.reserve([{"gpu": 1}], "spread", "driver", node_id="a")[0]  # type: ignore[index]
    book.bind(on_a.hold_id, ("a", 16))
    book.bind(on_b.hold_id, ("b", 16))
    book.bind(child.hold_id, ("child", 16))  # an actor in a process of its own, counted on b
    assert book.remove_node("child") == [child]  # its process died: its room on b is free
    assert {h.hold_id for h in book.remove_node("driver")} == {unbound.hold_id}  # reserved, never bound
    assert book.remove_node("a") == [on_a]
    assert "a" not in book.nodes and list(book.holds) == [on_b.hold_id]
    assert book.report() == [{"node_id": "b", "address": "B:1", "total": GPU2, "free": {"gpu": 1.0},
                               "held": 1}]


def test_ledger_learns_existing_holds_again() -> None:
    book = Ledger()
    book.add_node("a", "A:1", GPU2)
    first = book.hold_again("a", {"gpu": 2}, ("a", 16))
    assert book.hold_again("a", {"gpu": 2}, ("a", 16)) is first  # once per actor
    book.hold_again("a", {"gpu": 1}, ("a", 17))  # a fact, even past the total
    assert book.free("a") == {"gpu": -1.0}


def test_placement_error_keeps_its_fields_across_pickling() -> None:
    import pickle

    e = disto.PlacementError("no room", [{"gpu": 1.0}], "pack", {"A:1": {"gpu": 0.0}})
    back = pickle.loads(pickle.dumps(e))
    assert isinstance(back, disto.DistoError) and str(back) == "no room"
    assert (back.requested, back.strategy, back.free) == ([{"gpu": 1.0}], "pack", {"A:1": {"gpu": 0.0}})


@pytest.mark.parametrize("env,expected", [
    ({"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "1"}),
    ({"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", "CUDA_VISIBLE_DEVICES": "4,5"}, {"CUDA_VISIBLE_DEVICES": "4"}),
    ({"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": ""}, {}),  # no GPUs
    ({"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4", "CUDA_VISIBLE_DEVICES": "0,1"}, {}),  # fewer GPUs than ranks
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, {}),  # not under torchrun
    ({"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "0,1", "DISTO_GPU_PER_RANK": "0"}, {}),
])
def test_each_torchrun_rank_gets_its_local_gpu(env: dict, expected: dict) -> None:
    assert rank_gpu_env(env) == expected


def test_local_cluster_checks_its_placement_arguments(monkeypatch) -> None:
    with pytest.raises(ValueError, match="2 entries for 3 nodes"):
        disto.LocalCluster(nodes=3, resources=[{"gpu": 1}, {"gpu": 1}])
    with pytest.raises(ValueError, match=">= 0"):
        disto.LocalCluster(nodes=1, resources={"gpu": -1})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(disto.DistoError, match="sees 0"):
        disto.LocalCluster(gpus_per_node=1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,7")
    assert disto.LocalCluster(gpus_per_node=1).gpu_sets == [["3"], ["5"], ["7"]]
    assert disto.LocalCluster(gpus_per_node=2).n == 1
    with pytest.raises(disto.DistoError, match="need 4"):
        disto.LocalCluster(nodes=2, gpus_per_node=2)
    with pytest.raises(ValueError, match="gpus_per_node"):
        disto.LocalCluster(gpus_per_node=0)
