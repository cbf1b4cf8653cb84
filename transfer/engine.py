"""Train and evaluate a Detectron2 transfer run: ``run(config_file, opts, ...) -> results``.

Everything a run needs is checked in the launching process (``transfer.config.build_config`` and
``transfer.datasets.prepare_datasets``) before ``transfer.launch`` starts workers. Results go
to ``OUTPUT_DIR/results.json`` (AP per task of the first test dataset) beside Detectron2's
``metrics.json``, ``config.yaml``, ``log.txt`` and checkpoints.
"""

import json
import logging
import math
import os
from pathlib import Path
from types import SimpleNamespace

from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.modeling.backbone.resnet import ResNet
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import transfer.modeling  # noqa: F401  (registers our backbones and ROI heads)
from pretrain.atomic_write import write_json_atomic
from transfer.checkpointer import RecordingCheckpointer
from transfer.config import TransferError, build_config, notice
from transfer.datasets import prepare_datasets
from transfer.evaluation import FasterCOCOEvaluator
from transfer.launch import launch
from transfer.modeling import res5_head_parameter_prefix
from transfer.user_datasets import check_against_config, register_user_datasets

RESULT_TASKS = ("bbox", "segm", "keypoints")
RESULTS_FILE = "results.json"


def pretrained_trunk_prefixes(model):
    """Where the converted ResNet lives: the backbone's ResNet and a C4 head's res5 blocks."""
    prefixes = [f"{name}." for name, module in model.named_modules() if isinstance(module, ResNet)]
    return prefixes, res5_head_parameter_prefix(model)


def is_pretrained_trunk_key(key, prefixes, res5_prefix):
    if key.endswith("num_batches_tracked"):
        return False
    if any(key.startswith(prefix) for prefix in prefixes):
        return True
    # res5's blocks are numbered; anything else there (the extra norm) is new, not pretrained
    return bool(res5_prefix) and key.startswith(res5_prefix) and key[len(res5_prefix)].isdigit()


def missing_trunk_keys(model, unfilled_keys):
    prefixes, res5_prefix = pretrained_trunk_prefixes(model)
    return [key for key in unfilled_keys if is_pretrained_trunk_key(key, prefixes, res5_prefix)]


def load_weights(cfg, model, require_all=False):
    """Load MODEL.WEIGHTS into ``model``; fail unless every pretrained backbone tensor arrived."""
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        notice('MODEL.WEIGHTS is "": random init, nothing loaded')
        return
    checkpointer = RecordingCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    try:
        checkpointer.load(weights, checkpointables=[])
    except Exception as error:  # any failure to read the file is a problem with the file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise TransferError(
            f"cannot load MODEL.WEIGHTS {weights} ({type(error).__name__}: {first_line}): "
            "re-convert it with tools/convert_to_d2.py"
        ) from error
    missing = (
        checkpointer.unfilled_keys
        if require_all
        else missing_trunk_keys(model, checkpointer.unfilled_keys)
    )
    if missing:
        what = "model tensors" if require_all else "pretrained backbone tensors"
        raise TransferError(
            f"MODEL.WEIGHTS {weights} lacks {len(missing)} {what} (e.g. {missing[0]}): wrong "
            "architecture or config for these weights? re-convert with tools/convert_to_d2.py "
            'and keep the .json beside the .pkl, or set MODEL.WEIGHTS "" for random init'
        )


class Trainer(DefaultTrainer):
    """Detectron2's trainer with faster-coco-eval COCO evaluation and the loaded-backbone check."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if MetadataCatalog.get(dataset_name).get("evaluator_type") == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        # a user dataset's own OKS sigmas (transfer.user_datasets); COCO's otherwise
        sigmas = MetadataCatalog.get(dataset_name).get("keypoint_oks_sigmas", ())
        return FasterCOCOEvaluator(
            dataset_name, tasks=config_tasks(cfg), output_dir=output_folder, kpt_oks_sigmas=sigmas
        )

    def resume_or_load(self, resume=True):
        if resume and self.checkpointer.has_checkpoint():
            super().resume_or_load(resume=True)
            notice(f"resumed from {self.checkpointer.get_checkpoint_file()} at iter {self.iter}")
            return
        load_weights(self.cfg, self.checkpointer.model)


def config_tasks(cfg):
    tasks = ["bbox"]
    if cfg.MODEL.MASK_ON:
        tasks.append("segm")
    if cfg.MODEL.KEYPOINT_ON:
        tasks.append("keypoints")
    return tuple(tasks)


def json_number(value):
    """JSON has no NaN: COCO's 'no predictions' AP becomes null."""
    value = float(value)
    return None if math.isnan(value) else value


def task_results(evaluation, cfg):
    """``{task: {metric: AP}}`` of the first test dataset, per-category APs left out."""
    if len(cfg.DATASETS.TEST) > 1:
        # Detectron2 nests results by dataset when it evaluates several
        evaluation = evaluation.get(cfg.DATASETS.TEST[0], {})
    return {
        task: {
            metric: json_number(value)
            for metric, value in evaluation[task].items()
            if not metric.startswith("AP-")
        }
        for task in RESULT_TASKS
        if task in (evaluation or {})
    }


def write_results(output_dir, results):
    path = Path(output_dir) / RESULTS_FILE
    write_json_atomic(path, results)
    notice(f"wrote {path}: " + ", ".join(f"{t} AP {r.get('AP')}" for t, r in results.items()))


def setup_run_logging(cfg, config_file, resume, eval_only):
    """Detectron2's ``default_setup``, logging once per line to this run's ``log.txt``.

    ``default_setup`` adds stdout and file handlers for every new OUTPUT_DIR; without clearing
    them, several runs in one process (the demo, tests) print each line once per earlier run.
    """
    for name in ("detectron2", "fvcore"):
        logging.getLogger(name).handlers.clear()
    setup_logger.cache_clear()
    args = SimpleNamespace(config_file=str(config_file), resume=resume, eval_only=eval_only)
    default_setup(cfg, args)


def prepare_all_datasets(cfg, datasets):
    """Register the user's datasets, then check everything the config names (no model yet)."""
    register_user_datasets(datasets)
    prepare_datasets(cfg)
    check_against_config(cfg)


def run_in_process(cfg, config_file, resume, eval_only, datasets=()):
    """One Detectron2 worker: train (or evaluate) and return the task results."""
    setup_run_logging(cfg, config_file, resume, eval_only)
    prepare_all_datasets(cfg, datasets)  # spawned workers start with empty catalogs
    if eval_only:
        model = Trainer.build_model(cfg)
        load_weights(cfg, model, require_all=True)
        evaluation = Trainer.test(cfg, model)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=resume)
        trainer.train()
        evaluation = getattr(trainer, "_last_eval_results", None) or {}
    results = task_results(evaluation, cfg)
    if comm.is_main_process():
        write_results(cfg.OUTPUT_DIR, results)
    return results


def read_results(output_dir):
    path = Path(output_dir) / RESULTS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def run(
    config_file,
    opts=(),
    num_gpus=1,
    num_machines=1,
    machine_rank=0,
    dist_url="auto",
    resume=False,
    eval_only=False,
    datasets=(),
):
    """Train and evaluate one transfer run; returns ``{task: {"AP": .., "AP50": .., ..}}``.

    ``datasets``: ``NAME=ANNOTATIONS.json:IMAGE_DIR`` COCO datasets to register first
    (``transfer.user_datasets``). Raises ``TransferError`` (one line) for bad input: config,
    weights, datasets, devices.
    """
    cfg = build_config(config_file, opts, num_gpus=num_gpus, num_machines=num_machines)
    if eval_only and not cfg.MODEL.WEIGHTS:
        raise TransferError("--eval-only needs MODEL.WEIGHTS: pass a trained model_final.pth")
    prepare_all_datasets(cfg, datasets)
    if num_gpus * num_machines == 1:
        return run_in_process(cfg, config_file, resume, eval_only, datasets)
    launch(
        run_in_process,
        num_gpus,
        num_machines=num_machines,
        machine_rank=machine_rank,
        dist_url=dist_url,
        args=(cfg, config_file, resume, eval_only, tuple(datasets)),
    )
    return read_results(cfg.OUTPUT_DIR)
