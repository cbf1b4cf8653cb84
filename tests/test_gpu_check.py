"""tools/gpu_check.py: ``--tiny`` runs every part of the device check on the CPU, so the check
cannot rot between the rare GPU sessions; a failing or hanging part is reported, not fatal."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))  # as when run as a script: gpu_check_parts beside it

import gpu_check  # noqa: E402


@pytest.mark.slow
def test_tiny_check_runs_every_part_on_the_cpu(tmp_path):
    report_path = tmp_path / "gpu_check.json"
    command = [sys.executable, str(REPO / "tools" / "gpu_check.py"), "--tiny"]
    command += ["--json", str(report_path), "--work-dir", str(tmp_path / "work")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO)
    parts = json.loads(report_path.read_text())["parts"]
    failed = {name: part.get("error") for name, part in parts.items() if part["status"] != "ok"}
    assert done.returncode == 0 and not failed, (failed, done.stderr[-2000:])
    assert list(parts) == list(gpu_check.CHECK_PARTS)
    assert "environment" in done.stdout and "detectron2" in done.stdout  # the table
    assert parts["environment"]["imports"]["detectron2"] is True
    assert {row["shape"] for row in parts["ring_selection"]["report"]["rows"]} == {"moco", "ir60k"}
    for augment_on in ("cpu", "gpu"):
        rows = parts["throughput"]["reports"][augment_on]["rows"]
        assert {row["method"] for row in rows} == {"moco", "ring-moco"}
        assert all(row["loader_images_per_second"] > 0 for row in rows)
    assert set(parts["augment_cost"]["report"]["rows"][0]) == {"pil", "jpeg_canvas", "batched_cpu"}
    for sampler in ("uniform", "ring"):
        assert parts["bf16_agreement"][sampler]["relative"] < 0.02
        assert parts["bf16_agreement"][sampler]["bf16"] != parts["bf16_agreement"][sampler]["fp32"]
    assert parts["resume_convert"]["headline"]["max parameter gap"] == 0
    assert (tmp_path / "work" / "converted.pkl").is_file()
    assert set(parts["detectron2"]["mask"]["results"]) == {"bbox", "segm"}
    assert set(parts["detectron2"]["keypoint"]["results"]) == {"bbox", "keypoints"}


def test_a_failing_part_is_reported_with_its_reason(tmp_path):
    # the Detectron2 part needs the weights the resume_convert part writes
    result = gpu_check.run_part("detectron2", "tiny", tmp_path, limit=300)
    assert result["status"] == "failed"
    assert "converted.pkl" in result["error"] and "resume_convert" in result["error"]


def test_a_part_over_its_limit_is_stopped_and_reported(tmp_path):
    result = gpu_check.run_part("environment", "tiny", tmp_path, limit=1)
    assert result["status"] == "timeout" and "1 s limit" in result["error"]
    assert result["seconds"] < 30


def test_the_gpu_check_without_a_gpu_is_one_line_with_the_fix(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert gpu_check.main(["--work-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: no CUDA GPU is visible; run with --tiny to check on the CPU"
    )


def test_the_carry_refuses_a_wheel_the_devices_python_cannot_install(tmp_path, capsys):
    """prepare_gpu_carry.sh falls back to building a wheel here (Python 3.11) when PyPI has no
    cp312 one: that wheel must stop the script, named, not fail on the device."""
    import carry_wheels

    wheels, logs = tmp_path / "wheels", tmp_path / "logs"
    wheels.mkdir(), logs.mkdir()
    for name in (
        "fvcore-0.1.5.post20221221-py3-none-any.whl",
        "pycocotools-2.0.11-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "some_abi3-1.0-cp38-abi3-manylinux_2_28_x86_64.whl",
        "six-1.16.0-py2.py3-none-any.whl",
    ):
        (wheels / name).touch()
    assert carry_wheels.main([str(wheels)]) == 0
    (wheels / "faster_coco_eval-1.6.5-cp311-cp311-linux_x86_64.whl").touch()
    (logs / "faster_coco_eval.log").write_text("ERROR: No matching distribution found\n")
    assert carry_wheels.main([str(wheels), "--log-dir", str(logs)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: faster_coco_eval: faster_coco_eval-1.6.5-cp311-cp311-")
    assert "(PyPI download: ERROR: No matching distribution found)" in error
    assert len(error.splitlines()) == 1


def test_the_bf16_check_fails_on_a_wrong_cast_path(tmp_path, monkeypatch):
    """With MoCo's similarities and loss left to autocast (bf16 on the CPU too), the loss
    moves by well under bf16's noise threshold: the check must see the dtypes instead."""
    import contextlib

    import gpu_check_parts

    import pretrain.methods.moco as moco

    assert gpu_check_parts.bf16_agreement("tiny", tmp_path)["headline"]["loss dtypes"]
    monkeypatch.setattr(moco, "full_precision", lambda tensor: contextlib.nullcontext())
    with pytest.raises(RuntimeError, match=r"bf16 autocast reached the loss \(uniform\): \['sim"):
        gpu_check_parts.bf16_agreement("tiny", tmp_path)


def test_seconds_per_iteration_reads_only_the_last_run_of_metrics_json(tmp_path):
    """Detectron2 appends to metrics.json: a rerun's lines follow the earlier run's."""
    import gpu_check_parts

    lines = [{"iteration": i, "time": 1.0} for i in (19, 39, 49)]
    lines += [{"iteration": 49, "bbox/AP": 1.0}]  # the evaluation line has no time
    lines += [{"iteration": i, "time": t} for i, t in ((19, 0.2), (39, 0.3), (49, 0.2))]
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(line) for line in lines))
    assert gpu_check_parts.seconds_per_iteration(tmp_path) == 0.2
