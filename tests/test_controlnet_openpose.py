"""OpenPose fully offline: mediapipe 0.10.14's bundled models find the person in photos that scikit-image ships
(its astronaut portrait and the cameraman), the keypoints land where the body is, the map is drawn in OpenPose's
colours, and an edited pose survives a JSON round trip."""
from __future__ import annotations

import json

import numpy as np
import pytest

from webui.engine import openpose as op

mp = pytest.importorskip("mediapipe", reason="mediapipe==0.10.14 (requirements-nodeps.txt) is not installed")
skdata = pytest.importorskip("skimage.data", reason="scikit-image (photos of people for tests) is not installed")


@pytest.fixture(scope="module")
def detector():
    return op.PoseDetector()


def named(person: op.Person) -> dict:
    return dict(zip(op.BODY_NAMES, person.body))


def test_astronaut_head_shoulders_face(detector):
    image = skdata.astronaut()                 # 512x512, Eileen Collins, head to waist
    pose = detector.detect(image, hands=True, face=True)
    assert len(pose.people) == 1
    p = pose.people[0]
    k = named(p)
    for name in ("nose", "neck", "right_shoulder", "left_shoulder", "right_eye", "left_eye", "right_ear", "left_ear"):
        assert k[name] is not None, name
    # the face is in the upper half, between the shoulders; the shoulders below the eyes
    nose = k["nose"]
    assert 150 < nose[0] < 300 and 80 < nose[1] < 200
    assert k["right_shoulder"][0] < nose[0] < k["left_shoulder"][0]     # the subject's right is the image's left
    assert k["neck"][1] > k["right_eye"][1] and k["right_shoulder"][1] > nose[1]
    assert p.face is not None and sum(pt is not None for pt in p.face) == 70
    face = np.array(p.face)
    assert abs(face[:, 0].mean() - nose[0]) < 40 and abs(face[:, 1].mean() - nose[1]) < 60


def test_cameraman_head_above_hips(detector):
    image = np.repeat(skdata.camera()[:, :, None], 3, axis=2)      # a man standing at a tripod, to the thighs
    pose = detector.detect(image, hands=False, face=False)
    k = named(pose.people[0])
    for name in ("nose", "neck", "right_hip", "left_hip", "right_shoulder"):
        assert k[name] is not None, name
    hips_y = (k["right_hip"][1] + k["left_hip"][1]) / 2
    assert k["nose"][1] < k["neck"][1] < hips_y
    assert hips_y - k["nose"][1] > 100                 # a body's length apart, not noise


def test_map_uses_openpose_colours(detector):
    pose = detector.detect(skdata.astronaut(), hands=False, face=False)
    canvas = op.draw(pose, body=True, hands=False, face=False)
    assert canvas.shape == (512, 512, 3)
    p = pose.people[0]
    for i, pt in enumerate(p.body):
        if pt is None:
            continue
        x, y = int(round(pt[0])), int(round(pt[1]))
        # each keypoint is a dot of its own colour (later dots may cover the centre of close ones)
        patch = canvas[max(0, y - 1):y + 2, max(0, x - 1):x + 2].reshape(-1, 3)
        assert any(tuple(c) == op.COLOURS[i] for c in patch) or i in (14, 15, 16, 17), (op.BODY_NAMES[i], patch[4])
    colours = {tuple(c) for c in canvas.reshape(-1, 3)}
    limb = tuple(int(c * 0.6) for c in op.COLOURS[0])      # neck-right shoulder limb at 60 %
    assert limb in colours
    assert (0, 0, 0) in colours and len(colours) < 200     # a black canvas with few flat colours


def test_openpose_preprocessor_json_round_trip_of_an_edited_pose(detector, tmp_path):
    from webui.engine import preprocessors as pre

    items = pre.registry(tmp_path, None)
    ctx = pre.Context(detector=detector)
    out = pre.run(items["openpose_full"], skdata.astronaut(), 512, -1, -1, ctx)
    assert out.shape == (512, 512, 3) and len(ctx.poses) == 1
    data = ctx.poses[0].to_dict()
    assert len(data["people"][0]["pose_keypoints_2d"]) == 54 and len(data["people"][0]["face_keypoints_2d"]) == 210
    # edit: move the nose 40 px to the left, save as JSON, load it back
    data["people"][0]["pose_keypoints_2d"][0] -= 40.0
    text = json.dumps(data)
    edited = op.Pose.from_json(text)
    assert json.loads(edited.to_json()) == json.loads(text)
    before, after = op.draw(ctx.poses[0], face=False, hands=False), op.draw(edited, face=False, hands=False)
    nx, ny = (int(round(v)) for v in edited.people[0].body[0])
    assert tuple(after[ny, nx]) == op.COLOURS[0] and tuple(before[ny, nx]) != op.COLOURS[0]


def test_pose_json_bad_input_and_default_pose():
    from webui.core.errors import InvalidField

    with pytest.raises(InvalidField, match="not valid JSON"):
        op.Pose.from_json("{nope")
    with pytest.raises(InvalidField, match="18 keypoints"):
        op.Pose.from_json(json.dumps({"people": [{"pose_keypoints_2d": [1, 2, 3]}], "canvas_width": 8,
                                      "canvas_height": 8}))
    pose = op.default_pose(256, 384)
    back = op.Pose.from_json(pose.to_json())
    assert back.width == 256 and back.height == 384
    assert all(a is not None and np.allclose(a, b, atol=0.01) for a, b in zip(back.people[0].body, pose.people[0].body))
    assert op.draw(back).shape == (384, 256, 3)
