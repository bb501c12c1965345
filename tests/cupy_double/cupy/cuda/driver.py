"""cupy.cuda.driver of the double: the driver API's error, as a RawKernel launch raises it."""

NAMES = {
    700: "CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was encountered",
    715: "CUDA_ERROR_ILLEGAL_INSTRUCTION: an illegal instruction was encountered",
    716: "CUDA_ERROR_MISALIGNED_ADDRESS: misaligned address",
    719: "CUDA_ERROR_LAUNCH_FAILED: unspecified launch failure",
    400: "CUDA_ERROR_INVALID_HANDLE: invalid resource handle",
}


class CUDADriverError(RuntimeError):
    """cupy_backends.cuda.api.driver.CUDADriverError: ``status`` and cupy's message."""

    def __init__(self, status):
        self.status = status
        super().__init__(NAMES.get(status, f"CUDA_ERROR {status}"))


CUDADriverError.__module__ = "cupy_backends.cuda.api.driver"
