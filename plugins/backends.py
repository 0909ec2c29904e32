"""Built-in backends: where the work runs. A plugin like any other (only ``register_backends``)."""

from types import SimpleNamespace

import pluggy

hookimpl = pluggy.HookimplMarker("tunelab")


def _local(settings):
    from tunelab.core.backends.local import LocalEngine

    return LocalEngine(settings)


def _ray(settings):
    from tunelab.core.backends.ray import create

    return create(settings)


LOCAL = SimpleNamespace(
    name="local",
    description="This machine: interactive verbs in this process, training in a worker subprocess.",
    params=[],
    create=_local,
)

RAY = SimpleNamespace(
    name="ray",
    description="A GPU box or cluster running Ray: runs are Ray Jobs, generate and evaluate answer from a warm "
                "TuneLab service on the box. Every request carries the cluster's token.",
    params=[
        {"name": "address", "type": "str", "default": "", "help": "The Ray dashboard/jobs address, e.g. "
         "https://gpu-box:8265 (TUNELAB_RAY_ADDRESS)."},
        {"name": "token", "type": "str", "default": "", "help": "The cluster's auth token (TUNELAB_RAY_TOKEN)."},
    ],
    create=_ray,
)


@hookimpl
def register_backends(register):
    register(LOCAL)
    register(RAY)
