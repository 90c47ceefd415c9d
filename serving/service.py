"""The BentoML service: a thin shell. ``bentoml serve serving.service:TierRouter``.

Start-up builds the :class:`serving.runtime.Runtime` from the environment
(:mod:`serving.settings`); the HTTP API is :mod:`serving.api`, mounted at ``/``. BentoML answers
``/healthz`` (alive) and ``/readyz`` (models loaded) through the hooks below. BentoML's own
``/metrics`` is switched off so that ``/metrics`` serves the router's metrics. One worker per
replica: the policy (classifier, cache) lives in the process; scale out with replicas sharing a
decision log (and, later, a cache server).
"""

from __future__ import annotations

import logging

import bentoml

from serving.api import create_app
from serving.runtime import Runtime
from serving.settings import ServiceSettings

_runtime: Runtime | None = None


def _current() -> Runtime:
    if _runtime is None:
        raise RuntimeError("the service has not started")
    return _runtime


app = create_app(_current)


@bentoml.service(name="tier-router", workers=1, metrics={"enabled": False},
                 traffic={"timeout": 300})
@bentoml.asgi_app(app, path="/")
class TierRouter:
    def __init__(self) -> None:
        global _runtime
        logging.getLogger("serving").setLevel(logging.INFO)
        logging.getLogger("router").setLevel(logging.INFO)
        _runtime = self.runtime = Runtime(ServiceSettings.from_env()).start()

    def __is_ready__(self) -> bool:
        return self.runtime.ready

    def __is_alive__(self) -> bool:
        return True

    @bentoml.on_shutdown
    def close(self) -> None:
        self.runtime.close()
