import json

import pytest

from launcher.stats import MeanCI
from launcher.study import (
    RunRecord,
    StudyError,
    check_same_budget,
    summarise,
    verdict,
    write_report,
)


def record(method, sampler, seed, top1, error=None):
    metrics = (
        {}
        if error
        else {
            "linear_top1": top1,
            "linear_top5": 0.99,
            "knn20_top1": top1 - 0.01,
            "knn200_top1": top1 - 0.02,
        }
    )
    return RunRecord(method, sampler, seed, f"runs/{method}_{sampler}_s{seed}", metrics, error)


def study_records():
    return [
        record("moco", "uniform", 0, 0.80),
        record("moco", "uniform", 1, 0.82),
        record("moco", "uniform", 2, 0.81),
        record("moco", "ring", 0, 0.83),
        record("moco", "ring", 1, 0.85),
        record("moco", "ring", 2, 0.84),
        record("ir", "uniform", 0, 0.78),
        record("ir", "uniform", 1, 0.80),
        record("ir", "uniform", 2, 0.79),
        record("ir", "ring", 0, 0.80),
        record("ir", "ring", 1, 0.77),
        record("ir", "ring", 2, 0.0, error="loss is NaN at step 3"),
    ]


def test_summary_pairs_by_seed_and_drops_failed_runs_from_the_difference():
    by_method = {s.method: s for s in summarise(study_records(), "linear_top1")}
    moco = by_method["moco"]
    assert moco.difference.mean == pytest.approx(0.03)
    assert moco.difference.half_width == pytest.approx(0.0, abs=1e-9)  # constant +3 points
    assert verdict(moco.difference) == "ring better"
    ir = by_method["ir"]
    assert ir.paired_seeds == [0, 1]
    assert ir.per_sampler["ring"].n == 2
    assert ir.difference.mean == pytest.approx(-0.005)
    assert verdict(ir.difference) == "no resolved difference (CI includes 0)"
    assert ir.failed == ["ring seed 2: loss is NaN at step 3"]


@pytest.mark.parametrize(
    "difference, words",
    [
        (None, "no paired runs"),
        (MeanCI(0.01, None, 1, 0.95), "1 seed: no interval, no verdict"),
        (MeanCI(-0.03, 0.01, 3, 0.95), "ring worse"),
        (MeanCI(0.03, 0.05, 3, 0.95), "no resolved difference (CI includes 0)"),
    ],
)
def test_verdict_words(difference, words):
    assert verdict(difference) == words


def test_a_variant_is_compared_with_uniform_and_with_its_own_strategy(tmp_path):
    records = study_records()[:6] + [
        record("moco", "ring-anneal", seed, top1) for seed, top1 in enumerate((0.84, 0.86, 0.85))
    ]
    summaries = summarise(records, "linear_top1")
    pairs = [(s.arm, s.reference) for s in summaries]
    assert pairs == [("ring", "uniform"), ("ring-anneal", "uniform"), ("ring-anneal", "ring")]
    versus_ring = summaries[-1].difference
    assert versus_ring.mean == pytest.approx(0.01) and versus_ring.half_width == pytest.approx(0)
    headline = write_report(records, {}, tmp_path, "python x", "data")
    assert headline["moco ring-anneal vs ring"] == "ring-anneal better"
    text = (tmp_path / "results.md").read_text()
    assert "| moco | ring-anneal | ring | 84.0 ± 2.5 | 85.0 ± 2.5 | +1.0 ± 0.0 | 3 |" in text


def test_report_files(tmp_path):
    floor = {"linear_top1": 0.84, "knn20_top1": 0.80, "knn200_top1": 0.74, "linear_top5": 0.99}
    headline = write_report(study_records(), floor, tmp_path, "python x --flag", "Fashion-MNIST")
    assert headline == {
        "moco ring vs uniform": "ring better",
        "ir ring vs uniform": "no resolved difference (CI includes 0)",
    }
    text = (tmp_path / "results.md").read_text()
    assert "python x --flag" in text
    assert "| moco | ring | 81.0 ± 2.5 | 84.0 ± 2.5 | +3.0 ± 0.0 | 3 | ring better |" in text
    assert "Floor, raw pixels with the same protocol: 80.0." in text
    assert "ir ring seed 2: loss is NaN at step 3" in text
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "records.json").read_text())
    assert len(saved) == 12 and saved[-1]["error"] == "loss is NaN at step 3"


def test_report_refuses_when_every_run_failed(tmp_path):
    records = [record("moco", "uniform", 0, 0, error="boom"), record("moco", "ring", 0, 0, "x")]
    with pytest.raises(StudyError, match="every run failed"):
        write_report(records, {}, tmp_path, "cmd", "desc")
    assert not (tmp_path / "results.md").exists()


def test_unfair_pair_is_refused_naming_the_key():
    uniform = {"optim": {"batch_size": 256, "epochs": 4}, "sampler": {"name": "uniform"}}
    ring = {"optim": {"batch_size": 128, "epochs": 4}, "sampler": {"name": "ring"}}
    with pytest.raises(StudyError, match="differ in optim.batch_size"):
        check_same_budget("moco", uniform, ring)
    ring["optim"]["batch_size"] = 256
    check_same_budget("moco", uniform, ring)  # only the sampler differs: fair


def test_training_scalars_of_any_name_reach_the_report(tmp_path):
    """Scalars from the runs' metrics.json (history's last epoch) get their own table, by name."""
    from launcher.study import RunSpec, finished_record

    records = study_records()
    for r in records:
        if r.error is None:
            r.metrics["train/negatives_per_anchor"] = 4096.0 if r.sampler == "uniform" else 410.0
            r.metrics["train/false_negative_share"] = 0.1 if r.sampler == "uniform" else 0.05
    write_report(records, {}, tmp_path, "cmd", "desc")
    text = (tmp_path / "results.md").read_text()
    assert "| method | arm | false_negative_share | negatives_per_anchor |" in text
    assert "| moco | ring | 0.050 ± 0.000 | 410.000 ± 0.000 |" in text
    # and a finished run's record carries them, read from its metrics.json
    spec = RunSpec("moco", "ring", 0, "cfg.yaml", (), str(tmp_path / "run"))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "eval.json").write_text('{"metrics": {"linear_top1": 0.5}}')
    history = [{"epoch": 1, "loss": 3.0, "made_up": 7}, {"epoch": 2, "loss": 2.5, "made_up": 9}]
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"history": history}))
    metrics = finished_record(spec).metrics
    assert metrics == {"linear_top1": 0.5, "train/loss": 2.5, "train/made_up": 9.0}
