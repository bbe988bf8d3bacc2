"""Best/worst labelling against a real Label Studio: configs, push, simulated annotators, sync, crashes."""

import http.client
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import pytest
import requests
from conftest import free_port, start_worker
from label_studio_sdk.core.api_error import ApiError
from sqlalchemy import func, select

from annotation.client import connect, ensure_project
from annotation.configs import ProjectSpec
from annotation.links import LinkMaker, signature, webhook_token
from annotation.push import Target, push_candidate_sets, push_pairs
from annotation.server import LabelStudioInfo, info_path
from annotation.simulate import join, label_project
from annotation.sync import sync
from annotation.web import WebServer
from editloop import faults
from editloop.db import make_engine, make_sessionmaker, upgrade
from editloop.db.models import (
    CandidateItem,
    CandidateSet,
    Comparison,
    ComparisonPair,
    ImageRecord,
    LabelEvent,
    LabelTask,
    Preference,
)
from editloop.labels.results import InvalidLabel, parse_best_worst
from editloop.labels.simulated import render_candidate_sets, render_instruct_sets
from editloop.settings import Settings
from editloop.store import open_store
from editloop.world.annotators import SimulatedAnnotator, intended_scene
from editloop.world.io import from_png


@dataclass
class Env:
    settings: Settings
    sessions: object
    store: object
    ls: object
    info: LabelStudioInfo
    web: WebServer

    def target(self, overlap=2, batch_size=50, webhook=True):
        url = f"{self.settings.resolved_annotation_web_url()}/webhook" if webhook else None
        return Target(overlap, batch_size, url, webhook_token(self.settings), self.settings.annotation_project_prefix)


@pytest.fixture
def env(tmp_path, label_studio, postgres_url, monkeypatch):
    port = free_port()
    for key, value in {"STATE_DIR": str(tmp_path / "state"), "DATABASE_URL": postgres_url,
                       "ANNOTATION_WEB_PORT": str(port), "ANNOTATION_PROJECT_PREFIX": f"t-{uuid.uuid4().hex[:8]}",
                       "BROKER_URL": "redis://127.0.0.1:6379/15"}.items():
        monkeypatch.setenv(f"EDITLOOP_{key}", value)
    settings = Settings()
    upgrade(postgres_url)
    sessions = make_sessionmaker(make_engine(postgres_url))
    store = open_store(settings)
    label_studio.save(info_path(settings))  # what `editloop annotation up` leaves for the other commands
    web = WebServer(("127.0.0.1", port), settings, sessions, store)
    web.start_in_thread()
    yield Env(settings, sessions, store, connect(label_studio.url, label_studio.token), label_studio, web)
    web.shutdown()
    web.server_close()


def test_label_configs_are_validated_by_label_studio(label_studio):
    ls = connect(label_studio.url, label_studio.token)
    prefix = f"cfg-{uuid.uuid4().hex[:6]}"
    for spec in (ProjectSpec("t2i", 2, prefix), ProjectSpec("t2i", 12, prefix), ProjectSpec("edit", 4, prefix),
                 ProjectSpec("instruct", 3, prefix),
                 ProjectSpec("side_by_side", prefix=prefix), ProjectSpec("side_by_side_edit", prefix=prefix)):
        project_id = ensure_project(ls, spec, overlap=2)
        assert ensure_project(ls, spec, overlap=3) == project_id  # found again, not duplicated
        assert ls.projects.get(id=project_id).maximum_annotations == 3
    broken = ProjectSpec("t2i", 3, prefix).label_config().replace('toName="img1"', 'toName="nowhere"', 1)
    with pytest.raises(ApiError) as err:
        ls.projects.create(title=f"{prefix} broken", label_config=broken)
    assert err.value.status_code == 400
    with pytest.raises(ValueError, match="`n` must be in 2..16, got 17"):
        ProjectSpec("t2i", 17).label_config()


def test_push_is_idempotent_and_adopts_tasks_of_a_push_that_crashed(env):
    ids = render_candidate_sets(env.sessions, env.store, 7, n_images=3)
    target = env.target(batch_size=3, webhook=False)
    link = LinkMaker(env.settings, env.store)
    faults.arm("push.imported", at=2)  # Label Studio holds the second batch, the database does not
    try:
        with pytest.raises(faults.InjectedCrash):
            push_candidate_sets(env.ls, env.sessions, env.store, link, target)
    finally:
        faults.disarm()
    again = push_candidate_sets(env.ls, env.sessions, env.store, link, target)
    assert (again.adopted, again.created, again.already) == (3, 1, 6)
    third = push_candidate_sets(env.ls, env.sessions, env.store, link, target)
    assert (third.adopted, third.created, third.already) == (0, 0, 7)
    project_id = third.projects[next(iter(third.projects))]
    tasks = list(env.ls.tasks.list(project=project_id, fields="all"))
    assert sorted(t.data["external_key"] for t in tasks) == sorted(f"cs:{i}" for i in ids)
    image = requests.get(tasks[0].data["img1"], timeout=10)  # a browser can load it through the signed link
    assert image.status_code == 200 and image.content[:4] == b"\x89PNG"


def test_signed_links_and_the_webhook_receiver_refuse_bad_requests(env):
    key = env.store.put(b"\x89PNG fake")
    link = LinkMaker(env.settings, env.store)(key)
    assert requests.get(link, timeout=5).content == b"\x89PNG fake"
    base = env.settings.resolved_annotation_web_url()
    assert requests.get(link.replace("sig=", "sig=0"), timeout=5).status_code == 403
    expired = f"{base}/blobs/{key}?exp=1000&sig={signature(env.web.secret, key, 1000)}"
    assert requests.get(expired, timeout=5).text == "link expired"
    assert requests.get(f"{base}/blobs/sha256:{'0' * 64}?exp=9999999999&sig=x", timeout=5).status_code == 403
    huge = requests.get(f"{base}/blobs/{key}?exp={'9' * 5000}&sig=x", timeout=5)  # int() would raise on it
    assert huge.status_code == 403 and huge.text.startswith("`exp` must be a unix time (1 to 12 digits)")
    for length in ("abc", "-1", "99999999999"):  # refused at once: nothing read, no thread held
        conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=5)
        conn.putrequest("POST", "/webhook")
        conn.putheader("X-Editloop-Token", webhook_token(env.settings))
        conn.putheader("Content-Length", length)
        conn.endheaders()
        reply = conn.getresponse()
        assert reply.status == 400 and b"`Content-Length` must be a byte count" in reply.read(), length
        conn.close()
    headers = {"X-Editloop-Token": webhook_token(env.settings)}
    assert requests.post(f"{base}/webhook", data="{}", timeout=5).status_code == 401
    bad = requests.post(f"{base}/webhook", data="{not json", headers=headers, timeout=5)
    assert bad.status_code == 400 and "not JSON" in bad.text
    wrong = requests.post(f"{base}/webhook", json={"action": "ANNOTATION_CREATED", "annotation": {"id": 1}},
                          headers=headers, timeout=5)
    assert wrong.status_code == 400 and "`annotation.task`" in wrong.text
    body = {"action": "ANNOTATION_CREATED", "annotation": {"id": 5, "task": 6, "result": [],
                                                           "updated_at": "2026-01-01T00:00:00Z"}}
    assert requests.post(f"{base}/webhook", json=body, headers=headers, timeout=5).json() == {"new_events": 1}
    assert requests.post(f"{base}/webhook", json=body, headers=headers, timeout=5).json() == {"new_events": 0}


def ls_annotations(env, project_ids):
    out = {}
    for project_id in project_ids:
        for task in env.ls.tasks.list(project=project_id, fields="all"):
            for a in task.annotations or []:
                out[a["id"]] = (task.id, a)
    return out


def assert_database_matches_label_studio(env, project_ids, deleted_ids):
    live = ls_annotations(env, project_ids)
    with env.sessions() as s:
        prefs = {p.ls_annotation_id: p for p in s.scalars(select(Preference))}
        tasks = {t.ls_task_id: t for t in s.scalars(select(LabelTask))}
        assert s.scalar(select(func.count()).select_from(Preference)) == len(prefs)  # one row per annotation
        assert set(prefs) == set(live) | set(deleted_ids)
        for ann_id, (task_id, a) in live.items():
            row = prefs[ann_id]
            items = {i.position + 1: i.image_id for i in s.scalars(
                select(CandidateItem).where(CandidateItem.candidate_set_id == tasks[task_id].candidate_set_id))}
            try:
                choice = parse_best_worst(a["result"], len(items), a.get("was_cancelled", False))
                assert row.status == "valid"
                assert (row.best_image_id, row.worst_image_id) == (items[choice.best], items[choice.worst])
            except InvalidLabel as exc:
                assert row.status == "invalid" and row.reason == str(exc)
            assert row.annotator == f"ls:{a['completed_by']}"
        for ann_id in deleted_ids:
            assert prefs[ann_id].status == "retired"
    return live


def test_fifty_sets_overlap_two_labelled_through_the_api_synced_exactly_once_despite_crashes(env, capsys):
    render_candidate_sets(env.sessions, env.store, 50, n_images=4, seed=1)
    pushed = push_candidate_sets(env.ls, env.sessions, env.store, LinkMaker(env.settings, env.store), env.target())
    assert pushed.created == 50
    project_ids = list(pushed.projects.values())
    labellers = [join(env.info.url, SimulatedAnnotator(f"ann-{env.settings.annotation_project_prefix}-{i}", t,
                                                       seed=i)) for i, t in enumerate((0.25, 1.0, 0.5))]
    counts = label_project(env.info.url, labellers, project_ids[0])
    assert sum(counts.values()) == 100 and len(counts) == 3  # the stream honours overlap 2
    # Webhooks were live while labelling: the receiver recorded events without applying them.
    deadline, webhook_events = time.time() + 30, 0
    while time.time() < deadline and webhook_events < 100:
        time.sleep(0.2)
        with env.sessions() as s:
            query = select(func.count()).select_from(LabelEvent).where(LabelEvent.source == "webhook")
            webhook_events = s.scalar(query)
    assert webhook_events == 100
    # Now webhooks go missing (the hook is removed): updates, deletions and bad labels only the poller sees.
    for hook in env.ls.webhooks.list(project=project_ids[0]):
        env.ls.webhooks.delete(id=hook.id)
    live = ls_annotations(env, project_ids)
    ids = sorted(live)
    for ann_id in ids[:10]:
        env.ls.annotations.update(id=ann_id, result=[
            {"from_name": "best", "to_name": "img1", "type": "choices", "value": {"choices": ["4"]}},
            {"from_name": "worst", "to_name": "img1", "type": "choices", "value": {"choices": ["1"]}}])
    deleted = ids[10:16]
    for ann_id in deleted:
        env.ls.annotations.delete(id=ann_id)
    task_ids = sorted({task_id for task_id, _ in live.values()})
    for task_id, result in zip(task_ids[:3], [
        [{"from_name": "best", "to_name": "img1", "type": "choices", "value": {"choices": ["2"]}},
         {"from_name": "worst", "to_name": "img1", "type": "choices", "value": {"choices": ["2"]}}],
        [{"from_name": "best", "to_name": "img1", "type": "choices", "value": {"choices": ["2"]}}],
        [{"from_name": "best", "to_name": "img1", "type": "choices", "value": {"choices": ["9"]}},
         {"from_name": "worst", "to_name": "img1", "type": "choices", "value": {"choices": ["1"]}}],
    ]):
        env.ls.annotations.create(id=task_id, result=result)
    # Kill the sync at every stage; each restart picks up where the committed state is.
    for stage, at in [("sync.observed", 1), ("sync.recorded", 1), ("sync.apply", 37), ("sync.before_commit", 1),
                      ("sync.after_commit", 1), ("sync.apply", 5)]:
        faults.arm(stage, at)
        try:
            with pytest.raises(faults.InjectedCrash):
                sync(env.ls, env.sessions)
        finally:
            faults.disarm()
    report = sync(env.ls, env.sessions)
    assert report.seen == 100 - len(deleted) + 3
    assert_database_matches_label_studio(env, project_ids, deleted)
    with env.sessions() as s:
        invalid = dict(s.execute(select(Preference.reason, func.count()).where(Preference.status == "invalid")
                                 .group_by(Preference.reason)).all())
    assert invalid == {"best equals worst (image 2)": 1, "missing answer: worst": 1,
                       "unknown image: best = '9' (the set has 4 images)": 1}
    assert sync(env.ls, env.sessions).recorded == 0  # in agreement: nothing more to do
    # The statistics command reads what was synced.
    from editloop.cli.main import main

    assert main(["annotation", "stats"]) == 0
    out = capsys.readouterr().out
    assert "labels by status: invalid 3, retired 6, valid 94" in out and "@annotators.editloop.local: " in out


def test_side_by_side_pairs_record_verdicts_from_the_model_under_tests_side(env):
    set_ids = render_candidate_sets(env.sessions, env.store, 12, n_images=2, seed=3)
    with env.sessions.begin() as s:
        for cs_id in set_ids:
            items = list(s.scalars(select(CandidateItem).where(CandidateItem.candidate_set_id == cs_id)))
            prompt_id = s.get(CandidateSet, cs_id).prompt_id
            s.add(ComparisonPair(prompt_id=prompt_id, a_image_id=items[0].image_id, b_image_id=items[1].image_id,
                                 a_label="model-a", b_label="model-b"))
    pushed = push_pairs(env.ls, env.sessions, env.store, LinkMaker(env.settings, env.store), env.target(overlap=1))
    assert pushed.created == 12
    with env.sessions() as s:
        swapped = [t.swapped for t in s.scalars(select(LabelTask))]
    assert 0 < sum(swapped) < 12  # the order is randomised per pair
    labeller = join(env.info.url, SimulatedAnnotator(f"sbs-{env.settings.annotation_project_prefix}", 0.25))
    worker = start_worker("cpu", "sbs")  # webhook -> receiver records -> enqueues -> a real worker applies
    try:
        label_project(env.info.url, [labeller], next(iter(pushed.projects.values())))
        deadline, comps = time.time() + 90, []
        while time.time() < deadline and len(comps) < 12:
            time.sleep(0.5)
            with env.sessions() as s:
                comps = list(s.scalars(select(Comparison)))
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert len(comps) == 12 and all(c.status == "valid" and c.verdict in ("good", "same", "bad") for c in comps)
    assert sync(env.ls, env.sessions).recorded == 0  # the webhooks missed nothing


def test_a_sync_killed_with_sigkill_loses_and_doubles_nothing(env):
    render_candidate_sets(env.sessions, env.store, 10, n_images=3, seed=2)
    pushed = push_candidate_sets(env.ls, env.sessions, env.store, LinkMaker(env.settings, env.store),
                                 env.target(overlap=1, webhook=False))
    labeller = join(env.info.url, SimulatedAnnotator(f"kill-{env.settings.annotation_project_prefix}", 0.5))
    label_project(env.info.url, [labeller], next(iter(pushed.projects.values())))
    cmd = [sys.executable, "-m", "editloop.cli.main", "annotation", "sync"]
    killed = subprocess.run(cmd, env={**os.environ, "EDITLOOP_FAULT": "sync.apply:6:kill"}, capture_output=True,
                            text=True, timeout=120)
    assert killed.returncode == -9
    with env.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Preference)) == 0  # the batch died before its commit
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "applied 10" in done.stdout
    assert_database_matches_label_studio(env, list(pushed.projects.values()), [])
    assert json.loads(info_path(env.settings).read_text())["url"] == env.info.url


# Images inside the labelling view (not the data manager's thumbnails) that loaded at their 64 px size.
COUNT_LOADED_IMAGES = """Array.from(document.querySelectorAll('.lsf-main-view img'))
  .filter(i => i.complete && i.naturalWidth === 64).length"""


def test_a_task_opens_in_the_labelling_view_with_its_images_rendered(env, tmp_path):
    from browser import Browser

    from annotation.server import login_session

    render_candidate_sets(env.sessions, env.store, 1, n_images=4, seed=5, kind="inpaint")
    pushed = push_candidate_sets(env.ls, env.sessions, env.store, LinkMaker(env.settings, env.store),
                                 env.target(webhook=False))
    project_id = next(iter(pushed.projects.values()))
    with env.sessions() as s:
        task_id = s.scalars(select(LabelTask.ls_task_id)).one()
    session = login_session(env.info.url, env.info.admin_email, env.info.admin_password)
    browser = Browser(free_port())
    try:
        for name in ("sessionid", "csrftoken"):
            browser.set_cookie(env.info.url, name, session.cookies[name])
        browser.open(f"{env.info.url}/projects/{project_id}/data?task={task_id}")
        browser.wait_for(f"({COUNT_LOADED_IMAGES}) >= 6", timeout=90)
        loaded = browser.evaluate(COUNT_LOADED_IMAGES)
        shot = browser.screenshot(tmp_path / "labelling-view.png")
        text = browser.evaluate("document.body.innerText")
    finally:
        browser.close()
    assert loaded == 6, f"{loaded} of 6 images rendered (4 candidates, the source and the mask overlay)"
    assert "Best image" in text and "Worst image" in text and "edited region" in text
    assert "issue loading URL" not in text
    assert len(shot) > 10_000


def test_a_feedback_candidate_reviewed_by_people_is_promoted_only_if_they_prefer_it(env, tmp_path, capsys):
    """A PeFL stage with `review="people"` writes its held-out pairs against the served model; they go to Label
    Studio as side-by-side tasks, an annotator answers, the sync records the verdicts, and `editloop models
    review` decides: the candidate waits until then, and is promoted only if the reviewers prefer it."""
    from editloop.cli.main import main
    from editloop.db.models import ModelVersion
    from editloop.labels.review import AWAITING, review_guard, review_verdicts
    from editloop.models.reward import save_reward, tiny_reward
    from editloop.registry import promote, register_candidate, store_model_dir
    from trainers.feedback.run import run_feedback_stage

    for kind in ("aesthetic", "alignment"):
        save_reward(tiny_reward(kind, seed=1), kind, tmp_path / kind, version=f"{kind}-test")
        with env.sessions.begin() as s:
            register_candidate(s, kind, kind, f"{kind}-test", store_model_dir(env.store, tmp_path / kind),
                               {"eval_score": 0.5}, {}, None)
            promote(s, kind, f"{kind}-test")
    config = {"steps": 2, "batch_size": 2, "adversarial": None, "eval": {"examples": 6, "review": "people"}}
    out = run_feedback_stage("pefl", uuid.uuid4().hex, env.sessions, env.store, env.settings, config)
    version = out["version"]
    assert not out["promoted"] and AWAITING in out["refused"] and len(out["review_pairs"]) == 6
    assert main(["models", "review", "editor", version]) == 1  # nothing labelled yet
    assert "0 side-by-side verdicts on its 6 review pairs; the review needs 6" in capsys.readouterr().out

    pushed = push_pairs(env.ls, env.sessions, env.store, LinkMaker(env.settings, env.store),
                        env.target(overlap=1, webhook=False))
    assert pushed.created == 6 and list(pushed.projects) == [f"{env.settings.annotation_project_prefix} side-by-side "
                                                             "edits (Good/Same/Bad)"]  # with source and region
    project_id = next(iter(pushed.projects.values()))
    for task in env.ls.tasks.list(project=project_id, fields="all"):  # the reviewer sees what was edited
        assert {"left", "right", "source_image", "mask_overlay"} <= set(task.data)
        assert requests.get(task.data["mask_overlay"], timeout=30).content[:4] == b"\x89PNG"
    labeller = join(env.info.url, SimulatedAnnotator(f"review-{env.settings.annotation_project_prefix}", 0.25))
    label_project(env.info.url, [labeller], project_id)
    assert sync(env.ls, env.sessions).applied.applied == 6
    with env.sessions() as s:
        review, pairs = review_verdicts(s, version)
    gsb = review.verdicts
    assert pairs == 6 and gsb.good + gsb.same + gsb.bad == 6 and review.pairs == gsb  # one reviewer: pair = verdict
    code = main(["models", "review", "editor", version])
    printed = capsys.readouterr().out
    assert f"good / same / bad {gsb.good} / {gsb.same} / {gsb.bad} on 6 pairs" in printed
    with env.sessions() as s:
        row = s.scalars(select(ModelVersion).where(ModelVersion.version == version)).one()
        guards = row.metrics["guard_failures"]
        assert row.metrics["review"]["by"] == "people" and not any(g.startswith(AWAITING) for g in guards)
        assert (review_guard(review) is None) == (not any("do not prefer it" in g for g in guards))
        assert (code == 0) == (row.status == "promoted") == (not guards)
    assert main(["models", "review", "editor", version, "--alpha", "1.5"]) == 2
    assert "`--alpha` must be in (0, 1), got 1.5" in capsys.readouterr().err
    assert main(["models", "review", "aesthetic", "aesthetic-test"]) == 2  # a version nobody reviewed
    assert "aesthetic aesthetic-test has no review pairs" in capsys.readouterr().err


class FlakyProxy:
    """A TCP proxy in front of Label Studio that goes down (drops every connection and refuses new ones) once it
    has forwarded `down_after` bytes from Label Studio, and comes back when told."""

    def __init__(self, upstream_port: int, down_after: int) -> None:
        import socket
        import threading

        self.upstream, self.down_after, self.forwarded = upstream_port, down_after, 0
        self.down = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src, dst, counted: bool) -> None:
        try:
            while not self.down.is_set() and (data := src.recv(65536)):
                if counted:
                    self.forwarded += len(data)
                    if self.forwarded > self.down_after:  # Label Studio "dies" mid-response
                        self.go_down()
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def go_down(self) -> None:
        self.down.set()
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass

    def come_back(self) -> None:
        self.down.clear()
        self.down_after = float("inf")


def test_label_studio_down_in_the_middle_of_a_sync_loses_and_doubles_nothing(env):
    """Label Studio goes away while a sync pages through its tasks: the sync stops with one line naming Label
    Studio and the cause, records nothing (a half-read project would look like deleted annotations), and the
    next sync, with Label Studio back, applies every label exactly once."""
    render_candidate_sets(env.sessions, env.store, 12, n_images=3, seed=5)
    pushed = push_candidate_sets(env.ls, env.sessions, env.store, LinkMaker(env.settings, env.store),
                                 env.target(overlap=1, webhook=False))
    project_ids = list(pushed.projects.values())
    labeller = join(env.info.url, SimulatedAnnotator(f"flaky-{env.settings.annotation_project_prefix}", 0.5))
    label_project(env.info.url, [labeller], project_ids[0], limit=6)
    cmd = [sys.executable, "-m", "editloop.cli.main", "annotation", "sync"]
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=120).returncode == 0  # 6 applied
    label_project(env.info.url, [labeller], project_ids[0])  # the other 6 wait in Label Studio
    upstream = int(env.info.url.rsplit(":", 1)[1])
    proxy = FlakyProxy(upstream, down_after=2000)  # a few KB into the task list
    info = LabelStudioInfo(**{**env.info.__dict__, "url": f"http://127.0.0.1:{proxy.port}"})
    info.save(info_path(env.settings))
    try:
        down = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert down.returncode == 1 and "Traceback" not in down.stderr, down.stderr
        assert "Label Studio" in down.stderr and "did not answer" in down.stderr, down.stderr
        with env.sessions() as s:  # the 6 synced labels are untouched, none retired, none added
            rows = s.scalars(select(Preference)).all()
            assert len(rows) == 6 and all(r.status == "valid" for r in rows)
        proxy.come_back()
        back = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert back.returncode == 0, back.stderr
        assert "applied 6" in back.stdout
        assert_database_matches_label_studio(env, project_ids, [])
    finally:
        env.info.save(info_path(env.settings))
        proxy.go_down()
        proxy.listener.close()


def test_instruction_edit_sets_are_labelled_in_their_own_project_by_what_the_instruction_asks(env):
    """Instruction-edit sets (source + instruction, no mask) go to a project that shows the source; a simulated
    annotator reads the instruction against the source; the labels sync to the sets and only the instruction
    editor's DPO reads them (not the preference rewards)."""
    from trainers.align.dpo import instruct_labels
    from trainers.reward.data import reward_labels

    ids = render_instruct_sets(env.sessions, env.store, 6, n_images=3, seed=4)
    pushed = push_candidate_sets(env.ls, env.sessions, env.store, LinkMaker(env.settings, env.store),
                                 env.target(overlap=1, webhook=False))
    prefix = env.settings.annotation_project_prefix
    assert pushed.created == 6 and list(pushed.projects) == [f"{prefix} best/worst instruct x3"]
    project_id = pushed.projects[f"{prefix} best/worst instruct x3"]
    tasks = list(env.ls.tasks.list(project=project_id, fields="all"))
    assert all("source_image" in t.data and "mask_overlay" not in t.data for t in tasks)
    labeller = join(env.info.url, SimulatedAnnotator(f"instr-{prefix}", 0.001, seed=1))  # picks its argmax
    assert sum(label_project(env.info.url, [labeller], project_id).values()) == 6
    assert sync(env.ls, env.sessions).recorded == 6
    with env.sessions() as s:
        labels = instruct_labels(s)
        assert sorted(p.candidate_set_id for p in labels) == ids and not s.scalars(reward_labels()).all()
        for label in labels:
            cs = s.get(CandidateSet, label.candidate_set_id)
            source = from_png(env.store.get(s.get(ImageRecord, cs.source_image_id).blob_key))
            intended = intended_scene(cs.prompt.text, source)
            assert intended is not None  # the instruction applies to the source the task shows
            images = [from_png(env.store.get(item.image.blob_key)) for item in cs.items]
            u = dict(zip((item.image_id for item in cs.items), labeller.annotator.utilities(images, intended)))
            assert u[label.best_image_id] >= max(u.values()) - 0.01, cs.prompt.text  # its argmax (up to a near-tie)
