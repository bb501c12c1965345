"""cupy.cuda.nccl of the double: NCCL's all-reduce, done with MPI between the ranks of the job.

A communicator spans MPI.COMM_WORLD (fastnn makes one per job, over every rank).  Buffers are
given as addresses (``a.data.ptr``), as to NCCL; they are read as numpy arrays in place.
"""

import ctypes

import numpy

available = True
NCCL_SUM = 0
NCCL_FLOAT32 = 7
NCCL_FLOAT64 = 8
_TYPES = {NCCL_FLOAT32: ctypes.c_float, NCCL_FLOAT64: ctypes.c_double}


class NcclError(RuntimeError):
    pass


def get_unique_id():
    return tuple(range(128))


def _world():
    from mpi4py import MPI

    return MPI


class NcclCommunicator:
    def __init__(self, ndev, commId, rank):
        self.mpi = _world()
        self.comm = self.mpi.COMM_WORLD.Dup()
        if self.comm.Get_size() != ndev or self.comm.Get_rank() != rank:
            raise NcclError(f"the double's NCCL spans MPI.COMM_WORLD ({self.comm.Get_size()} ranks); got ndev={ndev}, "
                            f"rank={rank}")

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        if op != NCCL_SUM:
            raise NcclError(f"the double's NCCL sums only; got op {op}")
        kind = _TYPES[datatype]
        recv = numpy.ctypeslib.as_array((kind * count).from_address(recvbuf))
        if sendbuf == recvbuf:
            self.comm.Allreduce(self.mpi.IN_PLACE, recv, op=self.mpi.SUM)
        else:
            send = numpy.ctypeslib.as_array((kind * count).from_address(sendbuf))
            self.comm.Allreduce(send, recv, op=self.mpi.SUM)

    def destroy(self):
        self.comm.Free()
