"""Multi-process Detectron2 transfer as a submitit job starts it: every spawned worker backs
``detectron2._C`` (the pip-only install has no compiled extension) before importing Detectron2.

The job runs in a fresh interpreter whose ``__main__`` is not a file of ours (submitit's is
``submitit.core._submit``), so spawn re-imports nothing of ours in the workers: each gets only
what it unpickles. Two workers train one iteration under gloo and evaluate.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_MASK = REPO / "configs" / "transfer" / "tiny_mask_rcnn_R50_FPN.yaml"
LIGHT = [
    "MODEL.WEIGHTS", "", "SOLVER.MAX_ITER", "1", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "INPUT.MIN_SIZE_TRAIN", "(96,)",
    "INPUT.MIN_SIZE_TEST", "96",
]  # fmt: skip

JOB = textwrap.dedent("""
    import sys
    import spawned_transfer
    from transfer.config import build_config
    from transfer.engine import launch

    config_file, opts = sys.argv[1], sys.argv[2:]
    # built for one process (CPU, SyncBN -> BN), then run by two workers
    cfg = build_config(config_file, opts, num_gpus=1)
    launch(spawned_transfer.transfer_iteration, 2, dist_url="auto", args=(cfg, config_file))
""")


@pytest.mark.slow
def test_spawned_workers_of_a_submitit_like_job_train_and_evaluate(tmp_path):
    output = tmp_path / "run"
    command = [sys.executable, "-c", JOB, str(TINY_MASK), *LIGHT, "OUTPUT_DIR", str(output)]
    path = os.pathsep.join([str(REPO), str(REPO / "tests")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (output / "metrics.json").read_text().splitlines()
    assert any("total_loss" in json.loads(line) for line in lines)
    assert set(json.loads((output / "results.json").read_text())) == {"bbox", "segm"}
