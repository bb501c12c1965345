"""Data-parallel training: the ranks of an MPI job each hold the whole model and sum one flat buffer.

Every rank computes the summed gradients of its share of each global mini-batch; one all-reduce
of the flat buffer ``net.grads`` per step gives every rank the gradients of the whole batch, so
every rank applies the identical update and the weights stay identical.  CPU ranks sum numpy
buffers with MPI Allreduce (mpi4py); GPU ranks sum device buffers with NCCL (cupy's bindings,
reached through the backend layer), the NCCL id sent over MPI.  Host values (the epoch's loss,
the checks that the ranks agree) always travel over MPI.
"""

import hashlib
import logging
import os
import time

import numpy as np

from .backend import Backend, cuda_device_count, get_backend, import_nccl, parse_device
from .errors import BackendUnavailable, ConfigError, DistributedError, FastnnError

log = logging.getLogger("fastnn")

# Set by the launchers: Open MPI's mpirun, MPICH/Intel MPI (Hydra's PMI), PMIx launchers (srun --mpi=pmix).
LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")
SAMPLED_ROWS = 64  # rows of the training set compared across ranks, spread evenly over it

_joined = None  # the Communicator of this process, once it has joined its MPI job


def launched():
    """True when an MPI launcher started this process (read from the environment; MPI untouched)."""
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


def import_mpi():
    """Return mpi4py's MPI module (which initialises MPI), or raise DistributedError saying why not."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError(f"distributed training needs mpi4py, which cannot be imported ({e}); "
                               "install it with: pip install mpi4py") from e
    return MPI


def share(m, size, rank):
    """Rank ``rank``'s rows of a batch of m split over ``size`` ranks: a slice of range(m).

    The shares are contiguous, in rank order, and cover the batch; ranks below m mod size take
    one row more than the others (a rank takes none when m < size).
    """
    q, r = divmod(m, size)
    start = rank * q + min(rank, r)
    return slice(start, start + q + (rank < r))


def joined():
    """The Communicator this process joined with ``connect``, or None."""
    return _joined


def rank_backend(device, local_rank):
    """This rank's Backend: the CPU for "cpu"; GPU (local rank mod GPU count) for "cuda" and "auto".

    "auto" falls back to the CPU when no GPU is usable; "cuda:N" is refused, since ranks sharing
    one GPU cannot use NCCL.
    """
    spec = device if device is not None else os.environ.get("FASTNN_DEVICE", "auto")
    kind, _ = parse_device(spec)
    if kind == "cpu":
        return get_backend("cpu")
    if kind == "cuda" and str(spec).strip().lower() != "cuda":
        raise ConfigError(f"distributed training needs device auto, cpu or cuda (each rank takes GPU "
                          f"'local rank mod GPU count'); got {spec!r}")
    try:
        count = cuda_device_count()
        if count == 0:
            raise BackendUnavailable("the CUDA driver shows no device")
        return get_backend(f"cuda:{local_rank % count}")
    except BackendUnavailable as e:
        if kind == "cuda":
            raise
        if local_rank == 0:
            log.warning("fastnn: no usable CUDA GPU (%s); this host's ranks train on the CPU", e)
        return Backend("numpy", np, "cpu", f"auto: no usable CUDA GPU: {e}")


def connect(device=None):
    """Join the MPI job this process was launched in; return this rank's Communicator.

    Args:
        device: a Backend to compute on as it is, or "auto" | "cpu" | "cuda" (default:
            $FASTNN_DEVICE or auto), from which each rank takes its own device.

    Collective: every rank of the job must call it.  Raises DistributedError when no MPI
    launcher started the process or mpi4py is missing; on every rank when any rank cannot use
    its device, when the ranks disagree on the array module, or share a GPU.  A second call
    returns the same Communicator.
    """
    global _joined
    if _joined is not None:
        if _joined.backend is None:
            raise DistributedError("this process joined its MPI job but could not start computing; see the first error")
        if isinstance(device, Backend) and device is not _joined.backend:
            raise ConfigError(f"this process already joined its MPI job on {_joined.backend.device}; got {device}")
        return _joined
    if not launched():
        raise DistributedError("distributed training needs an MPI launcher: start it as "
                               "'mpirun -n N fastnn train ... --distributed' (none of "
                               f"{', '.join(LAUNCHER_VARIABLES)} is set)")
    MPI = import_mpi()
    world = MPI.COMM_WORLD
    _joined = comm = Communicator(MPI, world)
    local_rank = world.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()  # rank among this host's ranks
    error = backend = None
    try:
        backend = device if isinstance(device, Backend) else rank_backend(device, local_rank)
    except FastnnError as e:
        error = e
    comm.raise_if_any(error)
    comm.check_same(backend.name, "the array module (numpy on the CPU, cupy on a GPU)")
    if backend.is_cuda:
        comm._start_nccl(backend)
    comm.backend = backend
    return comm


class Communicator:
    """The ranks of one MPI job seen from one of them.

    size, rank: the job's number of ranks and this one's (0 is the one that prints and saves).
    backend: the Backend this rank computes on.  Device buffers are summed with MPI Allreduce
    on the CPU and with NCCL on GPUs; host values always go over MPI.
    """

    def __init__(self, mpi, world):
        self.mpi = mpi
        self.world = world
        self.size = world.Get_size()
        self.rank = world.Get_rank()
        self.backend = None
        self._spare = world.Dup()  # used only to agree on how to end after an error
        self._nccl = None  # GPU ranks: (NCCL communicator, NCCL type of each dtype, NCCL sum)

    def __repr__(self):
        device = self.backend.device if self.backend is not None else "no device"
        return f"Communicator(rank {self.rank} of {self.size}, {device}, {'NCCL' if self._nccl else 'MPI'})"

    def _start_nccl(self, backend):
        """Collective: make the NCCL communicator of GPU ranks, its unique id sent over MPI."""
        # The PCI bus id, not cuda:N: under per-rank CUDA_VISIBLE_DEVICES every rank's GPU is cuda:0.
        places = self.world.allgather((self.mpi.Get_processor_name(), backend.gpu_id(), backend.device))
        for r, place in enumerate(places):
            first = next(i for i, p in enumerate(places) if p[:2] == place[:2])
            if first != r:
                raise DistributedError(
                    f"ranks {first} and {r} share the GPU at PCI bus id {place[1]} on {place[0]} ({places[first][2]} "
                    f"and {place[2]} there), but NCCL needs one GPU per rank: start at most as many ranks on a host "
                    "as it has GPUs")
        error = nccl = None
        try:
            nccl = import_nccl()
        except BackendUnavailable as e:
            error = e
        self.raise_if_any(error)
        uid = self.broadcast(nccl.get_unique_id() if self.rank == 0 else None)
        with backend.xp.cuda.Device(backend.index):
            comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        self._nccl = (comm, types, nccl.NCCL_SUM)

    def share(self, m):
        """This rank's rows of a global batch of m rows (a slice; see ``share``)."""
        return share(m, self.size, self.rank)

    def allreduce_sum(self, buf):
        """buf ← Σ over ranks of buf, in place, on every rank (a contiguous array of the backend).

        GPU ranks queue one NCCL all-reduce on the current stream (no host sync); CPU ranks call
        MPI Allreduce.
        """
        if self._nccl is None:
            self.world.Allreduce(self.mpi.IN_PLACE, buf, op=self.mpi.SUM)
            return
        comm, types, op = self._nccl
        stream = self.backend.xp.cuda.get_current_stream()
        comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, types[buf.dtype], op, stream.ptr)

    def allreduce_scalar(self, x):
        """Σ over ranks of the host number x, the same float on every rank."""
        buf = np.array([x], np.float64)
        self.world.Allreduce(self.mpi.IN_PLACE, buf, op=self.mpi.SUM)
        return float(buf[0])

    def broadcast(self, value):
        """Rank 0's ``value`` (any picklable host object), on every rank."""
        return self.world.bcast(value, root=0)

    def barrier(self):
        """Wait until every rank has come here."""
        self.world.Barrier()

    def check_same(self, value, what):
        """Collective: raise DistributedError on every rank unless all ranks hold an equal ``value``."""
        values = self.world.allgather(value)
        differ = [r for r, v in enumerate(values) if v != values[0]]
        if differ:
            shown = [0] + differ[:3]
            has = ", ".join(f"rank {r} has {values[r]!r}" for r in shown)
            more = f" (and {len(differ) - 3} more ranks)" if len(differ) > 3 else ""
            raise DistributedError(f"ranks disagree on {what}: {has}{more}")

    def raise_if_any(self, error):
        """Collective: when any rank has an error (an exception, or None), raise on every rank.

        A rank raises its own error; the others raise DistributedError naming the first rank that had one.
        """
        errors = self.world.allgather(None if error is None else str(error))
        if error is not None:
            raise error
        for r, text in enumerate(errors):
            if text is not None:
                raise DistributedError(f"rank {r} cannot go on: {text}")

    def all_failed(self, seconds):
        """After an error on this rank: True when every rank reports one within ``seconds``.

        False means some rank is still working, waits on this one, or is gone: the caller should
        then ``abort``.  Call it at most once per process.
        """
        request = self._spare.Ibarrier()
        deadline = time.monotonic() + seconds
        while not request.Test():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def abort(self, code):
        """End every rank of the job now, with exit status ``code`` (MPI_Abort; does not return)."""
        self.world.Abort(code)


def _digest(backend, a):
    return hashlib.blake2b(np.ascontiguousarray(backend.to_host(a)).tobytes(), digest_size=8).hexdigest()


def training_communicator(distributed, net, X, Y, batch_size, shuffle, settings):
    """The Communicator ``fit`` sums gradients with, or None to train alone; checks that the ranks agree.

    Args:
        distributed: None/False (train alone), True (``connect`` on the network's backend), or a
            Communicator whose backend the network computes on.
        X, Y: the training set on the device, (n, n_in) and (n, n_out).
        batch_size, shuffle, settings: the global batch size, whether epochs are shuffled, and the
            other hyperparameters: all compared across ranks.

    Collective: compares the model, the training set (shape and a sample of rows), the settings,
    the initial weights and the shuffling generator across ranks, each with one small allgather.
    """
    if distributed is None or distributed is False:
        return None
    comm = connect(net.backend) if distributed is True else distributed
    if not isinstance(comm, Communicator):
        raise ConfigError(f"distributed must be True, False or a Communicator; got {distributed!r}")
    mismatch = None if comm.backend is net.backend else ConfigError(
        f"the network computes on {net.backend.device} but the communicator on {comm.backend.device}: "
        "build it with Network(..., device=comm.backend)")
    comm.raise_if_any(mismatch)
    if batch_size < comm.size:
        raise ConfigError(f"batch_size must be at least the number of ranks ({comm.size}), so that every rank "
                          f"has a share of every full batch; got {batch_size}")
    backend = net.backend
    rows = slice(None, None, max(1, X.shape[0] // SAMPLED_ROWS))
    checks = [
        (net.sizes, "the layer sizes"),
        ([a.name for a in net.activations] + [net.cost.name, net.dtype.name], "the activations, cost and dtype"),
        ((X.shape, Y.shape), "the training set's shape"),
        (_digest(backend, X[rows]) + _digest(backend, Y[rows]), "the training data (a digest of sampled rows)"),
        ((batch_size, shuffle) + tuple(settings), "the training settings"),
        (_digest(backend, net.params), "the initial weights (a digest; give every rank the same seed)"),
    ]
    if shuffle:
        checks.append((repr(net.rng.bit_generator.state), "the shuffling generator's state (give every rank the same seed)"))
    for value, what in checks:
        comm.check_same(value, what)
    return comm
