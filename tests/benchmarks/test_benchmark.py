"""scripts/benchmark.py runs end to end (tiny sizes) and its compared pairs agree numerically.

No timing is asserted: only that every section ran, the JSON has the
environment fields, and each ours-vs-fastMRI pair matches to float32 rounding.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "benchmark.py"
SECTIONS = ("fft", "degradation", "sense", "model", "inference", "memory", "pipeline")
ENV_FIELDS = ("device", "device_name", "torch", "cuda", "threads")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--tiny", "--device", "cpu", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    data["_stdout"] = proc.stdout
    return data


@pytest.mark.slow
def test_every_section_present_without_errors(report):
    for name in SECTIONS:
        assert name in report, name
        section = report[name]
        assert "error" not in section, (name, section.get("error"), section.get("traceback"))
        assert "skipped" not in section, name
        assert section["env"]["device"] == "cpu"
    assert report["fft"]["rows"] and report["degradation"]["rows"] and report["memory"]["rows"]
    assert report["inference"]["rows"]
    ops = {(r["op"], r["coils"]) for r in report["sense"]["rows"]}
    assert {("maps", 4), ("dc", 1), ("dc", 4)} <= ops  # map estimate and DC step per slice are reported
    assert all(r["ours_ms_per_slice"] > 0 and r["reference_ms_per_slice"] > 0 for r in report["sense"]["rows"])
    for row in report["inference"]["rows"]:
        assert row["saved_ok"], row
        # The section times the inference code users run, from a checkpoint.
        assert row["code_path"] == "iconet_fastmri.inference.run_inference", row
        assert row["method"] == "checkpoint", row
    pipe = report["pipeline"]["rows"]
    assert {r["format"] for r in pipe} == {"hdf5", "shards", "shards float16", "shards compact x2"}
    for r in pipe:  # per worker: a rate, CPU time, bytes, and the workers it takes to feed a GPU
        assert r["slices_per_s"] > 0 and r["cpu_ms_per_slice"] > 0 and r["workers_to_feed"] >= 1
        assert r["stored_bytes_per_slice"] > 0
    e2e = report["pipeline"]["end_to_end"]  # files -> workers -> step against the step alone, same run
    assert e2e["end_to_end_slices_per_s"] > 0 and e2e["model_only_slices_per_s"] > 0 and e2e["e2e_over_model"] > 0
    hdf5 = next(r for r in pipe if r["format"] == "hdf5")
    assert hdf5["stored_bytes_per_slice"] > next(r for r in pipe if r["format"] == "shards")["stored_bytes_per_slice"]
    model = report["model"]
    assert model["summary"] and all(s["params"] > 0 for s in model["summary"])
    assert all(s["gflops_fwd_per_slice"] > 0 for s in model["summary"])
    assert any(r.get("slices_per_s", 0) > 0 for r in model["rows"])


@pytest.mark.slow
def test_environment_fields_in_every_row(report):
    env = report["env"]
    for key in ENV_FIELDS + ("cpu_model",):
        assert key in env, key
    assert env["threads"] >= 1 and env["torch"]
    rows = report["fft"]["rows"] + report["degradation"]["rows"] + report["memory"]["rows"]
    rows += report["model"]["rows"] + report["inference"]["rows"] + report["targets"]
    for row in rows:
        for key in ENV_FIELDS:
            assert key in row, (key, row)


@pytest.mark.slow
def test_compared_pairs_agree(report):
    corr = report["correctness"]
    sections = {c["section"] for c in corr}
    assert {"fft", "degradation", "sense", "pipeline"} <= sections
    quantities = {c["quantity"] for c in corr if c["section"] == "degradation"}
    assert {
        "hr_target",
        "lr_kspace",
        "lr_observed",
        "lr_clean",
        "lr_input",
        "stage_target_0",
    } <= quantities
    for c in corr:
        assert c["max_rel_diff"] < 1e-5, c
        assert c["max_abs_diff"] <= 1e-5 * max(1.0, c["ref_max_abs"]), c
    for row in report["fft"]["rows"]:
        assert row["max_abs_diff"] < 1e-4, row


@pytest.mark.slow
def test_targets_and_table_printed(report):
    assert report["targets"], "no targets evaluated"
    for t in report["targets"]:
        assert isinstance(t["value"], float) and t["met"] in (True, False, None)
    out = report["_stdout"]
    for heading in (
        "### Centred FFT",
        "### Degradation",
        "### ICONet",
        "### Inference",
        "### Peak memory",
        "### Targets",
    ):
        assert heading in out, heading


@pytest.mark.slow
def test_sections_flag_selects(tmp_path):
    out = tmp_path / "fft_only.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--tiny",
            "--device",
            "cpu",
            "--sections",
            "fft",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["fft"]["rows"]
    for name in SECTIONS[1:]:
        assert data[name] == {"skipped": "not selected by --sections"}
    bad = subprocess.run(
        [sys.executable, str(SCRIPT), "--sections", "fft,nope", "--out", str(tmp_path / "x.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "unknown section" in bad.stderr


@pytest.mark.slow
def test_gpu_check_cpu_path(tmp_path):
    """scripts/gpu_check.py's CPU-vs-CPU path at tiny sizes (the GPU run uses the same code)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--tiny",
         "--skip_benchmark", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    cases = {(r["case"], r["tensor"]) for r in report["numerics"]}
    assert ("degradation 3-coil x4", "stage_targets[0]") in cases and ("ICONet forward fp32", "sr") in cases
    assert ("masks drawn for a batch", "mask") in cases
    assert all(r["ok"] for r in report["numerics"])
    training = report["training"]
    assert training["ok"] and training["psnr_diff_db"] == 0.0  # the same fp32 eager run twice on the CPU
    assert "gpu_check passed" in proc.stdout


@pytest.mark.slow
def test_gpu_check_benchmark_step_cpu_path(tmp_path):
    """The bounded benchmark step of gpu_check (device sections, then the CPU degradation reference)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--tiny",
         "--steps", "benchmark", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    bench = json.loads((tmp_path / "benchmark.json").read_text())
    assert bench["degradation"]["rows"] and bench["model"]["rows"] and bench["cpu"]["degradation"]["rows"]
    assert bench["sense"] == {"skipped": "not part of the GPU check"}
    assert (tmp_path / "benchmark.md").read_text().startswith("## Benchmark (tiny)")
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["steps"] == ["benchmark"] and not report["benchmark"]["errors"]


def test_gpu_targets_from_rows():
    """bf16+compile vs eager fp32 and GPU-vs-CPU degradation targets, from given rows."""
    from iconet_fastmri.benchmarks.gpu_check import device_over_cpu_targets
    from iconet_fastmri.benchmarks.inference import _training_targets

    row = dict(mode="forward+backward", scale=2, batch=8)
    rows = [dict(row, variant="eager_fp32", slices_per_s=59.84, peak_mib_over_start=17584.0),
            dict(row, variant="compile_bf16_channels_last", slices_per_s=121.6, peak_mib_over_start=6984.0),
            dict(row, variant="eager_bf16_autocast", slices_per_s=64.9, peak_mib_over_start=11256.0)]
    speed, memory = _training_targets({"rows": rows}, "")
    assert speed["met"] and abs(speed["value"] - 121.6 / 59.84) < 1e-9
    assert memory["met"] and abs(memory["value"] - 6984 / 17584) < 1e-9
    slow = [dict(rows[0]), dict(rows[1], slices_per_s=94.2)]
    assert not _training_targets({"rows": slow}, "")[0]["met"]
    gpu = {"env": {"device": "cuda:0"}, "degradation": {"rows": [
        {"case": "15-coil x2", "ours_ms": 0.76}, {"case": "1-coil x2", "ours_ms": 0.51}]}}
    cpu = {"env": {"threads": 16}, "degradation": {"rows": [
        {"case": "15-coil x2", "reference_ms": 62.36}, {"case": "1-coil x2", "reference_ms": 21.37}]}}
    targets = {t["case"]: t for t in device_over_cpu_targets(gpu, cpu)}
    assert abs(targets["15-coil x2"]["value"] - 62.36 / 0.76) < 1e-9 and not targets["15-coil x2"]["met"]
    assert device_over_cpu_targets(dict(gpu, env={"device": "cpu"}), cpu) == []
