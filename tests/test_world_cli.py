import json
import subprocess
import sys

import numpy as np

from editloop.cli.main import main
from editloop.world import Scene, render
from editloop.world.io import load_png

SCENE = ('{"background": "white", "objects": [{"shape": "circle", "color": "red", "size": "large", '
         '"position": "top left"}]}')


def test_sample_writes_pngs_and_scenes_jsonl(tmp_path):
    assert main(["world", "sample", "--seed", "5", "--n", "6", "--out", str(tmp_path), "--clean"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "scenes.jsonl").read_text().splitlines()]
    assert [x["file"] for x in lines] == [f"{i:04d}.png" for i in range(6)]
    for rec in lines:
        scene = Scene.from_dict(rec["scene"])
        assert rec["caption"] == scene.caption
        assert np.array_equal(load_png(tmp_path / rec["file"]), render(scene))


def test_render_judge_caption_through_the_console_script(tmp_path):
    exe = [sys.executable, "-m", "editloop.cli.main"]
    out = tmp_path / "x.png"
    subprocess.run([*exe, "world", "render", SCENE, "--out", str(out)], check=True)
    judged = subprocess.run([*exe, "world", "judge", str(out), str(out)], check=True,
                            capture_output=True, text=True).stdout.splitlines()
    assert [json.loads(x) for x in judged] == [json.loads(SCENE)] * 2
    cap = subprocess.run([*exe, "world", "caption", SCENE], check=True, capture_output=True, text=True)
    assert cap.stdout.strip() == "a large red circle at the top left on a white background"


def test_bad_scene_is_a_clear_error(capsys):
    assert main(["world", "caption", '{"background": "white", "objects": [{"shape": "hexagon", '
                 '"color": "red", "size": "large", "position": "top"}]}']) == 2
    assert "`shape` must be one of" in capsys.readouterr().err
