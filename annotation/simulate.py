"""Simulated annotators that label through Label Studio's API, the path a person's browser takes.

Each one signs up through the signup form, logs in, takes a personal access token, asks the
project's labelling stream for its next task (GET /api/projects/<id>/next, which honours the
overlap), loads the task's images through their signed links, decides with its hidden Shapes
World utility (editloop.world.annotators) and submits the annotation as itself.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import requests
from label_studio_sdk import LabelStudio

from annotation.client import connect, retrying
from annotation.server import personal_access_token, signup
from editloop.world.annotators import SimulatedAnnotator, intended_scene
from editloop.world.io import from_png
from editloop.world.scene import Scene

log = logging.getLogger("editloop.annotation.simulate")
SAME_MARGIN = 0.1  # utility gap under which a side-by-side answer is "Same"


@dataclass
class Labeller:
    """One simulated person with a Label Studio account."""

    annotator: SimulatedAnnotator
    email: str
    ls: LabelStudio
    http: requests.Session
    user_id: int


def join(url: str, annotator: SimulatedAnnotator, password: str = "editloop-sim-annotator") -> Labeller:
    email = f"{annotator.name.lower()}@annotators.editloop.local"
    signup(url, email, password)
    token = personal_access_token(url, email, password)
    access = requests.post(f"{url}/api/token/refresh/", json={"refresh": token}, timeout=30)
    access.raise_for_status()
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {access.json()['access']}"
    ls = connect(url, token)
    user_id = retrying(lambda: ls.users.whoami().id, "whoami")
    return Labeller(annotator, email, ls, http, user_id)


def next_task(url: str, labeller: Labeller, project_id: int) -> dict | None:
    resp = labeller.http.get(f"{url}/api/projects/{project_id}/next", timeout=60)
    if resp.status_code == 404:
        return None
    resp.raise_for_status()
    return resp.json()


def _load(http: requests.Session, link: str) -> np.ndarray:
    resp = requests.get(link, timeout=30)  # signed links need no credentials, like an <img> tag
    resp.raise_for_status()
    return from_png(resp.content, "task image", size=None)


def _intended(labeller: Labeller, data: dict) -> Scene | None:
    """The scene the task asks for: its caption's, or its source's with the instruction done to it."""
    prompt = data.get("prompt", "")
    scene = intended_scene(prompt)  # a caption: the source is not needed
    if scene is None and "source_image" in data:
        scene = intended_scene(prompt, _load(labeller.http, data["source_image"]))
    return scene


def best_worst_result(labeller: Labeller, data: dict) -> list[dict]:
    names = sorted((k for k in data if k.startswith("img") and k[3:].isdigit()), key=lambda k: int(k[3:]))
    images = [_load(labeller.http, data[k]) for k in names]
    best, worst = labeller.annotator.best_worst(images, _intended(labeller, data))
    return [{"from_name": name, "to_name": "img1", "type": "choices", "value": {"choices": [str(pos + 1)]}}
            for name, pos in (("best", best), ("worst", worst))]


def side_by_side_result(labeller: Labeller, data: dict) -> list[dict]:
    left, right = (_load(labeller.http, data[k]) for k in ("left", "right"))
    u_left, u_right = labeller.annotator.utilities([left, right], _intended(labeller, data))
    if abs(u_left - u_right) < SAME_MARGIN:
        verdict = "Same"
    else:
        verdict = "Left" if labeller.annotator.prefers(u_left, u_right) else "Right"
    return [{"from_name": "verdict", "to_name": "left", "type": "choices", "value": {"choices": [verdict]}}]


def label_project(url: str, labellers: list[Labeller], project_id: int, limit: int | None = None,
                  progress: Callable[[int], None] | None = None) -> Counter[str]:
    """Round-robin over the labellers until the stream has nothing left for any of them; per-email counts."""
    done: Counter[str] = Counter()
    active = list(labellers)
    while active and (limit is None or sum(done.values()) < limit):
        for labeller in list(active):
            task = next_task(url, labeller, project_id)
            if task is None:
                active.remove(labeller)
                continue
            data = task["data"]
            result = side_by_side_result(labeller, data) if "left" in data else best_worst_result(labeller, data)
            retrying(lambda t=task, r=result, lab=labeller: lab.ls.annotations.create(id=t["id"], result=r),
                     f"submit annotation for task {task['id']}")
            done[labeller.email] += 1
            if progress is not None:
                progress(1)
    return done
