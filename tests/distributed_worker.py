"""One rank of the distributed tests: run by tests/test_distributed.py under mpirun, not by pytest.

    mpirun -n N python tests/distributed_worker.py OUT_DIR CONFIG_JSON

Trains a Network on a fixed synthetic set through the Python API with ``distributed=`` and writes
OUT_DIR/rank<r>.npz (the flat weights and the loss history).  With "die_at_step": k in the
config, rank 1 kills itself (SIGKILL) at its k-th all-reduce, to test that the others end too;
"visible_devices": [one CUDA_VISIBLE_DEVICES per rank] sets each rank's before it connects.
"""

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np

from fastnn import Network
from fastnn.distributed import connect


def dataset(n, n_in, n_out):
    """The synthetic training set every rank and the single-process reference use."""
    rng = np.random.default_rng(2024)
    return rng.random((n, n_in)), rng.integers(0, n_out, n)


def train(config, distributed=None, device="cpu"):
    """Train as ``config`` says; return the Network and its History."""
    sizes = config["sizes"]
    X, y = dataset(config["n"], sizes[0], sizes[-1])
    net = Network(sizes, activation=config["activation"], output=config["output"], cost=config["cost"],
                  device=device, dtype="float64", seed=config["seed"])
    history = net.fit(X, y, epochs=config["epochs"], batch_size=config["batch_size"], lr=config["lr"],
                      momentum=config["momentum"], l2=config["l2"], distributed=distributed)
    return net, history


def die_at(comm, step):
    """Make rank 1 kill itself at its ``step``-th all-reduce."""
    allreduce_sum, count = comm.allreduce_sum, [0]

    def counting(buf):
        count[0] += 1
        if comm.rank == 1 and count[0] == step:
            os.kill(os.getpid(), signal.SIGKILL)
        allreduce_sum(buf)

    comm.allreduce_sum = counting


def main(out_dir, config):
    if "visible_devices" in config:  # one CUDA_VISIBLE_DEVICES per rank, as SLURM's --gpus-per-task sets it
        os.environ["CUDA_VISIBLE_DEVICES"] = config["visible_devices"][int(os.environ["OMPI_COMM_WORLD_RANK"])]
    comm = connect(config.get("device", "cpu"))
    if "die_at_step" in config:
        die_at(comm, config["die_at_step"])
    net, history = train(config, distributed=comm, device=comm.backend)
    np.savez(Path(out_dir) / f"rank{comm.rank}.npz", params=net.backend.to_host(net.params),
             loss=np.array(history.loss), device=comm.backend.device, size=comm.size)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
