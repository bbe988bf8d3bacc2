"""editloop's small HTTP endpoint beside Label Studio: signed image links and the webhook receiver.

    GET  /blobs/<key>?exp=<unix>&sig=<hmac>   the image (403 if the link is bad or expired)
    POST /webhook                             Label Studio's annotation webhooks
    GET  /health                              200 "ok"

The webhook receiver only records: it parses the payload into events, stores the new ones
(replays are no-ops by fingerprint) in one transaction, answers 200, and then asks a worker to
apply them (`editloop.cpu.apply_label_events`, by name). If that message is lost the events stay
pending and the next `editloop annotation sync` (or the reconciler) applies them.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from annotation.links import link_secret, verify, webhook_token
from editloop import queue
from editloop.labels.events import BadPayload, events_from_webhook, record_events
from editloop.quote import quoted
from editloop.settings import Settings
from editloop.store.base import BlobNotFound, BlobStore

log = logging.getLogger("editloop.annotation.web")
APPLY_TASK = queue.APPLY_LABEL_EVENTS
MAX_BODY = 8 * 1024 * 1024


class Enqueuer:
    """Sends the apply task by name (no import of the trainers app); failures are logged, not raised."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._app = None

    def __call__(self) -> bool:
        try:
            if self._app is None:
                from celery import Celery

                self._app = Celery("editloop-annotation", broker=self.settings.resolved_broker_url())
                self._app.conf.broker_connection_retry_on_startup = True
            self._app.send_task(APPLY_TASK, queue="cpu")
            return True
        except Exception as exc:  # the events are stored; a later sync applies them
            log.warning("could not enqueue %s (%s); events stay pending until the next sync", APPLY_TASK, exc)
            return False


def record_webhook(sessions: sessionmaker[Session], body: object) -> int:
    """Store the events of one delivery; returns how many were new. Raises BadPayload."""
    events = events_from_webhook(body)
    for attempt in range(3):
        try:
            with sessions.begin() as session:
                return record_events(session, events, "webhook")
        except IntegrityError:  # the same delivery, concurrently: the other one stored it
            if attempt == 2:
                raise
    return 0


class Handler(BaseHTTPRequestHandler):
    server: WebServer

    def log_message(self, fmt: str, *args: object) -> None:
        log.debug(fmt, *args)

    def _reply(self, status: int, body: bytes | str, content_type: str = "text/plain; charset=utf-8") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if content_type == "image/png":
            self.send_header("Cache-Control", "private, max-age=3600")
            self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # http.server's name
        url = urlparse(self.path)
        if url.path == "/health":
            return self._reply(HTTPStatus.OK, "ok")
        if not url.path.startswith("/blobs/"):
            return self._reply(HTTPStatus.NOT_FOUND, "not found")
        key = url.path.removeprefix("/blobs/")
        query = parse_qs(url.query)
        why = verify(self.server.secret, key, query.get("exp", [""])[0], query.get("sig", [""])[0])
        if why:
            return self._reply(HTTPStatus.FORBIDDEN, why)
        try:
            data = self.server.store.get(key)
        except BlobNotFound:
            return self._reply(HTTPStatus.NOT_FOUND, f"no blob {key}")
        return self._reply(HTTPStatus.OK, data, "image/png")

    def do_POST(self) -> None:
        if urlparse(self.path).path != "/webhook":
            return self._reply(HTTPStatus.NOT_FOUND, "not found")
        token = self.headers.get("X-Editloop-Token", "")
        if not hmac.compare_digest(token, self.server.webhook_token):
            return self._reply(HTTPStatus.UNAUTHORIZED, "missing or wrong X-Editloop-Token")
        raw_length = self.headers.get("Content-Length") or "0"
        if not re.fullmatch(r"[0-9]{1,10}", raw_length.strip()):  # "abc", "-1", a huge number: refused, not read
            return self._reply(HTTPStatus.BAD_REQUEST, f"`Content-Length` must be a byte count, got "
                                                       f"{quoted(raw_length, 20)}")
        length = int(raw_length)
        if length > MAX_BODY:
            return self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length) or b"null")
            new = record_webhook(self.server.sessions, body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return self._reply(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}")
        except BadPayload as exc:
            log.warning("rejected webhook: %s", exc)
            return self._reply(HTTPStatus.BAD_REQUEST, str(exc))
        self._reply(HTTPStatus.OK, json.dumps({"new_events": new}), "application/json")
        if new:
            self.server.enqueue()


class WebServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], settings: Settings, sessions: sessionmaker[Session],
                 store: BlobStore, enqueue: Enqueuer | None = None) -> None:
        super().__init__(address, Handler)
        self.sessions, self.store = sessions, store
        self.secret = link_secret(settings)
        self.webhook_token = webhook_token(settings)
        self.enqueue = enqueue or Enqueuer(settings)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="annotation-web", daemon=True)
        thread.start()
        return thread


def make_server(settings: Settings, port: int | None = None, host: str = "127.0.0.1") -> WebServer:
    from editloop.state import open_state

    return WebServer((host, settings.annotation_web_port if port is None else port), settings,
                     *open_state(settings))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m annotation.web", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None,
                        help="port (default EDITLOOP_ANNOTATION_WEB_PORT); 0 = any free port")
    return parser


def main(argv: list[str] | None = None) -> None:
    """`python -m annotation.web [--host H] [--port P]`: serve until SIGTERM (started by `editloop up` or
    `editloop annotation up`)."""
    import signal

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    server = make_server(Settings(), args.port, args.host)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"READY annotation-web {args.host}:{server.port}", flush=True)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
