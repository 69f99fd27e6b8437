"""kser's control plane over HTTP: the REST API (``/api/v1``) and its OpenAPI document.

``registry.init_app(app)`` mounts it in a Flask app hosting the registry;
:func:`create_app` makes a stand-alone one (what ``kser serve`` runs).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from flask import Flask
from flask_smorest import Api

from kser import __version__
from kser.web.auth import AuthConfigError, Tokens

if TYPE_CHECKING:
    from kser.sequencing.registry import OperationRegistry

logger = logging.getLogger(__name__)

__all__ = ["AuthConfigError", "create_app", "init_api", "init_app"]


def init_app(app: Flask, registry: OperationRegistry, *, api: bool = True) -> None:
    """Bind ``registry`` to ``app`` (``app.extensions["kser"]``), mount its control plane
    there (the REST API, :func:`init_api`, and the web UI at ``/ui``,
    :func:`kser.web.ui.init_ui`; unless ``api=False``), then call its ``load_tasks``.
    ``registry.init_app(app)`` is the same call.

    :raises AuthConfigError: the API has no token (``KSER_API_TOKENS``) and
        ``KSER_API_AUTH=none`` does not allow it to be open; nothing is mounted
    """
    from kser.web.ui import init_ui

    registry.app = app
    if api:
        init_api(app, registry)
        init_ui(app)
    app.extensions["kser"] = registry
    registry.load_tasks()


def init_api(app: Flask, registry: OperationRegistry) -> Api:
    """Mount the REST API of ``registry`` in ``app`` at ``KSER_API_PREFIX`` (``/api/v1``):
    its routes, ``openapi.json`` and the interactive docs (``docs``).

    :raises AuthConfigError: no token is configured (``KSER_API_TOKENS``) and
        ``KSER_API_AUTH=none`` does not say the API may be open
    """
    from kser.web import api as routes

    settings = registry.settings
    tokens = Tokens.from_settings(settings)
    prefix = "/" + settings.api_prefix.strip("/") if settings.api_prefix.strip("/") else ""
    app.extensions["kser"] = registry
    app.extensions["kser.tokens"] = tokens
    app.config.setdefault("API_TITLE", "kser")
    app.config.setdefault("API_VERSION", __version__)
    app.config.setdefault("OPENAPI_VERSION", "3.0.3")
    app.config.setdefault("OPENAPI_URL_PREFIX", prefix or "/")
    app.config.setdefault("OPENAPI_JSON_PATH", "openapi.json")
    app.config.setdefault("OPENAPI_SWAGGER_UI_PATH", "docs")
    app.config.setdefault("OPENAPI_SWAGGER_UI_URL", "/kser-static/swagger-ui/")
    app.config.setdefault("API_SPEC_OPTIONS", {
        "info": {"description": (
            "Start, watch, control and repair kser operations. Every route but /health "
            "and /ready needs 'Authorization: Bearer <token>': a 'read' token for GETs, "
            "an 'admin' one for the rest (KSER_API_TOKENS on the server).")},
        "security": [{"bearerAuth": []}],
        "components": {"securitySchemes": {"bearerAuth": {"type": "http",
                                                          "scheme": "bearer"}}},
    })
    api = Api(app)
    for blueprint in routes.BLUEPRINTS:
        api.register_blueprint(blueprint, url_prefix=prefix or None)
    _static(app)
    if tokens.open:
        logger.warning("kser API at %s: no authentication (KSER_API_AUTH=none)", prefix or "/")
    return api


def _static(app: Flask) -> None:
    """Serve the vendored assets (Swagger UI) from the package: no CDN."""
    from importlib import resources

    from flask import Blueprint

    folder = resources.files("kser.web") / "static"
    blueprint = Blueprint("kser_static", __name__, static_folder=str(folder),
                          static_url_path="/kser-static")
    app.register_blueprint(blueprint)


def create_app(registry: OperationRegistry, config: dict[str, Any] | None = None) -> Flask:
    """A Flask app serving ``registry``'s REST API (and nothing else of the host's)."""
    app = Flask("kser")
    app.config.update(config or {})
    init_app(app, registry)
    return app
