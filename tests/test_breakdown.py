"""`vggprune breakdown`: a pruned model and its base timed part by part, beside each part's work ratio."""

from __future__ import annotations

import json

import pytest

from tests.arith import ARCH, pruned_widths
from tests.test_checkpoint_cli import run_cli
from vggprune import prune
from vggprune.counting import count_params_macs
from vggprune.runtimes import get_runtime
from vggprune.timing.breakdown import OTHER, breakdown, ceiling, onnx_parts, part_work

SMALL_PARTS = ["conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "pool3", "conv5", "conv6", "pool4",
               "conv7", "conv8", "pool5", "avgpool", "fc1", "fc2", "fc3", OTHER]
# VGG11: the spatial side each conv runs at, for a 32-px input (a 2x2 max-pool after convs 1, 2, 4, 6, 8).
SMALL_SIDES = (32, 16, 8, 8, 4, 4, 2, 2)


def _expected_work(conv: tuple[int, ...], fc: tuple[int, ...], num_classes: int) -> dict[str, int]:
    """Per-image MACs of every conv and FC layer and output elements of every pool, by arithmetic."""
    work, c_in = {}, 3
    for i, (c, side) in enumerate(zip(conv, SMALL_SIDES), 1):
        work[f"conv{i}"] = c * c_in * 9 * side * side
        c_in = c
    for i, (c, side) in enumerate(zip((conv[0], conv[1], conv[3], conv[5], conv[7]), (16, 8, 4, 2, 1)), 1):
        work[f"pool{i}"] = c * side * side
    work["avgpool"] = conv[-1]  # the small model pools to 1x1
    f_in = conv[-1]
    for i, f in enumerate((*fc, num_classes), 1):
        work[f"fc{i}"] = f_in * f
        f_in = f
    return work


def test_part_work_matches_arithmetic_for_base_and_pruned(small_model):
    assert part_work(small_model, 32) == _expected_work(ARCH["small"][0], ARCH["small"][1], 10)
    pruned = prune(small_model, 0.5, method="by-hand", scope="conv")
    conv, fc = pruned_widths("small", "0.5", "conv")
    assert part_work(pruned, 32) == _expected_work(conv, fc, 10)


def test_ceiling_shrinks_each_part_by_its_own_ratio():
    # conv work / 4 and an FC head that keeps its size: 80 + 20 ms -> 20 + 20 ms; other stays as it was.
    assert ceiling({"conv1": 80.0, "fc1": 20.0}, {"conv1": 4.0, "fc1": 1.0}) == pytest.approx(2.5)
    assert ceiling({"conv1": 80.0, OTHER: 10.0}, {"conv1": 4.0}) == pytest.approx(90 / 30)


def _event(cat, name, ts, dur, op=None):
    e = {"cat": cat, "name": name, "ts": ts, "dur": dur}
    if op:
        e["args"] = {"op_name": op}
    return e


def test_onnx_profile_events_become_parts_per_run():
    nodes = [("ReorderInput", 1), ("Conv", 100), ("Relu", 5), ("MaxPool", 10), ("Conv", 200),
             ("GlobalAveragePool", 3), ("Reshape", 1), ("FusedGemm", 50), ("Gemm", 7)]
    events = [_event("Session", "session_initialization", 0, 10)]
    for start in (1000, 5000):  # two runs; each node's time counts toward the run it falls in
        events.append(_event("Session", "model_run", start, 500))
        ts = start + 10
        for i, (op, dur) in enumerate(nodes):
            events.append(_event("Node", f"n{i}_kernel_time", ts, dur, op))
            events.append(_event("Node", f"n{i}_fence_before", ts, 0))  # not a kernel: ignored
            ts += dur + 1
    runs = onnx_parts(events)
    assert len(runs) == 2
    expected = {"conv1": 105e-6, "pool1": 10e-6, "conv2": 200e-6, "avgpool": 3e-6, "fc1": 50e-6, "fc2": 7e-6,
                OTHER: 2e-6 + (500 - 377) * 1e-6}  # reorder + reshape, and the session's time between nodes
    for parts in runs:
        assert parts == pytest.approx(expected)


def test_eager_breakdown_of_the_small_model(small_model):
    pruned = prune(small_model, 0.5, method="by-hand", scope="conv")
    result = breakdown(small_model, pruned, "eager", batch_size=4, rounds=3, warmup=1)
    assert [p.part for p in result.parts] == SMALL_PARTS
    ratios = {p.part: p.work_ratio for p in result.parts}
    # conv1 keeps its 3 input channels (2x fewer MACs); every later conv halves both sides (4x);
    # fc1 loses half its inputs, fc2 and fc3 keep theirs; pools and the average pool halve.
    assert ratios["conv1"] == 2.0 and all(ratios[f"conv{i}"] == 4.0 for i in range(2, 9))
    assert (ratios["fc1"], ratios["fc2"], ratios["fc3"]) == (2.0, 1.0, 1.0)
    assert ratios["pool1"] == ratios["avgpool"] == 2.0 and ratios[OTHER] is None
    macs = count_params_macs(small_model)[1] / count_params_macs(pruned)[1]
    assert result.theoretical == pytest.approx(macs)
    assert result.rounds == 3 and result.batch_size == 4
    for p in (*result.parts, result.total):
        assert p.base_ms >= 0 and p.pruned_ms >= 0 and p.speedup_ci[0] <= p.speedup <= p.speedup_ci[1]


def test_fused_breakdown_has_the_same_parts(small_model):
    pruned = prune(small_model, 0.5, method="by-hand", scope="all")
    result = breakdown(small_model, pruned, "fused", batch_size=2, rounds=2, warmup=0)
    assert [p.part for p in result.parts] == SMALL_PARTS  # BN folded into the conv: an Identity tail


def test_onnxruntime_breakdown_maps_fused_nodes_to_parts(small_model, tmp_path):
    reason = get_runtime("onnxruntime").unavailable("cpu")
    if reason:
        pytest.skip(reason)
    pruned = prune(small_model, 0.5, method="by-hand", scope="conv")
    result = breakdown(small_model, pruned, "onnxruntime", batch_size=4, rounds=3, warmup=1, workdir=tmp_path)
    layers = [p.part for p in result.parts if p.part.startswith(("conv", "fc"))]
    assert layers == [n for n in SMALL_PARTS if n.startswith(("conv", "fc"))]
    assert {p.part: p.work_ratio for p in result.parts}["conv2"] == 4.0
    assert not list(tmp_path.rglob("profile*.json"))  # the profile is read, then removed


def test_breakdown_refuses_a_runtime_it_cannot_split(small_model):
    from vggprune.errors import UserError

    with pytest.raises(UserError, match="breakdown runs in eager, fused, onnxruntime, not 'openvino'"):
        breakdown(small_model, small_model, "openvino")


def test_cli_breakdown_as_json():
    out = run_cli("breakdown", "--model", "small", "--num-classes", "10", "--method", "by-hand", "--scope", "conv",
                  "--rate", "0.5", "--batch-size", "2", "--rounds", "2", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert [p["part"] for p in result["parts"]] == SMALL_PARTS
    assert result["runtime"] == "eager" and result["total"]["part"] == "total"
    # every part shrinks by 1x-4x of work (other by nothing), so the whole model's ceiling is in between
    assert 1.0 <= result["ceiling"] <= 4.0 and result["theoretical"] > 1.0


@pytest.mark.parametrize("args, message", [
    (["--rate", "1.5"], "rate must be a number in [0, 1), got 1.5"),
    (["--rate", "0.5", "--runtime", "openvino"], "unknown runtime 'openvino'; allowed: eager, fused, onnxruntime"),
    (["--rate", "0.5", "--rounds", "1"], "--rounds: '1' is not an integer >= 2"),
    (["--rate", "0.5", "--model", "seed", "--batch-size", "60000"], "--batch-size: a batch of 60,000 224-px images"),
])
def test_cli_breakdown_bad_input_is_one_line_and_exit_2(args, message):
    out = run_cli("breakdown", "--model", "small", "--num-classes", "10", *args)
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1
