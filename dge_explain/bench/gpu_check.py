"""The GPU check behind ``make gpu-check``: on one CUDA device, the CUDA tests,
the DGE models on the compiled/fused ops against the reference ops (float32,
float16, bfloat16), and the timings of the ops and of dense vs DGE models at
budget 0.5 (appendix Fig. 6, GPU panel), written as JSON + Markdown into --out.
Sized for at most 5 minutes on an H100/H200 (the build included, see the
Makefile).  ``--device cpu`` runs the same steps on the CPU ops, for the
check's own tests.

    .venv/bin/python -m dge_explain.bench.gpu_check --out runs/gpu-check
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch

from dge_explain import ops
from dge_explain.bench import ops as op_bench
from dge_explain.bench.runtime import HEADER, Case, build_pair, cases_to_json, environment, run_sweep, write_report
from dge_explain.complexity import fine_fraction_for_ratio
from dge_explain.models import force_gates, random_fraction
from dge_explain.console import format_table

ROOT = Path(__file__).resolve().parents[2]
CUDA_TESTS = ["tests/test_ops_cuda.py", "tests/test_ops_fused.py"]
# Logits error allowed against the float64 reference ops, relative to max(1, max |logit|):
# a whole network in reduced precision drifts far more than one op.
MODEL_TOLERANCE = {"float32": 1e-3, "float16": 3e-2, "bfloat16": 1.5e-1}
PARITY_RESOLUTION = 448
TESTS_TIMEOUT_S = 240
# The large cases take ~0.5 s per call: few repeats keep the check within its 5 minutes.
TIMING = {"warmup": 1, "min_repeats": 3}


def run_cuda_tests(out: Path) -> dict:
    """The CUDA test files on the real device (not the emulation), counted from pytest's JUnit XML."""
    report = out / "cuda-tests.xml"
    missing = [test for test in CUDA_TESTS if not (ROOT / test).is_file()]
    if missing:
        raise FileNotFoundError(f"the GPU check runs the test files {', '.join(missing)} of a checkout, not found "
                                f"under {ROOT}: run `make gpu-check` in a clone of the repository")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TESTS,
               "-k", "not emulated", f"--junitxml={report}"]
    started = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TESTS_TIMEOUT_S)
        returncode, log = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired as expired:   # a hung kernel: what ran so far, counted as a failure
        returncode = -1
        log = "".join(part.decode() if isinstance(part, bytes) else (part or "")
                      for part in (expired.stdout, expired.stderr)) + f"\ntimed out after {TESTS_TIMEOUT_S} s\n"
    (out / "cuda-tests.log").write_text(log)
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    if report.exists():
        suite = ElementTree.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        total = int(suite.get("tests", 0))
        counts.update(failed=int(suite.get("failures", 0)), errors=int(suite.get("errors", 0)),
                      skipped=int(suite.get("skipped", 0)))
        counts["passed"] = total - counts["failed"] - counts["errors"] - counts["skipped"]
    return {"command": " ".join(command), "returncode": returncode,
            "seconds": round(time.perf_counter() - started, 1), **counts}


def model_parity(names: list[str], device: torch.device, dtypes: list[str]) -> list[dict]:
    """Each DGE model (random weights, gates forced to budget 0.5, the same gates in
    every run) on the active ops in each dtype against the reference ops in float64."""
    rows = []
    for name in names:
        _, dge = build_pair(name)
        size = (PARITY_RESOLUTION, PARITY_RESOLUTION)
        fine = fine_fraction_for_ratio(dge, size, 0.5)
        images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

        def logits(dtype: torch.dtype) -> torch.Tensor:
            model = copy.deepcopy(dge).to(device, dtype)  # every dtype cast from the same float32 weights
            with torch.inference_mode(), force_gates(model, random_fraction(fine, seed=1)):
                return model(images.to(device, dtype)).double().cpu()

        with ops.use_backend("reference"):
            want = logits(torch.float64)
        scale = max(1.0, float(want.abs().max()))
        for dtype in dtypes:
            error = float((logits(getattr(torch, dtype)) - want).abs().max()) / scale
            rows.append({"model": name, "dtype": dtype, "resolution": PARITY_RESOLUTION,
                         "relative_error": error, "tolerance": MODEL_TOLERANCE[dtype],
                         "passed": error <= MODEL_TOLERANCE[dtype]})
    return rows


def goals(cases: list[dict]) -> list[str]:
    """The GPU goals of the issue, judged on the batch-1 cases."""
    lines = []
    for name in sorted({c["model"] for c in cases}):
        single = [c for c in cases if c["model"] == name and c["batch"] == 1]
        from_512 = [c for c in single if c["resolution"] >= 512]
        at_1024 = [c for c in single if c["resolution"] == 1024]
        if from_512:
            ok = all(c["latency_ratio"] < 1 for c in from_512)
            lines.append(f"{name} ({from_512[0]['dtype']}): DGE faster than dense at batch 1 from 512 px up: "
                         f"{'yes' if ok else 'no'} (latency ratios "
                         + ", ".join(f"{c['resolution']}: {c['latency_ratio']:.2f}" for c in from_512) + ")")
        for case in at_1024:
            speedup = 1 / case["latency_ratio"]
            lines.append(f"{name} ({case['dtype']}): speed-up at 1024 px, batch 1: {speedup:.2f}x "
                         f"({'meets' if speedup >= 1.5 else 'misses'} the 1.5x goal)")
    return lines


def markdown(report: dict) -> str:
    env = report["environment"]
    parts = [f"# GPU check ({env.get('gpu', env.get('cpu', 'cpu'))}, torch {env['torch']})", ""]
    tests = report.get("cuda_tests")
    if tests:
        parts += ["## CUDA tests", "", f"`{tests['command']}`: {tests['passed']} passed, {tests['failed']} failed, "
                  f"{tests['errors']} errors, {tests['skipped']} skipped ({tests['seconds']} s)", ""]
    parts += ["## DGE models against the reference ops (float64)", "",
              format_table(["model", "dtype", "res", "relative error", "tolerance", "passed"],
                           [[r["model"], r["dtype"], str(r["resolution"]), f"{r['relative_error']:.2e}",
                             f"{r['tolerance']:.0e}", "yes" if r["passed"] else "NO"] for r in report["parity"]]), ""]
    for dtype, table in report["op_timings"].items():
        parts += [f"## Ops ({dtype})", ""]
        for section in ("pooling", "attention", "deformable"):
            parts += [format_table(list(table[section][0]), [list(r.values()) for r in table[section]]), ""]
    for dtype, cases in report["model_timings"].items():
        parts += [f"## Dense vs DGE at budget 0.5 ({dtype})", "",
                  format_table(HEADER, [Case(**c).row() for c in cases]), "", *[f"- {g}" for g in goals(cases)], ""]
    parts.append(f"Total: {report['seconds']:.0f} s")
    return "\n".join(parts) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu-check.json, gpu-check.md and "
                        "bench-<dtype>.json (the runtime figure's input)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="+", default=["deit_tiny", "deit_small", "pvt_small", "dpvt_small"])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[224, 384, 512, 768, 1024])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"],
                        choices=list(MODEL_TOLERANCE), help="precisions of the parity check")
    parser.add_argument("--timing-dtypes", nargs="+", default=["bfloat16"], choices=list(MODEL_TOLERANCE),
                        help="precisions of the op and model timings (float32 adds ~1 min on an H100)")
    parser.add_argument("--min-time", type=float, default=0.4, help="seconds of timing per case")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the CUDA test files")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    info = ops.build_info()
    if device.type == "cuda" and not (torch.cuda.is_available() and info["compiled_cuda"]):
        raise SystemExit("gpu-check needs a visible CUDA device and dge_explain._C built with CUDA kernels "
                         f"(CUDA available: {torch.cuda.is_available()}, built with CUDA: {info['compiled_cuda']}; "
                         "`make gpu-check` builds them)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict = {"environment": environment(device), "build": info}
    if not args.skip_tests:
        report["cuda_tests"] = run_cuda_tests(out)
        print(f"CUDA tests: {report['cuda_tests']}", flush=True)
    report["parity"] = model_parity(args.models, device, args.dtypes)
    report["op_timings"] = {}
    for dtype in args.timing_dtypes:
        path = out / f"ops-{dtype}.json"
        op_bench.main(["--device", args.device, "--dtype", dtype, "--min-time", str(args.min_time / 4),
                       "--json", str(path)])
        tables = json.loads(path.read_text())
        report["op_timings"][dtype] = {section: tables[section] for section in ("pooling", "attention", "deformable")}
    report["model_timings"] = {}
    for dtype in args.timing_dtypes:
        cases = run_sweep(args.models, args.resolutions, args.batch_sizes, device, 0.5, args.min_time,
                          getattr(torch, dtype), report=lambda line: print(line, flush=True), **TIMING)
        report["model_timings"][dtype] = [vars(case) for case in cases]
        # the runtime benchmark's format: figures/runtime.py draws the Fig. 6 GPU panel from it
        cases_to_json(cases, device, out / f"bench-{dtype}.json")
    report["seconds"] = time.perf_counter() - started
    write_report(out / "gpu-check.json", report, markdown(report))
    print(markdown(report))
    failed = [r for r in report["parity"] if not r["passed"]]
    tests = report.get("cuda_tests", {})
    return 1 if failed or tests.get("returncode", 0) != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
