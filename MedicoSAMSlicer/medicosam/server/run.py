"""Start the server: load the model once, then uvicorn in this process (one process per GPU)."""

from __future__ import annotations

from ..errors import InputError
from .config import ServeConfig


def serve(config: ServeConfig, download_progress=None) -> None:
    """Serve until interrupted (Ctrl+C)."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as error:
        raise InputError(f"`medicosam serve` needs the server extra ({error.name} is missing): "
                         "pip install 'medicosam[server]'") from None
    from ..device import get_device
    from ..models.checkpoint import load_sam
    from .state import ServerState

    if (config.ssl_certfile is None) != (config.ssl_keyfile is None):
        raise InputError("HTTPS needs both --ssl-certfile and --ssl-keyfile")
    loaded = load_sam(config.model, device=get_device(config.device), allow_custom=config.allow_custom,
                      offline=config.offline, progress=download_progress)
    app = create_app(ServerState(loaded, config))
    scheme = "https" if config.ssl_certfile else "http"
    # the normal start, on stdout: not a warning (the log shows only warnings, uvicorn's included)
    print(f"serving {loaded.source} ({loaded.config.arch}) on {scheme}://{config.host}:{config.port}, "
          f"{'token required' if config.tokens else 'no token (loopback only)'}; Ctrl+C stops it", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning",
                ssl_certfile=config.ssl_certfile, ssl_keyfile=config.ssl_keyfile)
