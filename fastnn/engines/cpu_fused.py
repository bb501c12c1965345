"""The fused CPU engine (to be written): a compiled batch loop for small networks."""


def available(backend):
    """None when this engine can run on ``backend``, else why not."""
    return "not built yet"


def unfit(net, batch_size, momentum, l2):
    return "not built yet"
