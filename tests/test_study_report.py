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


def test_holm_decides_the_verdict_of_a_row_in_a_family():
    """A row whose own interval excludes 0 but whose family-adjusted p is above 5% is not an
    effect; one below is."""
    difference = MeanCI(-0.03, 0.02, 3, 0.95, p_value=0.02)
    assert verdict(difference, "dcl", holm_p=0.2) == (
        "not resolved after Holm (the row's own CI excludes 0)"
    )
    assert verdict(difference, "dcl", holm_p=0.04) == "dcl worse"


def test_each_table_is_one_holm_family():
    """Three arms against uniform (one family) and a variant against its strategy (another):
    each row's Holm p is its paired t-test p-value adjusted within its own table."""
    from scipy import stats as scipy_stats

    tops = {"uniform": (0.80, 0.82, 0.81), "ring": (0.83, 0.84, 0.85),
            "dcl": (0.79, 0.80, 0.805), "ring-anneal": (0.82, 0.845, 0.86)}  # fmt: skip
    records = [
        record("moco", arm, seed, top1) for arm, values in tops.items()
        for seed, top1 in enumerate(values)
    ]  # fmt: skip
    summaries = {(s.arm, s.reference): s for s in summarise(records, "linear_top1")}
    raw = {pair: scipy_stats.ttest_rel(tops[pair[0]], tops[pair[1]]).pvalue for pair in summaries}
    against_uniform = sorted((p, pair) for pair, p in raw.items() if pair[1] == "uniform")
    running = 0.0
    for rank, (p_value, pair) in enumerate(against_uniform):
        running = max(running, min(1.0, (3 - rank) * p_value))
        assert summaries[pair].holm_p == pytest.approx(running, rel=1e-9)
    alone = summaries[("ring-anneal", "ring")]
    assert alone.holm_p == pytest.approx(raw[("ring-anneal", "ring")], rel=1e-9)


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
    assert "| moco | ring-anneal | ring | 84.0 ± 2.5 | 85.0 ± 2.5 | +1.0 ± 0.0 | <0.001 |" in text


def test_report_files(tmp_path):
    floor = {"linear_top1": 0.84, "knn20_top1": 0.80, "knn200_top1": 0.74, "linear_top5": 0.99}
    headline = write_report(study_records(), floor, tmp_path, "python x --flag", "Fashion-MNIST")
    assert headline == {
        "moco ring vs uniform": "ring better",
        "ir ring vs uniform": "no resolved difference (CI includes 0)",
    }
    text = (tmp_path / "results.md").read_text()
    assert "python x --flag" in text
    assert (
        "| moco | ring | 81.0 ± 2.5 | 84.0 ± 2.5 | +3.0 ± 0.0 | <0.001 | <0.001 | 3 | ring better |"
        in text
    )
    assert "over this table's 2 comparisons (Holm–Bonferroni" in text
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
    assert "For MoCHi it counts the real negatives only" in text
    # and a finished run's record carries them, read from its metrics.json
    spec = RunSpec("moco", "ring", 0, "cfg.yaml", (), str(tmp_path / "run"))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "eval.json").write_text('{"metrics": {"linear_top1": 0.5}}')
    history = [{"epoch": 1, "loss": 3.0, "made_up": 7}, {"epoch": 2, "loss": 2.5, "made_up": 9}]
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"history": history}))
    metrics = finished_record(spec).metrics
    assert metrics == {"linear_top1": 0.5, "train/loss": 2.5, "train/made_up": 9.0}


def test_reused_records_stand_in_for_runs_without_a_folder(tmp_path):
    """--reuse-records: an earlier report's record counts as finished where the run folder has
    no eval.json; a folder's own evaluation wins; a file that is not records.json is refused."""
    from launcher.study import RunSpec, finished_record, load_reused_records

    path = tmp_path / "records.json"
    write_report(study_records(), {}, tmp_path, "cmd", "desc")
    reused = load_reused_records(path)
    assert ("ir", "ring", 2) not in reused  # failed runs are not reused
    spec = RunSpec("moco", "ring", 1, "cfg.yaml", (), str(tmp_path / "moco_ring_s1"))
    assert finished_record(spec, reused).metrics["linear_top1"] == 0.85
    assert finished_record(spec) is None
    (tmp_path / "moco_ring_s1" / "checkpoints").mkdir(parents=True)
    (tmp_path / "moco_ring_s1" / "checkpoints" / "eval.json").write_text(
        '{"metrics": {"linear_top1": 0.5}}'
    )
    assert finished_record(spec, reused).metrics["linear_top1"] == 0.5
    (tmp_path / "bad.json").write_text('{"not": "a list"}')
    with pytest.raises(StudyError, match="--reuse-records .*bad.json: not a study's records"):
        load_reused_records(tmp_path / "bad.json")
    assert load_reused_records(None) == {}
