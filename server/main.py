"""Start the server: python server/main.py --pipeline img2img [--tiny] [--help]

This script only reads the flags and starts what they ask for: one server (server/engine.py loads the
model once, before the port opens, and runs uvicorn with the app of server/app.py) or, with
--replicas / --ray-address, the scale-out gateway and its replicas (server/scale_out/).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python server/main.py` from any working directory
    sys.path.insert(0, str(REPO_ROOT))

from pydantic import ValidationError  # noqa: E402

from server.config import parse  # noqa: E402

log = logging.getLogger("live_diffusion")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse(sys.argv[1:] if argv is None else argv)
    except ValidationError as error:  # a flag or environment value out of its range: a usage error
        for problem in error.errors():
            option = "--" + "-".join(str(part) for part in problem["loc"]).replace("_", "-") if problem["loc"] else "options"
            print(f"{Path(sys.argv[0]).name}: error: {option}: {problem['msg']}", file=sys.stderr)
        return 2
    from server.logs import setup_logging

    setup_logging(config.log_level)

    import pipelines

    if config.list_pipelines:
        rows = pipelines.catalogue()
        width = max(len(name) for name, _ in rows)
        print("\n".join(f"{name:<{width}}  {what}" for name, what in rows))
        return 0
    from server import outputs

    try:  # before the model loads: a missing package or the wrong OS should not cost a minute of loading
        outputs.check(config)
    except outputs.OutputUnavailable as error:
        log.error("%s", error)
        return 2
    try:  # before Ray starts or any model loads
        module = pipelines.load_module(config.pipeline, config.set_up_choices())
    except (pipelines.UnknownPipeline, pipelines.SetUpError) as error:  # the command line asked for what cannot be
        log.error("%s", error)
        return 2
    if config.session:
        from server.outputs import ndi
        from server.protocol import describe_validation_error

        try:
            module.InputParams.model_validate_json(config.session_params or "{}")
            ndi.check()  # the NDI runtime, for the sessions' input
        except ValidationError as error:
            log.error("--session-params: %s", describe_validation_error(error))
            return 2
        except outputs.OutputUnavailable as error:
            log.error("--session needs NDI: %s", error)
            return 2
    from server import engine

    engine.keep_freed_memory()
    if config.replicas > 1 or config.ray_address:
        from server.scale_out.launch import run_scaled_out

        return run_scaled_out(config)
    try:
        loaded = engine.load_pipeline(config)
    except pipelines.ModelLoadError as error:
        log.error("%s", error)
        return 1

    from server.app import create_app

    app = create_app(config, loaded)
    return engine.serve(app, app.state.live, config)


if __name__ == "__main__":
    sys.exit(main())
