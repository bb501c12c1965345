"""The fused CUDA engine (to be written): a persistent kernel over the epoch."""


def available(backend):
    """None when this engine can run on ``backend``, else why not."""
    return "not built yet"


def unfit(net, batch_size, momentum, l2):
    return "not built yet"
