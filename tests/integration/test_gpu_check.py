"""scripts/gpu_check.sh --dry-run: the one-shot GPU check runs end to end on CPU at tiny sizes
and writes its JSON (the GPU session runs the same script at full size)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~17 s; the script is what a lent GPU runs once
def test_gpu_check_dry_run_writes_every_measurement(tmp_path):
    out = tmp_path / "x.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RECBENCH_CACHE_DIR": str(tmp_path / "c")}
    proc = subprocess.run(
        [
            "bash",
            str(ROOT / "scripts/gpu_check.sh"),
            "--dry-run",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(out.read_text())
    assert r["dry_run"] and r["criteo_rows"]["train"] > 0
    runs = r["throughput"]
    done = [e for e in runs if "samples_per_sec" in e]
    assert {(e["model"], e["precision"], e["placement"]) for e in done} >= {
        ("deepfm", "32-true", "resident"),
        ("deepfm", "bf16-mixed", "shards"),
        ("dcn_v2", "bf16-mixed", "host"),
        ("din", "32-true", "resident"),
    }
    assert all(e["samples_per_sec"] > 0 for e in done)
    assert not [e for e in runs if "error" in e]
    assert all("skipped" in e for e in runs if e["compile"])  # no compiler on a dry run
    auc = r["auc_precision"]
    assert 0 < auc["32-true"] < 1 and 0 < auc["bf16-mixed"] < 1
    assert r["end_to_end"]["test_auc"] is not None
    assert "skipped" in r["ddp"]
