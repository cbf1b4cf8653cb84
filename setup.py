from setuptools import find_packages, setup

setup(
    name="ring-nce",
    version="0.1.0",
    description="Contrastive pretraining with Ring (conditional) negatives and Detectron2 transfer",
    python_requires=">=3.11",
    packages=find_packages(
        include=[
            "pretrain",
            "pretrain.*",
            "transfer",
            "transfer.*",
            "launcher",
            "launcher.*",
            "benchmarks",
            "benchmarks.*",
        ]
    ),
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "numpy>=2",
        "pyyaml",
        "pycocotools",
        "faster-coco-eval",  # COCO AP without Detectron2's compiled _C (transfer/evaluation.py)
        "scipy",  # Student-t intervals (launcher.stats), KS tests
        "matplotlib",  # study and leaderboard charts
        "submitit>=1.5",
        "tensorboard",
        "tqdm",
    ],
    extras_require={
        # benchmarks/peer_moco.py times our MoCo v2 step against lightly's; nothing else uses
        # it: install it in a separate virtualenv, never for users (pip install -e '.[peer]')
        "peer": ["lightly==1.6.0"],
    },
)
