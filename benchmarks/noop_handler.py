"""A TorchServe handler that answers every request without tokenizing or running a model.

The serving benchmark serves it beside the fused and stock archives, with the same batching and
workers: its latency and requests/s are the floor and ceiling of everything that is not the handler's
work (the client, the frontend's batching, the worker protocol) on that host and that run.
"""


def handle(data, context):
    if data is None:  # TorchServe's call at load time
        return None
    return [{"label": "noop"} for _ in data]
