"""A ``requests`` adapter that answers from a WSGI app in process (werkzeug's test
client): the API client and the ``kser ops`` commands are unit-tested against the real
Flask app without a socket (tests/integration runs them over HTTP)."""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import BaseAdapter
from werkzeug.test import Client as WerkzeugClient

#: the base URL the unit tests give the client
BASE = "http://kser.test"


class WSGIAdapter(BaseAdapter):
    def __init__(self, app: Any) -> None:
        super().__init__()
        self.client = WerkzeugClient(app)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        answer = self.client.open(request.path_url, method=request.method,
                                  headers=dict(request.headers), data=request.body)
        response = requests.Response()
        response.status_code = answer.status_code
        response.reason = answer.status.split(" ", 1)[-1]
        response.headers = requests.structures.CaseInsensitiveDict(answer.headers)
        response._content = answer.get_data()
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        pass


def session_for(app: Any) -> requests.Session:
    """A session whose requests to :data:`BASE` are answered by ``app``."""
    session = requests.Session()
    session.mount(BASE, WSGIAdapter(app))
    return session
