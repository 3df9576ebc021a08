"""The runtime benchmark's machinery (timings themselves are not tested):
budget-matched gate forcing, case records, JSON and the command line."""
import json
import os
import subprocess
import sys

import pytest
import timm
import torch

from dge_explain.bench.runtime import build_pair, run_case
from dge_explain.bench.timing import measure_interleaved
from dge_explain.complexity import dge_complexity, expected_ratio, fine_fraction_for_ratio
from dge_explain.models import force_gates, random_fraction



def test_fine_fraction_hits_the_target_ratio():
    model = timm.create_model("deit_dge_s12_tiny_patch16_224").eval()
    fine = fine_fraction_for_ratio(model, (448, 448), 0.5)
    assert expected_ratio(model, (448, 448), fine) == pytest.approx(0.5, abs=1e-9)
    assert expected_ratio(model, (448, 448), 1.0) == pytest.approx(1.0)
    with torch.no_grad(), force_gates(model, random_fraction(fine, seed=1)):
        model(torch.zeros(2, 3, 448, 448))
    assert float(dge_complexity(model).ratio) == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError, match="out of reach"):
        fine_fraction_for_ratio(model, (448, 448), 0.1)


def test_run_case_records_ratios():
    dense, dge = build_pair("deit_tiny")
    case = run_case("deit_tiny", dense, dge, 224, 1, torch.device("cpu"), 0.5, min_time=0.05)
    assert case.complexity_ratio == pytest.approx(0.5, abs=0.05)
    assert case.latency_ratio == pytest.approx(case.dge_ms / case.dense_ms)
    assert case.saving_realised == pytest.approx((1 - case.latency_ratio) / (1 - case.complexity_ratio))
    assert len(case.row()) == 8


def test_interleaved_timing_repeats_every_candidate():
    calls = {"a": 0, "b": 0}

    def bump(name):
        calls[name] += 1

    timings = measure_interleaved({"a": lambda: bump("a"), "b": lambda: bump("b")}, min_time=0.0,
                                  warmup=2, min_repeats=5)
    assert calls == {"a": 7, "b": 7} and timings["a"].repeats == 5


def test_command_line_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "dge_explain", "bench", "--models", "pvt_small",
                             "--resolutions", "224", "256", "--min-time", "0.05", "--json", str(out)],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped pvt_small at 224: input 224x224" in result.stdout
    data = json.loads(out.read_text())
    assert [c["resolution"] for c in data["cases"]] == [256]
    assert data["cases"][0]["dtype"] == "float32"
    assert data["environment"]["threads"] >= 1 and "torch" in data["environment"]


def test_reduced_precision_on_the_cpu_is_refused_before_any_model_is_built(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dge_explain", "bench", "--dtype", "bfloat16",
                             "--json", str(tmp_path / "bench.json")], capture_output=True, text=True)
    assert result.returncode != 0 and not (tmp_path / "bench.json").exists()
    assert "--dtype bfloat16: on the CPU the DGE ops run float32 (and float64) only" in result.stderr


@pytest.mark.slow
def test_op_benchmark_reports_every_shape_over_rounds(tmp_path, capsys):
    from dge_explain.bench import ops as op_bench

    out = tmp_path / "ops.json"
    assert op_bench.main(["--rounds", "2", "--min-time", "0", "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(r["shape"], r["op"]) for r in result["pooling"]] == [
        (shape[0], op) for shape in op_bench.POOL_SHAPES
        for op in ("compress", "decompress", "restore (fused)")]
    assert [r["shape"] for r in result["attention"]] == [s[0] for s in op_bench.ATTENTION_SHAPES]
    assert [r["shape"] for r in result["deformable"]] == [s[0] for s in op_bench.DEFORMABLE_SHAPES]
    assert len(result["rounds"]["pooling"]) == len(result["rounds"]["attention"]) == \
        len(result["rounds"]["deformable"]) == 2
    for records in result["rounds"]["deformable"]:
        assert all(r["op_s"] > 0 and r["reference_s"] > 0 and r["bytes_gathered"] > 0 for r in records)
    for records in result["rounds"]["pooling"]:
        assert all(r["op_s"] > 0 and r["copy_s"] > 0 and r["bytes"] > 0 for r in records)
    # several rounds: median with the range over rounds, which brackets it
    for row in result["pooling"]:
        median, low, high = (float(v) for v in
                             row["of copy"].replace("%", "").replace("(", "").replace(")", "").replace("-", " ").split())
        assert low <= median <= high
    assert "2 round(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        op_bench.main(["--rounds", "0"])


def test_op_benchmark_cells_for_one_and_several_rounds():
    from dge_explain.bench import ops as op_bench
    from dge_explain.bench.timing import Timing

    def record(op_s, copy_s):
        return {"shape": "s", "op": "compress", "moved": 2e9,
                "op_time": Timing(op_s, 0.0, 7), "copy_time": Timing(copy_s, 0.0, 7)}

    one = op_bench.pooling_rows([[record(1.0, 0.5)]])
    assert one == [["s", "compress", "2000.0", "1000.000 ms ± 0.000", "2.0", "4.0", "50%"]]
    three = op_bench.pooling_rows([[record(1.0, 0.5)], [record(2.0, 0.5)], [record(0.5, 0.5)]])
    assert three == [["s", "compress", "2000.0", "1000.000 ms", "2.0 (1.0-4.0)", "4.0 (4.0-4.0)",
                      "50% (25%-100%)"]]


def test_explainer_benchmark_times_every_entry_and_names_what_cannot_run():
    from dge_explain.bench.explainers import explainer_costs
    from dge_explain.bench.timing import Timing

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=5).eval()
    images = torch.randn(2, 3, 32, 32)
    costs = explainer_costs(model, images, ["a", "b"], ["attention", "rollout relevance", "gating"], min_time=0)
    assert list(costs) == ["forward", "forward + backward", "attention", "rollout relevance", "gating"]
    assert all(isinstance(costs[k], Timing) and costs[k].repeats >= 5 for k in list(costs)[:4])
    assert costs["gating"] == "VisionTransformer has no DGE routers to read gating maps from"


@pytest.mark.slow
def test_the_presets_build_every_backbone_at_their_sizes():
    """Tables 7-8 sizes: every preset backbone, dense and DGE, gives its four maps
    (strides 4-32 of the unpadded input), and the forced gates hit budget 0.5."""
    from dge_explain.bench import presets

    for name in presets.BACKBONES:
        dense, dge = presets.build_backbones(name)
        for size in sorted({s for sizes in presets.PRESETS.values() for s in sizes}):
            images = torch.zeros(1, 3, *size)
            fine = fine_fraction_for_ratio(dge, dge.padded_size(*size), 0.5)
            with torch.inference_mode(), force_gates(dge, random_fraction(fine)):
                maps = [dense.forward_pyramid(images), dge.forward_pyramid(images)]
            for features in maps:
                assert [tuple(m.shape[-2:]) for m in features.values()] == \
                    [(-(-size[0] // s), -(-size[1] // s)) for s in (4, 8, 16, 32)], (name, size)
            assert abs(float(dge_complexity(dge).ratio) - 0.5) < 0.03, (name, size)


def test_a_preset_case_reports_macs_ratios_and_the_paper(monkeypatch):
    from dge_explain.bench import presets

    monkeypatch.setitem(presets.PRESETS, "semfpn", [(128, 192), (96, 160)])
    case, uneven = presets.run_preset("semfpn", ["pvt_small"], torch.device("cpu"), 0.0, report=lambda c: None,
                                      warmup=0, min_repeats=1)
    assert case["input"] == [128, 192] and case["padded"] == case["dense_padded"] == [128, 192]
    assert case["dge_gmacs"] < case["dense_gmacs"] and abs(case["complexity_ratio"] - 0.5) < 0.05
    # the budget's static cost is the DGE model's own finest pass (its routers included)
    assert case["complexity_ratio"] == pytest.approx(case["budget_ratio"], abs=0.002)
    # 96 px is a multiple of 32 but not of 64 (the region, 2 tokens of stride 32): with
    # ragged borders the DGE model pads as the dense one does, and its last row of
    # regions is cut short; the complexity ratio is the budget's again
    assert uneven["dense_padded"] == uneven["padded"] == [96, 160]
    assert uneven["complexity_ratio"] == pytest.approx(uneven["dge_gmacs"] / uneven["dense_gmacs"])
    assert uneven["complexity_ratio"] == pytest.approx(uneven["budget_ratio"], abs=0.01)
    assert case["paper_cpu_speedup"] == pytest.approx(1.35 / 0.72) and case["paper_flops_ratio"] == pytest.approx(155 / 226)
    assert case["speedup"] == pytest.approx(1 / case["latency_ratio"])
    assert presets.row(case)[:2] == ["pvt_small", "128x192"]


def test_presets_refuse_other_settings_before_building_anything():
    for extra, message in ((["--dtype", "bfloat16"], "--preset times forced gates at budget 0.5, float32, batch 1"),
                           (["--models", "deit_small"], "--preset covers pvt_small, pvt_medium, dpvt_small, dpvt_medium; not deit_small")):
        result = subprocess.run([sys.executable, "-m", "dge_explain", "bench", "--preset", "maskrcnn", *extra],
                                capture_output=True, text=True)
        assert result.returncode != 0 and message in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pvt_small", "dpvt_small"])
def test_the_mask_rcnn_detector_counts_and_times_both_backbones(name, monkeypatch):
    """(D)PVT-S(-DGE) inside torchvision's Mask R-CNN + FPN (a smaller input than
    Table 7's for speed): the detector runs, the dense backbone's MACs agree with
    the FLOP counter's matmul/conv count, and DGE saves only in the backbone."""
    from dge_explain.bench import detector, presets

    monkeypatch.setattr(detector, "SIZE", (256, 384))
    case = detector.measure(name, 0.0, warmup=0, min_repeats=1)
    assert case["batched"] == [256, 384] and case["padded"] == case["dense_padded"] == [256, 384]
    assert case["complexity_ratio"] == pytest.approx(case["budget_ratio"], abs=0.002)
    # the counter sees matmuls and convolutions only; dense_macs adds norms, softmax and activations
    assert 0.85 < case["dense_backbone_counted_gmacs"] / case["dense_backbone_gmacs"] <= 1.0
    saved = case["dense_detector_gmacs"] - case["dge_detector_gmacs"]
    backbone_saved = case["dense_backbone_counted_gmacs"] - case["dge_backbone_gmacs"]
    assert 0 < saved and abs(saved - backbone_saved) < 0.01 * case["dense_detector_gmacs"]  # same heads, 100 detections
    assert case["paper_gflops"] == list(presets.PAPER["maskrcnn"][name][:2]) and case["speedup"] > 0
    assert [r[0] for r in detector.rows(case)] == [name, f"{name} + DGE"]


def test_the_profile_splits_a_dge_forward_into_the_blocks_own_work_and_the_shared_work():
    from dge_explain.bench.profile import group_of, markdown, profile_pair

    result = profile_pair("deit_tiny", "forced", 64, 1, 0.5, forwards=1, min_time=0)
    dense, dge = result["dense_groups_ms"], result["dge_groups_ms"]
    assert dge["routing table"] > 0 and dge["compress / restore"] > 0
    assert "routing table" not in dense and "compress / restore" not in dense
    assert dense["matmuls"] > 0 and dge["matmuls"] > 0
    assert group_of("dge_explain::route_to_patches") == "routing table" and group_of("aten::addmm") == "matmuls"
    assert 0 < result["complexity_ratio"] < 1 and len(result["fine_per_layer"]) == 12
    assert result["dense_fixed_ms"] > 0 and result["dge_fixed_ms"] > 0 and result["fixed_cost_resolution"] == 64
    # best case: the DGE's fixed cost, plus the dense forward's variable part scaled by the MACs saved
    variable = max(result["dense_wall_ms"] - result["dense_fixed_ms"], 0.0)
    floor = (result["dge_fixed_ms"] + result["complexity_ratio"] * variable) / result["dense_wall_ms"]
    assert result["latency_ratio_floor"] == pytest.approx(floor)
    text = markdown(result)
    assert "deit_tiny, forced ratio 0.5 (randn), 64 px, batch 1" in text and "total self time" in text
    assert "the latency ratio this leaves reachable is at best" in text
