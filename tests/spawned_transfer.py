"""What tests/test_transfer_launch.py runs in each spawned worker: one Detectron2 transfer
iteration on the CPU under gloo. Nothing of ``transfer`` is imported at module level: a worker
must get the ``_C`` fallback from what ``transfer.launch`` spawns, not from this module."""


def transfer_iteration(cfg, config_file):
    from detectron2.engine import defaults

    from transfer.engine import run_in_process

    # DDP of a CPU model takes no device ids; Detectron2 passes the local rank (a GPU index)
    create_ddp_model = defaults.create_ddp_model
    defaults.create_ddp_model = lambda model, **kw: create_ddp_model(model, device_ids=None, **kw)
    run_in_process(cfg, config_file, resume=False, eval_only=False)
