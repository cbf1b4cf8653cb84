"""DDP across the nodes of a real two-node Slurm cluster (tools/slurm/start_local_slurm.sh
--nodes 2: two slurmd, each in its own network namespace with its own hostname and address).

``tools/submit.py pretrain --nodes 2`` runs one process per node (CPU, gloo) that meet at the
first host of the node list. Its weights after N steps are compared with a one-node run of the
same global batch and seed: that run has two processes on one node, because the data order
(DistributedSampler) and the per-rank augmentation seeds depend on the number of ranks, and
BatchNorm normalises each rank's half-batch (SyncBN is GPU-only), so a single process is a
different computation, not the same one. With the same ranks, only the transport differs (TCP
over the bridge vs. within one node), and a two-rank gloo sum is a+b on both ranks: the weights
agree to float32 rounding, checked at atol 1e-6 (the per-element sums are exact, so any
difference would be a real divergence, which grows far past this bound within a step).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from slurm_local import START, STOP, cluster_started, run_script

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
STEPS = 8  # 64 images, global batch 16, 2 epochs


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    with cluster_started("--nodes", "2"):
        yield tmp_path_factory.mktemp("multinode")


def pretrain_overrides(method, output_dir):
    return [
        f"method={method}",
        "device=cpu",
        "model.width=0.125",
        "model.stem=cifar",
        "model.embedding_dim=16",
        "moco.queue_size=32",
        "ir.num_negatives=16",
        "data.name=synthetic",
        "data.num_workers=0",
        "data.synthetic.image_size=16",
        "data.synthetic.train_count=64",
        "data.synthetic.test_count=32",
        "optim.batch_size=16",
        "optim.epochs=2",
        "train.progress=false",
        "train.tensorboard=false",
        "knn.every_epochs=1",
        "knn.k=5",
        "checkpoint.every_epochs=1",
        f"output_dir={output_dir}",
    ]


def submit_pretraining(config, method, output_dir, nodes, tasks_per_node):
    command = [sys.executable, str(REPO / "tools" / "submit.py"), "pretrain", "--config", config]
    command += ["--nodes", nodes, "--tasks-per-node", tasks_per_node, "--gpus-per-node", "0"]
    command += ["--cpus-per-task", "1", "--mem-gb", "2", "--wait"]
    command += pretrain_overrides(method, output_dir)
    return subprocess.Popen(
        list(map(str, command)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def every_rank_result(submitter):
    """The job id and each task's result (``--wait`` prints one JSON line per rank)."""
    stdout, stderr = submitter.communicate(timeout=600)
    assert submitter.returncode == 0, stderr[-3000:]
    lines = stdout.strip().splitlines()
    job_id = lines[0].split()[1].rstrip(":")  # "job <id>: log <path>"
    return job_id, [json.loads(line) for line in lines[1:]]


def hosts_of(job_id):
    listing = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "NodeList"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    nodes = subprocess.run(
        ["scontrol", "show", "hostnames", listing[0]], capture_output=True, text=True, check=True
    )
    return nodes.stdout.split()


@pytest.mark.parametrize("method", ["moco", "ir"])  # the queue, then the memory bank
def test_two_node_ddp_equals_one_node_run_and_ranks_agree(two_nodes, method):
    config = two_nodes / "pretrain.yaml"
    config.write_text(yaml.safe_dump({"method": method}))
    across, within = two_nodes / f"{method}_two_nodes", two_nodes / f"{method}_one_node"
    # both at once: 1 CPU on each node, then 2 CPUs on one node once one is free
    submitters = {
        across: submit_pretraining(config, method, across, nodes=2, tasks_per_node=1),
        within: submit_pretraining(config, method, within, nodes=1, tasks_per_node=2),
    }
    results = {out: every_rank_result(submitter) for out, submitter in submitters.items()}

    across_id, across_ranks = results[across]
    assert hosts_of(across_id) == ["rnce-n1", "rnce-n2"]
    assert len(hosts_of(results[within][0])) == 1
    for _, ranks in results.values():
        assert [rank["rank"] for rank in ranks] == [0, 1]
        assert all(rank["global_step"] == STEPS for rank in ranks)
        # the replicas agree bit for bit: weights, and the MoCo queue / the IR memory bank
        assert ranks[0]["replicated_digest"] == ranks[1]["replicated_digest"]
    # the kNN monitor and the checkpoints are rank 0's
    assert "knn_top1" in across_ranks[0] and across_ranks[1]["checkpoint"] is None
    assert across_ranks[0]["checkpoint"].startswith(str(across))

    two_node = torch.load(across / "checkpoints" / "last.pth", map_location="cpu")["model"]
    one_node = torch.load(within / "checkpoints" / "last.pth", map_location="cpu")["model"]
    assert two_node.keys() == one_node.keys()
    for name, value in two_node.items():
        torch.testing.assert_close(value, one_node[name], rtol=0, atol=1e-6, msg=name)
    # training moved the weights: the comparison is not between two initialisations
    first = torch.load(across / "checkpoints" / "epoch_0001.pth", map_location="cpu")["model"]
    assert any(not torch.equal(first[name], two_node[name]) for name in two_node)


def test_stop_removes_the_namespaces_and_the_bridge(two_nodes):
    stopped = run_script(STOP)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not [name for name in namespaces() if name.startswith("rnce-n")]
    assert subprocess.run(["ip", "link", "show", "rnce-br0"], capture_output=True).returncode
    # and a second start brings the same two nodes back (the module's teardown stops it again)
    again = run_script(START, "--nodes", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert sorted(n for n in namespaces() if n.startswith("rnce-n")) == ["rnce-n1", "rnce-n2"]
    repeated = run_script(START, "--nodes", "2")
    assert "started" not in repeated.stdout and "cluster ready (2 node(s))" in repeated.stdout
    assert os.path.isfile("/etc/netns/rnce-n1/hosts")


def namespaces():
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listing.splitlines() if line.strip()]
