"""Start (or join) Ray, deploy the engine replicas (each loads the model) and serve the gateway in this
process; stop it all on Ctrl-C."""

from __future__ import annotations

import logging
import os
import time

from server.config import Config
from server.engine import serve
from server.scale_out.gateway import Gateway
from server.scale_out.replica import EngineReplica

log = logging.getLogger(__name__)

APP_NAME = "live-diffusion-{index}"
# Each open websocket, stream and viewer holds one request of its replica for its whole life: far more
# than Serve's default of 5, so that the app's own limits (--max-users, streams, viewers) decide.
MAX_ONGOING_REQUESTS = 10_000


def run_scaled_out(config: Config) -> int:
    import ray
    from ray import serve as ray_serve
    from ray.serve.api import RunTarget

    from server.web import REPO_ROOT

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = time.perf_counter()
    log.info("Scale-out: %s Ray, %d engine replicas", f"joining {config.ray_address}" if config.ray_address else "starting",
             config.replicas)
    ray.init(
        address=config.ray_address or None,
        include_dashboard=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}},
    )
    try:
        ray_serve.start(proxy_location="Disabled")  # the gateway here is the only way in
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus and gpus < config.replicas:
            log.error("--replicas %d needs a GPU each; the cluster has %d", config.replicas, gpus)
            return 2
        per_replica = {"num_gpus": 1} if gpus else {"num_cpus": resources.get("CPU", 1) / config.replicas}
        deployment = ray_serve.deployment(
            EngineReplica,
            name="engine",
            logging_config={"enable_access_log": False, "log_level": "WARNING"},  # no line per forwarded event
            num_replicas=1,
            max_ongoing_requests=MAX_ONGOING_REQUESTS,
            ray_actor_options=per_replica,
            health_check_period_s=2.0,
            health_check_timeout_s=30.0,
            graceful_shutdown_timeout_s=2.0,
        )
        # The gateway has checked every request's Host and Origin; a replica (maybe on another node,
        # with other names) takes what it forwards.
        replica_config = config.model_copy(update={"replicas": 1, "ray_address": "", "allowed_hosts": ["*"]})
        handles = ray_serve.run_many([
            RunTarget(deployment.bind(replica_config, index), name=APP_NAME.format(index=index), route_prefix=None)
            for index in range(config.replicas)
        ])
        log.info("%d replicas serving in %.1f s (%s each)", config.replicas, time.perf_counter() - started,
                 "one GPU" if gpus else f"{per_replica['num_cpus']:g} CPU")
        gateway = Gateway(config, handles)
        return serve(gateway, gateway, config)
    finally:
        log.info("Stopping the replicas")
        if config.ray_address:
            for index in range(config.replicas):
                ray_serve.delete(APP_NAME.format(index=index))
        else:
            ray_serve.shutdown()
        ray.shutdown()
