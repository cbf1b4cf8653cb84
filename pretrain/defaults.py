"""The pretraining config schema: every valid key with its default (``load_config(schema=)``)."""

DEFAULTS = {
    "method": "moco",  # ir | cmc | moco | simclr
    "output_dir": "runs/pretrain/default",
    "seed": 0,
    "resume": "auto",  # auto (latest good checkpoint of output_dir) | none | path to a .pth
    "device": "auto",  # auto | cpu | cuda
    "model": {
        "arch": "resnet18",
        "width": 1.0,  # channel multiplier: 64*width at the stem
        "stem": "imagenet",  # imagenet (7x7/2 + max-pool) | cifar (3x3/1, for 32 px)
        "embedding_dim": 128,
        "head": "mlp",  # mlp (MoCo v2, SimCLR) | linear (IR, CMC)
        "hidden_dim": None,  # MLP hidden width; null = backbone feature width
    },
    "sampler": {
        "name": "uniform",  # uniform | ring | dcl | hcl | mochi (pretrain/samplers.py)
        "within_ring": False,  # dcl/hcl: weigh ring draws instead of the uniform negatives
        "upper": 0.1,  # ring: ranks [lower_ratio*upper, upper) of the whole pool (0 = nearest)
        "lower_ratio": 0.1,
        # negatives from the ring: null = the authors' (bank: as many draws as uniform; queue or
        # batch: every member once) | equal (as many draws as uniform) | ring (once) | int draws
        "num_negatives": None,
        "replacement": True,  # ring draws with replacement (the original)
        "schedule": "constant",  # constant (shipped original) | linear | cosine | step, of upper
        "start": 1.0,  # upper at epoch 0 for linear/cosine/step
        "anneal_fraction": 0.5,  # linear/cosine reach `upper` at this fraction of optim.epochs
        "step_fractions": None,  # step: list of fractions of optim.epochs, geometric drops
        "rank_chunk_mb": 256,  # memory for ranking a bank: rows per chunk = this / (N * 4 B)
        "tau_plus": 0.1,  # dcl/hcl: class prior of false negatives, in [0, 1)
        "beta": 1.0,  # hcl: concentration on hard negatives, >= 0
        "mochi_hardest": 1024,  # mochi: N hardest negatives mixed
        "mochi_pairs": 1024,  # mochi: s mixes of two hard negatives
        "mochi_query": 256,  # mochi: s' mixes of the query with a hard negative
    },
    "ir": {"num_negatives": 4096, "momentum": 0.5, "temperature": 0.07},
    "cmc": {"num_negatives": 4096, "momentum": 0.5, "temperature": 0.07},
    "moco": {
        "queue_size": 65536,
        "momentum": 0.999,
        "temperature": 0.2,
        # BN groups per rank for keys; null: 4 in one process (one group there would let a
        # query find its key through batch statistics), 1 per rank under DDP
        "shuffle_bn_splits": None,
    },
    "simclr": {"temperature": 0.1},
    "data": {
        "name": "fashion_mnist",  # fashion_mnist | cifar10 | cifar100 | stl10 | imagefolder
        "root": None,  # null = the dataset's standard place (Fashion-MNIST: Debian package)
        "image_size": None,  # null = the dataset's native size (imagefolder: 224)
        "train_subset": None,  # pretrain on this many images (fixed random subset)
        "crop_min_scale": 0.2,
        "augment_on": "cpu",  # cpu (loader workers) | gpu (loader decodes, pretrain/gpu_augment.py)
        "num_workers": 2,
        "stl_unlabeled": True,  # STL-10: pretrain on unlabeled + train
        "synthetic": {
            "image_size": 32,
            "channels": 3,
            "train_count": 256,
            "test_count": 64,
            "num_classes": 4,
            "seed": 0,
        },
    },
    "optim": {
        "batch_size": 256,  # global, split over DDP ranks
        "epochs": 200,
        "lr": 0.03,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "schedule": "cosine",  # cosine | step | constant
        "warmup_epochs": 0.0,
        "milestones": [120, 160],  # step schedule: epochs where lr *= gamma
        "gamma": 0.1,
    },
    "train": {
        "amp": True,  # bf16 autocast, GPU only
        "channels_last": True,  # GPU only
        "stop_after_epoch": None,  # end this job after that epoch (time slices, tests)
        "log_every_steps": 10,
        "progress": True,  # progress bar with throughput on stderr
        "tensorboard": True,
    },
    "knn": {
        "every_epochs": 10,  # 0 = only at the end
        "k": 200,
        "temperature": 0.07,
        "train_subset": 10000,  # labelled bank size; null = all
        "test_subset": 2000,
        "batch_size": 512,
    },
    "checkpoint": {"every_epochs": 10},
}
