"""What a lent GPU must measure, in one command within a time budget (issue #25).

Run by ``tools/gpu_check.sh`` (which installs the carried open_clip wheels
first); it can run on its own. In order, each step skipped when its usual
length on an H100 no longer fits in what is left of the budget (seconds since
the shell script started), and stopped at the budget if it runs over:

1. the CUDA tests: tests/test_devices.py and tests/test_fused.py less their
   CPU cases (CI runs those), capped at ``--tests-cap`` seconds;
2. MSM at the paper's size (N = 200, L = 1369, C = 1024, one feature set),
   bfloat16, fused kernel then matmul; the first MSM step (the next one, if
   it fails) also times the reference's structure and a dense 8192^3 product;
3. the whole pipeline at N = 200 (open_clip ViT-L-14-336 at 518 px, random
   weights: the time does not depend on them) in the target configuration
   (bfloat16, fused, float16 feature sets), then bfloat16 matmul;
4. as time remains: MSM and the pipeline in TF32, then float32.

The 200 synthetic inputs are made once, in the background while the tests
run, as one uint8 array that every pipeline run reads
(``bench_pipeline.py --inputs-cache``). Off CUDA the fused kernel and the
reduced precisions are skipped (they need CUDA), so ``--quick --device cpu``
checks this script end to end at small sizes.

Everything goes to ``--out`` as it comes: tests.log, msm.log, pipeline.log
(each step's output, line by line), results.jsonl (one JSON line per step and
per measurement) and summary.json / summary.md (rewritten after every step:
a run cut off keeps a summary of what it measured).

    python tools/gpu_check.py --out /tmp/gpu_check                 # all stages, CUDA
    python tools/gpu_check.py --quick --device cpu --out /tmp/q    # small sizes, the CPU
    python tools/gpu_check.py msm --only "bfloat16 fused"          # stages and steps by name
"""

import argparse
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("tests", "msm", "pipeline")

MSM_SIZE = {"full": ["--n", "200", "--patches", "1369", "--dim", "1024"],
            "quick": ["--n", "12", "--patches", "16", "--dim", "32"]}
GEMM_SIZE = {"full": "8192", "quick": "128"}
PIPELINE_SIZE = {
    "full": ["--sizes", "200", "--backbone", "open_clip:ViT-L-14-336", "--image-size", "518"],
    "quick": ["--sizes", "12", "--backbone", "timm:vit_small_patch14_dinov2", "--image-size", "112",
              "--backbone-kwargs", '{"depth": 4, "embed_dim": 64, "num_heads": 2}', "--batch-size", "4"],
}
TEST_FILES = ["tests/test_devices.py", "tests/test_fused.py"]
# the CUDA cases (every case but the CPU ones, which CI runs); on the CPU, a quick selection
TESTS_K = {"cuda": "not cpu", "cpu": "not cpu and not compiled"}
QUICK_ESTIMATE = 10.0


@dataclass
class Step:
    """One command: ``estimate`` is its usual length on an H100 in seconds (what must be left to start it)."""

    name: str
    stage: str
    estimate: float
    precision: str = "float32"
    algorithm: str = "matmul"
    features: str = "float32"
    args: list = field(default_factory=list)

    @property
    def needs_cuda(self):
        return self.algorithm == "fused" or self.precision != "float32"


def plan():
    """The steps in the order they run: what the issue needs first, then what time allows."""
    msm = [("bfloat16", "fused", 60), ("bfloat16", "matmul", 30), ("tf32", "fused", 40), ("tf32", "matmul", 30),
           ("float32", "matmul", 40), ("float32", "fused", 90)]
    pipeline = [("bfloat16", "fused", "float16", 75), ("bfloat16", "matmul", "float16", 75),
                ("tf32", "fused", "float16", 75), ("float32", "matmul", "float32", 90)]
    m = [Step(f"msm {p} {a}", "msm", e, p, a) for p, a, e in msm]
    q = [Step(f"pipeline {p} {a} {f}", "pipeline", e, p, a, f) for p, a, f, e in pipeline]
    tests = Step("tests", "tests", 30)
    return [tests, m[0], m[1], q[0], q[1], m[2], m[3], q[2], m[4], q[3], m[5]]


class Run:
    """The state of one check: where it writes, its clock and budget."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = float(os.environ.get("GPU_CHECK_T0") or time.time())
        self.size = "quick" if args.quick else "full"
        self.cache = Path(args.cache_dir) / f"inputs-{self.size}.npy"
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1",
                        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.msm_done = False  # an MSM step has run to its end (with the reference's structure)
        self.inputs = None  # the background process making the pipeline's inputs

    def elapsed(self):
        return time.time() - self.t0

    def left(self):
        return self.args.budget - self.elapsed()

    def say(self, line):
        print(f"[gpu_check {self.elapsed():6.1f} s] {line}", flush=True)

    def record(self, entry):
        with open(self.out / "results.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()

    def start(self, cmd, log_name):
        """Start ``cmd`` in its own process group, its output copied line by line to the log and stdout."""
        log = open(self.out / log_name, "a", buffering=1)
        log.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, start_new_session=True)

        def copy():
            for line in proc.stdout:
                log.write(line)
                print(line, end="", flush=True)
            log.close()

        reader = threading.Thread(target=copy, daemon=True)
        reader.start()
        return proc, reader

    def finish(self, proc, reader, timeout):
        """Wait at most ``timeout`` seconds; stop the process group past it. (exit status, timed out)."""
        try:
            rc = proc.wait(timeout=max(timeout, 0.1))
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group started for this step only
            rc, timed_out = proc.wait(), True
        reader.join(timeout=10)
        return rc, timed_out

    def command(self, step):
        python = [sys.executable]
        if step.stage == "tests":
            k = self.args.tests_k or TESTS_K["cuda" if self.args.device.startswith("cuda") else "cpu"]
            return python + ["-m", "pytest", "-v", "-p", "no:cacheprovider", "--durations=15", "--maxfail=10",
                             "-k", k, *TEST_FILES]
        common = ["--device", self.args.device, "--matmul-precision", step.precision, "--algorithm", step.algorithm,
                  "--json", str(self.out / "results.jsonl")]
        if step.stage == "msm":
            extra = ["--repeat", "3"]
            if not self.msm_done:  # the first MSM step: the reference's structure and a dense product
                extra += ["--gemm", GEMM_SIZE[self.size]]
            else:
                extra += ["--skip-baseline"]
            return python + ["benchmarks/bench_msm.py", *MSM_SIZE[self.size], *common, *extra]
        return python + ["benchmarks/bench_pipeline.py", *PIPELINE_SIZE[self.size], "--pretrained", "none",
                         "--features-dtype", step.features, "--inputs-cache", str(self.cache), *common]

    def make_inputs(self):
        """The pipeline's synthetic inputs, once, in the background (the tests use the GPU meanwhile)."""
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "benchmarks/bench_pipeline.py", *PIPELINE_SIZE[self.size], "--make-inputs",
               "--inputs-cache", str(self.cache)]
        self.inputs = self.start(cmd, "pipeline.log")

    def wait_for_inputs(self):
        if self.inputs is not None:
            rc, timed_out = self.finish(*self.inputs, self.left())
            self.say(f"inputs: exit status {rc}" + (" (stopped at the budget)" if timed_out else ""))
            self.inputs = None

    def why_not(self, step):
        """Why ``step`` cannot run now (None: it can)."""
        estimate = QUICK_ESTIMATE if self.args.quick else step.estimate
        left = self.left()
        if step.needs_cuda and not self.args.device.startswith("cuda"):
            return "needs CUDA"
        if estimate > left:
            return f"would not fit: about {estimate:.0f} s needed, {left:.0f} s left"
        return None

    def run_step(self, step):
        """Run one step, or say why not; one 'step' line in results.jsonl either way."""
        entry = {"kind": "step", "name": step.name, "stage": step.stage}
        reason = self.why_not(step)
        if reason:
            return self.skip(entry, reason)
        if step.stage == "pipeline":
            self.wait_for_inputs()
        timeout = self.left() if step.stage != "tests" else min(self.args.tests_cap, self.left())
        self.say(f"{step.name}: starting ({timeout:.0f} s at most)")
        start = time.time()
        proc, reader = self.start(self.command(step), f"{step.stage}.log")
        rc, timed_out = self.finish(proc, reader, timeout)
        status = "cut off" if timed_out else ("ok" if rc == 0 else "failed")
        if step.stage == "msm" and status == "ok":  # else the next MSM step times the reference and the product
            self.msm_done = True
        entry.update(status=status, rc=rc, seconds=round(time.time() - start, 1), ended_at_s=round(self.elapsed(), 1))
        if step.stage == "tests":
            entry["tests"] = parse_tests((self.out / "tests.log").read_text())
        self.record(entry)
        self.say(f"{step.name}: {status} (exit status {rc}) in {entry['seconds']} s")
        return entry

    def skip(self, entry, reason):
        entry.update(status="skipped", reason=reason)
        self.record(entry)
        self.say(f"{entry['name']}: skipped, {reason}")
        return entry


_TEST_LINE = re.compile(r"^(tests/\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def parse_tests(log):
    """Counts and names from pytest's ``-v`` lines (those of a cut-off run too)."""
    outcomes = {}
    for line in log.splitlines():
        m = _TEST_LINE.match(line)
        if m:
            outcomes[m.group(1)] = m.group(2)
    counts = {}
    for outcome in outcomes.values():
        counts[outcome.lower()] = counts.get(outcome.lower(), 0) + 1
    return {"counts": counts, "failed": sorted(t for t, o in outcomes.items() if o in ("FAILED", "ERROR")),
            "passed": sorted(t for t, o in outcomes.items() if o == "PASSED")}


def machine():
    """What ran: the card (nvidia-smi), versions (package metadata: nothing imported here)."""
    info = {"kind": "machine", "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(), "host": platform.node()}
    for package in ("torch", "triton", "open_clip_torch", "timm", "numpy", "scikit-learn"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        info["gpu"] = smi.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        info["gpu"] = None
    return info


def _fmt(value, spec=".2f"):
    return "n/a" if value is None else format(value, spec)


def _rate(value):
    """GFLOP/s: whole numbers on a GPU, three digits for the CPU's small sizes."""
    return "n/a" if value is None else format(value, ".0f" if value >= 100 else ".3g")


def summarize(out, budget):
    """summary.json and summary.md from results.jsonl (what was measured so far)."""
    entries = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    by_kind = {}
    for e in entries:
        by_kind.setdefault(e["kind"], []).append(e)
    mach = (by_kind.get("machine") or [{}])[0]
    steps = by_kind.get("step", [])
    msm = by_kind.get("msm", [])
    baselines = {(b["matmul_precision"], b["algorithm"]): b for b in by_kind.get("msm-baseline", [])}
    pipeline = by_kind.get("pipeline", [])
    measured = msm + pipeline
    bf16 = [r["matmul_gflops"] for r in msm if r["matmul_precision"] == "bfloat16"]
    bf16_rate = max(bf16) if bf16 else None
    tests = next((s["tests"] for s in steps if s["name"] == "tests" and "tests" in s), None)
    tests_step = next((s for s in steps if s["name"] == "tests"), None)

    summary = {
        "date": mach.get("date"), "gpu": mach.get("gpu"),
        "device_name": next((r.get("device_name") for r in measured), None),
        "torch": next((r.get("torch") for r in measured), mach.get("torch")),
        "cuda": next((r.get("cuda") for r in measured), None),
        "triton": next((r.get("triton") for r in measured), mach.get("triton")),
        "open_clip": mach.get("open_clip_torch"), "python": mach.get("python"), "budget_s": budget,
        "used_s": max((s.get("ended_at_s", 0) for s in steps), default=0),
        "tests": tests and {**tests, "status": tests_step.get("status")},
        "bf16_matmul_gflops": bf16_rate,
        "gemm": [{"precision": r["matmul_precision"], "size": r["gemm_size"], "gflops": r["gemm_gflops"]}
                 for r in msm if "gemm_gflops" in r],
        "msm": [], "pipeline": [], "targets": {},
        "steps": [{k: s.get(k) for k in ("name", "status", "seconds", "reason")} for s in steps],
    }
    for r in msm:
        b = baselines.get((r["matmul_precision"], r["algorithm"]), {})
        summary["msm"].append({
            "precision": r["matmul_precision"], "algorithm": r["algorithm"], "n": r["n"], "L": r["L"], "C": r["C"],
            "fit_s": r["fit_s"], "first_fit_s": r["first_fit_s"], "gflops": r["gflops"],
            "share_of_same_precision_rate": r["share_of_matmul"],
            "share_of_bf16_rate": r["gflops"] / bf16_rate if bf16_rate else None,
            "table_s": r["table_s"], "table_gflops": r["table_gflops"],
            "table_share_of_bf16_rate": r["table_gflops"] / bf16_rate if bf16_rate else None,
            "peak_gpu_gib": r.get("peak_gpu_gib"), "tuned_config": r.get("tuned_config"),
            "baseline_s": b.get("baseline_s"), "speedup": b.get("speedup"), "max_abs_diff": b.get("max_abs_diff"),
        })
    for r in pipeline:
        summary["pipeline"].append({
            "precision": r["matmul_precision"], "algorithm": r["algorithm"], "features": r["features_dtype"],
            "n": r["n_images"], "backbone": r["backbone"], "image_size": r["image_size"], "n_sets": r["n_sets"],
            "aggregation": r.get("aggregation"), "seconds": r["seconds"], "total_s": r["total_s"],
            "ms_per_image": r["ms_per_image"], "msm_gflops": r.get("msm_gflops"),
            "msm_share_of_bf16_rate": r.get("msm_gflops") / bf16_rate if bf16_rate and r.get("msm_gflops") else None,
            "peak_gpu_gib": r["peak_gpu_gib"], "peak_host_gib": r["peak_host_gib"],
        })
    fused = next((m for m in summary["msm"] if (m["precision"], m["algorithm"]) == ("bfloat16", "fused")), None)
    if fused and fused["share_of_bf16_rate"] is not None:
        for name, key in (("fit", "share_of_bf16_rate"), ("table", "table_share_of_bf16_rate")):
            summary["targets"][f"msm_bf16_fused_{name}_share_of_bf16_rate"] = {
                "value": fused[key], "target": 0.6, "met": fused[key] >= 0.6}
    target = next((p for p in summary["pipeline"]
                   if (p["precision"], p["algorithm"], p["features"]) == ("bfloat16", "fused", "float16")), None)
    if target:
        summary["targets"]["pipeline_ms_per_image"] = {
            "value": target["ms_per_image"], "target": 20.0, "met": target["ms_per_image"] < 20.0}

    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    return summary


def markdown(s):
    lines = [f"# GPU check, {s['date']}", "",
             f"Card: {s['gpu'] or s['device_name'] or 'none'}; torch {s['torch']} (CUDA {s['cuda']}), "
             f"Triton {s['triton']}, open_clip {s['open_clip']}, Python {s['python']}. Budget {s['budget_s']:.0f} s, "
             f"{s['used_s']:.0f} s used.", ""]
    t = s["tests"]
    if t is not None:
        counts = ", ".join(f"{v} {k}" for k, v in sorted(t["counts"].items())) or "none ran"
        lines += [f"CUDA tests ({' '.join(TEST_FILES)}): {counts} ({t['status']})."]
        lines += [f"- failed: {name}" for name in t["failed"]]
        lines += [""]
    if s["msm"]:
        m0 = s["msm"][0]
        lines += [f"## MSM, N={m0['n']}, L={m0['L']}, C={m0['C']}, one feature set", "",
                  f"bfloat16 matmul rate on the kernel's product shape: {_rate(s['bf16_matmul_gflops'])} GFLOP/s"
                  + "".join(f"; dense {g['size']}^3 {g['precision']}: {_rate(g['gflops'])} GFLOP/s" for g in s["gemm"]),
                  "",
                  "fit: `MutualScoringDetector.fit` on host features (copies included); table: "
                  "`kernels.max_similarity_table` on features already on the device.", "",
                  "| precision | algorithm | fit s | GFLOP/s | % of same-precision matmul | % of bf16 matmul "
                  "| table s | table % of bf16 matmul | peak GPU GiB | reference s | speed-up | max abs diff "
                  "| autotuned |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for m in s["msm"]:
            share, table = m["share_of_bf16_rate"], m["table_share_of_bf16_rate"]
            lines.append(
                f"| {m['precision']} | {m['algorithm']} | {m['fit_s']:.3f} | {_rate(m['gflops'])} "
                f"| {100 * m['share_of_same_precision_rate']:.0f} | {_fmt(share and 100 * share, '.0f')} "
                f"| {m['table_s']:.3f} | {_fmt(table and 100 * table, '.0f')} "
                f"| {_fmt(m['peak_gpu_gib'])} | {_fmt(m['baseline_s'], '.3f')} | {_fmt(m['speedup'])} "
                f"| {_fmt(m['max_abs_diff'], '.1e')} | {m['tuned_config'] or ''} |")
        lines += [""]
    if s["pipeline"]:
        p0 = s["pipeline"][0]
        lines += [f"## Pipeline, N={p0['n']}, {p0['backbone']} at {p0['image_size'][0]} px, random weights, "
                  f"{p0['n_sets']} feature sets ({p0['aggregation']})", "",
                  "| precision | algorithm | features | total s | ms/image | vit s | lnamd s | msm s | rscin s "
                  "| MSM GFLOP/s | MSM % of bf16 matmul | peak GPU GiB | peak host GiB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in s["pipeline"]:
            sec, share = p["seconds"], p["msm_share_of_bf16_rate"]
            lines.append(
                f"| {p['precision']} | {p['algorithm']} | {p['features']} | {p['total_s']:.2f} "
                f"| {p['ms_per_image']:.1f} | {sec['vit']:.2f} | {sec['lnamd']:.2f} | {sec['msm']:.2f} "
                f"| {sec['rscin']:.3f} | {_rate(p['msm_gflops'])} | {_fmt(share and 100 * share, '.0f')} "
                f"| {p['peak_gpu_gib']:.2f} | {p['peak_host_gib']:.2f} |")
        lines += [""]
    for name, target in s["targets"].items():
        lines.append(f"- target {name}: {target['value']:.3g} against {target['target']:g}: "
                     + ("met" if target["met"] else "missed"))
    lines += ["", "| step | status | seconds | note |", "|---|---|---|---|"]
    lines += [f"| {st['name']} | {st['status']} | {_fmt(st['seconds'], '.1f')} | {st['reason'] or ''} |"
              for st in s["steps"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stages", nargs="*", metavar="STAGE", help=f"which of {', '.join(STAGES)} (default: all)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "/tmp/gpu_check")
    parser.add_argument("--device", default=os.environ.get("DEVICE") or "cuda")
    parser.add_argument("--quick", action="store_true", default=bool(os.environ.get("QUICK")),
                        help="small sizes (checks the script); also QUICK=1")
    parser.add_argument("--budget", type=float, default=float(os.environ.get("BUDGET_S") or 420),
                        help="seconds from the start (GPU_CHECK_T0, set by gpu_check.sh) to the last step's end")
    parser.add_argument("--tests-cap", type=float, default=120.0, help="seconds at most for the tests")
    parser.add_argument("--tests-k", default=None, help="pytest -k expression (default: the CUDA cases)")
    parser.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                        help="only the steps whose names contain one of these")
    parser.add_argument("--cache-dir", default=os.environ.get("GPU_CHECK_CACHE") or "/tmp/gpu_check_cache",
                        help="where the pipeline's synthetic inputs are kept (not --out: they are large)")
    args = parser.parse_args(argv)

    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage {unknown[0]!r}; the stages are {', '.join(STAGES)}")
    run = Run(args)
    stages = args.stages or STAGES
    steps = [s for s in plan() if s.stage in stages and (args.only is None or any(t in s.name for t in args.only))]
    for name in ("results.jsonl", "summary.json", "summary.md", "tests.log", "msm.log", "pipeline.log"):
        (run.out / name).unlink(missing_ok=True)  # nothing left from an earlier run looks like this one's
    info = machine()
    run.record(info)
    run.say(f"{info['date']}; {info['gpu'] or 'no GPU seen by nvidia-smi'}; torch {info['torch']}, "
            f"Triton {info['triton']}, Python {info['python']}; device {args.device}, "
            f"{'quick' if args.quick else 'full'} sizes, budget {args.budget:.0f} s")
    if any(s.stage == "pipeline" and run.why_not(s) is None for s in steps):
        run.make_inputs()
    failed = False
    try:
        for step in steps:
            entry = run.run_step(step)
            failed |= entry["status"] in ("failed", "cut off")
            summarize(run.out, args.budget)
    finally:
        if run.inputs is not None:  # no pipeline step ran: the background process is not needed
            run.finish(*run.inputs, 0)
    summary = summarize(run.out, args.budget)
    print((run.out / "summary.md").read_text(), flush=True)
    run.say(f"done; {len(summary['msm'])} MSM and {len(summary['pipeline'])} pipeline results in {run.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
