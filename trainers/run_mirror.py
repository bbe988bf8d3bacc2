"""A training run's directory mirrored into the blob store, so that no checkpoint lives only on one host.

While a run's task works, its files (<state_dir>/runs/<run id>: checkpoints, best weights, history) are pushed to
the blob store every `interval` seconds and once more when the task ends, however it ends; the run_files table
names the blob of each file. A worker on another host that takes the run over (the broker redelivers the task, or
the reaper re-queues it) first restores the files its own disk lacks or holds in an older version, then resumes
from the last checkpoint like a worker on the same host would. Checkpoints are replaced by rename (never half
written), so a push reads either the old or the new file whole; a superseded blob is deleted once no file names it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from editloop.db.models import RunFile
from editloop.store.base import BlobNotFound, BlobStore

log = logging.getLogger(__name__)
STATE_FILE = ".mirror.json"  # per file: the blob key and (size, mtime) this host last pushed or restored


def _local_state(run_dir: Path) -> dict[str, dict]:
    try:
        return json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _save_state(run_dir: Path, state: dict[str, dict]) -> None:
    tmp = run_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(run_dir / STATE_FILE)


def _mirrored_files(run_dir: Path) -> dict[str, Path]:
    """Every file under the run directory by its relative name (snapshot folders too), bar temporaries."""
    return {p.relative_to(run_dir).as_posix(): p for p in sorted(run_dir.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".tmp")}


def restore(sessions: sessionmaker[Session], store: BlobStore, run_id: str, run_dir: Path) -> list[str]:
    """Fetch the run's mirrored files this host lacks or holds in another version; returns their names."""
    with sessions() as s:
        rows = s.scalars(select(RunFile).where(RunFile.run_id == run_id)).all()
        files = {r.name: r.key for r in rows}
    if not files:
        return []
    run_dir.mkdir(parents=True, exist_ok=True)
    state = _local_state(run_dir)
    fetched = []
    for name, key in files.items():
        path = run_dir / name
        if path.is_file() and state.get(name, {}).get("key") == key:
            continue
        data = store.get(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".restore.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        st = path.stat()
        state[name] = {"key": key, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        fetched.append(name)
    _save_state(run_dir, state)
    return fetched


def push(sessions: sessionmaker[Session], store: BlobStore, run_id: str, run_dir: Path) -> list[str]:
    """Upload the run's files changed since the last push and name them in run_files; returns their names."""
    if not run_dir.is_dir():
        return []
    state = _local_state(run_dir)
    pushed = []
    for name, path in _mirrored_files(run_dir).items():
        try:
            st = path.stat()
            if state.get(name, {}).get("mtime_ns") == st.st_mtime_ns and state[name].get("size") == st.st_size:
                continue
            data = path.read_bytes()
        except FileNotFoundError:  # replaced or removed between the listing and the read: the next push has it
            continue
        key = store.put(data)
        old = _record(sessions, run_id, name, key, len(data))
        if old and old != key:
            _delete_unreferenced(sessions, store, old)
        state[name] = {"key": key, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        pushed.append(name)
    if pushed:
        _save_state(run_dir, state)
    return pushed


def _record(sessions: sessionmaker[Session], run_id: str, name: str, key: str, size: int) -> str | None:
    """Point run_files at `key`; returns the key it named before."""
    with sessions.begin() as s:
        row = s.get(RunFile, (run_id, name))
        if row is None:
            s.add(RunFile(run_id=run_id, name=name, key=key, size=size))
            return None
        old, row.key, row.size = row.key, key, size
        return old


def _delete_unreferenced(sessions: sessionmaker[Session], store: BlobStore, key: str) -> None:
    with sessions() as s:
        if s.scalars(select(RunFile).where(RunFile.key == key).limit(1)).first() is not None:
            return
    try:
        store.delete(key)
    except BlobNotFound:
        pass


def drop_snapshots(sessions: sessionmaker[Session], store: BlobStore, run_id: str) -> int:
    """Once the run has succeeded, forget its mirrored snapshot files (a full set of weights each, kept only so a
    resumed run can still choose among them): their rows and blobs go. Returns how many; 0 for an unfinished run."""
    from editloop.db.models import TrainingRun
    from trainers.feedback.selection import SNAPSHOTS

    with sessions.begin() as s:
        run = s.get(TrainingRun, run_id)
        if run is None or run.status != "succeeded":
            return 0
        rows = s.scalars(select(RunFile).where(RunFile.run_id == run_id,
                                               RunFile.name.startswith(f"{SNAPSHOTS}/"))).all()
        keys = [r.key for r in rows]
        for row in rows:
            s.delete(row)
    for key in keys:
        _delete_unreferenced(sessions, store, key)
    return len(keys)


@contextmanager
def mirrored(sessions: sessionmaker[Session], store: BlobStore, run_id: str, run_dir: Path,
             interval: float) -> Iterator[list[str]]:
    """Restore the run's files, push them every `interval` seconds while the block runs and once when it ends.
    Yields the names restored from the store (empty on the host that started the run)."""
    restored = restore(sessions, store, run_id, run_dir)
    if restored:
        log.info("run %s: restored %s from the blob store", run_id, ", ".join(restored))
    stop = threading.Event()
    lock = threading.Lock()

    def safe_push() -> None:
        with lock:
            try:
                push(sessions, store, run_id, run_dir)
            except Exception as exc:  # a store or database hiccup: the next push tries again
                log.warning("run %s: mirroring its checkpoints failed (%s); retrying in %.0fs", run_id,
                            type(exc).__name__, interval)

    def loop() -> None:
        while not stop.wait(interval):
            safe_push()

    thread = threading.Thread(target=loop, name=f"mirror-{run_id[:8]}", daemon=True)
    thread.start()
    try:
        yield restored
    finally:
        stop.set()
        thread.join(timeout=interval + 60)
        safe_push()
