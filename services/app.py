"""Build and run one service process: `editloop serve generator|editor ...`."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from editloop.settings import Settings
from editloop.state import open_state
from services.core.auth import TokenAuth
from services.core.batching import DynamicBatcher
from services.core.recorder import Recorder
from services.core.server import check_exposure, create_server, serve_until_stopped
from services.core.tls import server_credentials

log = logging.getLogger("editloop.services")


@dataclass
class Running:
    server: grpc.aio.Server
    port: int
    health: object
    batcher: DynamicBatcher
    watchers: tuple = ()  # registry watchers (hot reload of promoted versions)
    more_batchers: tuple[DynamicBatcher, ...] = ()  # the editor's instruction-editing batcher

    async def stop_batchers(self) -> None:
        for b in (self.batcher, *self.more_batchers):
            await b.stop()

    async def stop(self, grace: float = 5.0) -> None:
        for w in self.watchers:
            await w.stop()
        await self.server.stop(grace)
        await self.stop_batchers()


def token_auth(settings: Settings) -> TokenAuth:
    """The token interceptor, looking tokens up in the platform's database."""
    from editloop.auth import lookup
    from editloop.state import open_sessions

    sessions = open_sessions(settings)

    def find(token: str):
        with sessions() as s:
            return lookup(s, token)

    return TokenAuth(find, settings.auth_cache_s)


def make_recorder(settings: Settings) -> Recorder:
    return Recorder(*open_state(settings))


def register_served_model(recorder: Recorder, kind: str, core) -> None:
    """Put the served model in the registry (promoted if its kind has no promoted version yet)."""
    from sqlalchemy import select

    from editloop.db.models import ModelVersion
    from editloop.models.model_dir import public_config

    model_kind = "t2i" if kind == "generator" else "inpaint"
    with recorder.sessions.begin() as s:
        found = s.scalars(select(ModelVersion).where(ModelVersion.name == core.name,
                                                     ModelVersion.version == core.version)).one_or_none()
        if found is not None:
            return
        promoted = s.scalars(select(ModelVersion).where(ModelVersion.kind == model_kind,
                                                        ModelVersion.status == "promoted")).first()
        s.add(ModelVersion(kind=model_kind, name=core.name, version=core.version, checkpoint_key=str(core.path),
                           config=public_config(core.pipe.unet.config), status="candidate" if promoted else "promoted"))


@dataclass
class Parts:
    """What a service kind's builder makes: the model core, its batcher(s), the servicer and its registration."""

    core: object
    batcher: DynamicBatcher
    servicer: object
    add: object  # the generated add_<Service>Servicer_to_server
    service: str  # the full service name (health and reflection)
    watchers: list
    more: tuple[DynamicBatcher, ...] = ()


@dataclass(frozen=True)
class Batching:
    max_batch: int
    max_delay: float
    max_queue: int

    def batcher(self, name: str, run) -> DynamicBatcher:
        return DynamicBatcher(name, run, self.max_batch, self.max_delay, self.max_queue)


def reward_parts(settings: Settings, model: Path | None, batching: Batching, recorder, reward_kind: str | None
                 ) -> Parts:
    """A reward service: the promoted version of `reward_kind` (else its initial untrained one), hot-reloaded on
    promotion; or the model at `model`, not watched."""
    from services.gen.editloop.v1 import reward_pb2_grpc
    from services.reward.core import RewardCore
    from services.reward.reload import CoreHolder, reward_watcher, served_model_dir
    from services.reward.servicer import SERVICE, RewardServicer

    if model is not None:
        core = RewardCore(model, reward_kind, device=settings.device)
        holder = CoreHolder(core)
        watchers = []
    else:
        sessions, store = open_state(settings)
        version, path = served_model_dir(sessions, store, reward_kind, settings.state_dir / "models")
        try:
            core = RewardCore(path, reward_kind, device=settings.device)
        except (OSError, ValueError) as exc:  # a promoted checkpoint that does not load: serve, never exit
            log.error("promoted %s reward %s does not load (%s); serving the initial one", reward_kind, version, exc)
            from services.reward.reload import initial_model_dir

            version, path = initial_model_dir(reward_kind, settings.state_dir / "models")
            core = RewardCore(path, reward_kind, device=settings.device)
        core.version = version
        holder = CoreHolder(core)
        watchers = [reward_watcher(holder, reward_kind, settings, sessions, store, settings.reload_interval_s)]
    batcher = batching.batcher(f"reward-{core.kind}", holder.run)
    servicer = RewardServicer(holder, batcher, settings.reward_max_side, settings.reward_max_request_pixels)
    return Parts(core, batcher, servicer, reward_pb2_grpc.add_RewardServicer_to_server, SERVICE, watchers)


def generator_parts(settings: Settings, model: Path | None, batching: Batching, recorder, reward_kind: str | None
                    ) -> Parts:
    """The text-to-image generator at `model` (default: the base t2i model)."""
    from services.gen.editloop.v1 import generator_pb2_grpc
    from services.generator.core import GeneratorCore
    from services.generator.servicer import SERVICE, GeneratorServicer

    core = GeneratorCore(model or settings.generator_model, device=settings.device)
    batcher = batching.batcher("generator", core.run)
    return Parts(core, batcher, GeneratorServicer(core, batcher, recorder),
                 generator_pb2_grpc.add_GeneratorServicer_to_server, SERVICE, [])


def editor_parts(settings: Settings, model: Path | None, batching: Batching, recorder, reward_kind: str | None
                 ) -> Parts:
    """The editor: the promoted editor version (feedback rounds), else the base inpainting model (or `model`, not
    watched), and the promoted instruction editor, else the committed default; both hot-reloaded."""
    from services.core.reload import Holder
    from services.editor.core import EditorCore
    from services.editor.reload import editor_watchers, load_editor, load_instruct, resolve_editor, resolve_instruct
    from services.editor.servicer import SERVICE, EditorServicer
    from services.gen.editloop.v1 import editor_pb2_grpc

    sessions, store = open_state(settings)
    if model is None:
        core = load_editor(settings, *resolve_editor(settings, sessions, store))
    else:
        core = EditorCore(model, device=settings.device)
    found = resolve_instruct(settings, sessions, store)
    if found is None:
        log.warning("no instruction editor (none promoted, none at %s): Editor.Edit answers "
                    "FAILED_PRECONDITION until one is promoted", settings.instruct_model)
    editors, instructs = Holder(core), Holder(load_instruct(settings, *found) if found else None)
    batcher = batching.batcher("editor", editors.run)
    more = (batching.batcher("editor-instruct", instructs.run),)
    servicer = EditorServicer(editors, batcher, recorder, instructs, more[0])
    watchers = editor_watchers(editors, instructs, settings, sessions, store, watch_editor=model is None)
    return Parts(core, batcher, servicer, editor_pb2_grpc.add_EditorServicer_to_server, SERVICE, watchers, more)


BUILDERS = {"generator": generator_parts, "editor": editor_parts, "reward": reward_parts}  # a service kind each


async def start_service(kind: str, settings: Settings, model: Path | None = None, port: int = 0,
                        host: str = "127.0.0.1", max_batch: int = 16, max_delay: float = 0.005,
                        max_queue: int = 256, record: bool = True, reward_kind: str | None = None) -> Running:
    """Load the model, start the batcher and the server; returns the bound port. Exposure (a public address without
    auth) and TLS files are checked first, before any model loads."""
    if kind not in BUILDERS:
        raise ValueError(f"`kind` must be one of {list(BUILDERS)}, got {kind!r}")
    check_exposure(host, settings.auth, settings.tls_cert is not None, settings.insecure_public)
    credentials = server_credentials(settings)
    interceptors = [token_auth(settings)] if settings.auth == "required" else []
    recorder = make_recorder(settings) if record and kind != "reward" else None
    parts = BUILDERS[kind](settings, model, Batching(max_batch, max_delay, max_queue), recorder, reward_kind)
    core = parts.core
    if recorder is not None:
        register_served_model(recorder, kind, core)
    for b in (parts.batcher, *parts.more):
        b.start()
    server, bound, health = await create_server([(parts.add, parts.servicer, parts.service)], port, host,
                                                settings.max_message_mb, interceptors, credentials)
    log.info("%s serving %s (%s) on %s:%d", kind, core.name, core.version, host, bound)
    running = Running(server, bound, health, parts.batcher, watchers=tuple(parts.watchers), more_batchers=parts.more)
    record_served = _served_recorder(settings, kind, reward_kind, core, parts.watchers)
    record_served()
    for w in parts.watchers:
        w.on_swap = record_served
        w.start()
    return running


def _served_recorder(settings: Settings, kind: str, reward_kind: str | None, core, watchers: list):
    """A callable that writes <state_dir>/served/<part>.json: every model the service serves now, by label."""
    from services.core.reload import write_served

    part = f"reward-{reward_kind}" if kind == "reward" else kind
    label = {"generator": "t2i", "editor": "editor"}.get(kind, reward_kind)

    def record() -> None:
        served: dict = {}
        for w in watchers:
            current = w.holder.core
            if current is not None:
                name = {"editor": "editor", "instruct editor": "instruct"}.get(w.label, label)
                served[name] = {"name": getattr(current, "name", ""), "version": getattr(current, "version", "")}
        if label not in served:  # the generator, or a model given by --model: not watched
            served[label] = {"name": core.name, "version": core.version}
        try:
            write_served(settings.state_dir / "served" / f"{part}.json", served)
        except OSError as exc:
            log.warning("could not record the served models (%s)", exc)

    return record


def run_service(kind: str, settings: Settings, model: Path | None, port: int, host: str,
                metrics_port: int | None = None, grace: float = 30.0, reward_kind: str | None = None,
                **batching: float) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the schema check at start is not news

    async def main() -> None:
        if metrics_port is not None:
            from prometheus_client import start_http_server

            try:
                server, _ = start_http_server(metrics_port, addr=host)
            except OSError as exc:  # taken since it was chosen (two stacks picking free ports at once): any free one
                log.warning("metrics port %s is in use (%s); serving metrics on any free port", metrics_port, exc)
                server, _ = start_http_server(0, addr=host)
            print(f"METRICS {kind} {host}:{server.server_port}", flush=True)  # the real port, also for 0
        running = await start_service(kind, settings, model, port, host, reward_kind=reward_kind, **batching)
        print(f"READY {kind} {host}:{running.port}", flush=True)
        await serve_until_stopped(running.server, running.health, running.stop_batchers, grace, settings.drain_s)

    asyncio.run(main())
