"""OpenPose maps without OpenPose: mediapipe's bundled pose / hand / face landmark models (its legacy solutions
API, model_complexity 1 — the models inside the mediapipe 0.10.14 wheel, so nothing is downloaded) give the
landmarks; they are converted to OpenPose's 18-keypoint body (COCO order), 21-point hands and 70-point face,
and drawn the way the openpose ControlNets were trained (black canvas, the 18 standard limb colours at 60 %,
keypoints as full-colour dots; hands as rainbow edges with blue dots; face as white dots).

Poses travel as OpenPose JSON ({"people": [{"pose_keypoints_2d": [x, y, c] * 18, ...}], "canvas_width",
"canvas_height"}, pixels; a missing keypoint is 0, 0, 0), which the pose editor loads and saves.
"""
from __future__ import annotations

import colorsys
import json
import math
import threading
from dataclasses import dataclass, field

import cv2
import numpy as np

from webui.core.errors import InvalidField, StudioError

BODY_NAMES = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
              "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
              "right_eye", "left_eye", "right_ear", "left_ear")
# The OpenPose limb table (1-based keypoint pairs) and its 18 colours (RGB), as the openpose models saw them.
LIMBS = ((2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
         (2, 1), (1, 15), (15, 17), (1, 16), (16, 18))
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
# mediapipe pose landmark index for each OpenPose body keypoint (the neck is the shoulders' midpoint).
_MP_BODY = (0, None, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7)
# mediapipe face-mesh indices for the 68 dlib-style OpenPose face points, then the two pupils (iris centres).
_MP_FACE = (127, 234, 93, 132, 58, 172, 136, 150, 152, 379, 365, 397, 288, 361, 323, 454, 356,   # jaw
            70, 63, 105, 66, 107, 336, 296, 334, 293, 300,                                        # brows
            168, 197, 5, 4, 75, 97, 2, 326, 305,                                                  # nose
            33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,                            # eyes
            61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87,  # lips
            468, 473)
VISIBILITY = 0.3         # a body landmark below this visibility is "not detected", as OpenPose would leave it out

Point = tuple[float, float] | None


@dataclass
class Person:
    """Keypoints in pixels (None = missing): body 18, hands 21 each or None, face 70 or None."""

    body: list[Point] = field(default_factory=lambda: [None] * 18)
    left_hand: list[Point] | None = None
    right_hand: list[Point] | None = None
    face: list[Point] | None = None


@dataclass
class Pose:
    people: list[Person]
    width: int
    height: int

    # -- OpenPose JSON ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        def flat(points: list[Point] | None):
            if points is None:
                return None
            out: list[float] = []
            for p in points:
                out += [round(float(p[0]), 2), round(float(p[1]), 2), 1.0] if p is not None else [0.0, 0.0, 0.0]
            return out

        return {"people": [{"pose_keypoints_2d": flat(p.body), "face_keypoints_2d": flat(p.face),
                            "hand_left_keypoints_2d": flat(p.left_hand),
                            "hand_right_keypoints_2d": flat(p.right_hand)} for p in self.people],
                "canvas_width": self.width, "canvas_height": self.height}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> Pose:
        """From OpenPose JSON (absolute pixels; values all <= 1 are taken as fractions of the canvas)."""
        try:
            width, height = int(data["canvas_width"]), int(data["canvas_height"])
            people_in = data["people"]
        except (KeyError, TypeError, ValueError):
            raise InvalidField("pose", "OpenPose JSON needs people, canvas_width and canvas_height") from None
        if width < 1 or height < 1 or not isinstance(people_in, list):
            raise InvalidField("pose", "canvas_width and canvas_height must be positive; people a list")

        def points(values, count: int, what: str) -> list[Point] | None:
            if values is None:
                return None
            if not isinstance(values, list) or len(values) != 3 * count:
                raise InvalidField("pose", f"{what} must hold {count} keypoints (x, y, confidence: {3 * count} "
                                           f"numbers)")
            arr = np.asarray(values, dtype=np.float64).reshape(count, 3)
            normalised = arr[:, :2].max(initial=0) <= 1.0 and arr[:, 2].any()
            scale = (width, height) if normalised else (1, 1)
            return [(float(x) * scale[0], float(y) * scale[1]) if c > 0 else None for x, y, c in arr]

        people = []
        for p in people_in:
            if not isinstance(p, dict):
                raise InvalidField("pose", "each person must be a JSON object")
            body = points(p.get("pose_keypoints_2d") or [0.0] * 54, 18, "pose_keypoints_2d")
            people.append(Person(body or [None] * 18, points(p.get("hand_left_keypoints_2d"), 21, "hand_left"),
                                 points(p.get("hand_right_keypoints_2d"), 21, "hand_right"),
                                 points(p.get("face_keypoints_2d"), 70, "face_keypoints_2d")))
        return cls(people, width, height)

    @classmethod
    def from_json(cls, text: str) -> Pose:
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as e:
            raise InvalidField("pose", f"not valid JSON: {e}") from None
        if isinstance(data, list) and data:      # the extension's editor saves a list of poses
            data = data[0]
        if not isinstance(data, dict):
            raise InvalidField("pose", "OpenPose JSON must be an object")
        return cls.from_dict(data)


def default_pose(width: int = 512, height: int = 512) -> Pose:
    """A person standing, facing the viewer, arms slightly out (the editor's starting pose)."""
    rel = ((0.5, 0.18), (0.5, 0.3), (0.4, 0.3), (0.35, 0.45), (0.33, 0.6), (0.6, 0.3), (0.65, 0.45), (0.67, 0.6),
           (0.44, 0.58), (0.44, 0.75), (0.44, 0.92), (0.56, 0.58), (0.56, 0.75), (0.56, 0.92), (0.47, 0.16),
           (0.53, 0.16), (0.44, 0.18), (0.56, 0.18))
    return Pose([Person([(x * width, y * height) for x, y in rel])], width, height)


# ------------------------------------------------------------------------------------------------------ drawing
def draw(pose: Pose, width: int | None = None, height: int | None = None, *, body: bool = True,
         hands: bool = True, face: bool = True) -> np.ndarray:
    """The OpenPose-style control map (HxWx3 uint8 RGB), scaled from the pose's canvas to width x height."""
    w, h = width or pose.width, height or pose.height
    sx, sy = w / pose.width, h / pose.height
    canvas = np.zeros((h, w, 3), np.uint8)
    unit = max(1.0, min(w, h) / 512)       # line widths as the 512 px maps the models were trained on

    def px(p):
        return int(round(p[0] * sx)), int(round(p[1] * sy))

    for person in pose.people:
        if body:
            stick = max(1, int(round(4 * unit)))
            for (a, b), colour in zip(LIMBS, COLOURS):
                pa, pb = person.body[a - 1], person.body[b - 1]
                if pa is None or pb is None:
                    continue
                (xa, ya), (xb, yb) = px(pa), px(pb)
                length = math.hypot(xa - xb, ya - yb)
                angle = math.degrees(math.atan2(ya - yb, xa - xb))
                poly = cv2.ellipse2Poly(((xa + xb) // 2, (ya + yb) // 2), (int(length / 2), stick), int(angle),
                                        0, 360, 1)
                cv2.fillConvexPoly(canvas, poly, [int(c * 0.6) for c in colour])
            for p, colour in zip(person.body, COLOURS):
                if p is not None:
                    cv2.circle(canvas, px(p), max(1, int(round(4 * unit))), colour, thickness=-1)
        if hands:
            for hand in (person.left_hand, person.right_hand):
                if hand is None:
                    continue
                for k, (a, b) in enumerate(HAND_EDGES):
                    if hand[a] is None or hand[b] is None:
                        continue
                    r, g, bl = colorsys.hsv_to_rgb(k / len(HAND_EDGES), 1.0, 1.0)
                    cv2.line(canvas, px(hand[a]), px(hand[b]), (int(r * 255), int(g * 255), int(bl * 255)),
                             max(1, int(round(2 * unit))))
                for p in hand:
                    if p is not None:
                        cv2.circle(canvas, px(p), max(1, int(round(4 * unit))), (0, 0, 255), thickness=-1)
        if face and person.face is not None:
            for p in person.face:
                if p is not None:
                    cv2.circle(canvas, px(p), max(1, int(round(3 * unit))), (255, 255, 255), thickness=-1)
    return canvas


# ---------------------------------------------------------------------------------------------------- detection
class PoseDetector:
    """mediapipe's pose, hands and face-mesh solutions, made once and reused (they are not thread-safe: one
    detection at a time)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._solutions: dict[str, object] = {}

    @staticmethod
    def available() -> str | None:
        """None when mediapipe can run here, else the reason."""
        import importlib.util
        if importlib.util.find_spec("mediapipe") is None:   # no import: mediapipe takes seconds to import
            return "mediapipe is not installed; pip install --no-deps mediapipe==0.10.14 (requirements-nodeps.txt)"
        return None

    def _get(self, name: str):
        if name not in self._solutions:
            import mediapipe as mp
            s = mp.solutions
            if name == "pose":
                self._solutions[name] = s.pose.Pose(static_image_mode=True, model_complexity=1)
            elif name == "hands":
                self._solutions[name] = s.hands.Hands(static_image_mode=True, max_num_hands=2, model_complexity=1)
            else:
                self._solutions[name] = s.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                                             refine_landmarks=True)
        return self._solutions[name]

    def detect(self, image: np.ndarray, *, hands: bool = True, face: bool = True) -> Pose:
        """The pose of the (most prominent) person in an HxWx3 uint8 RGB image."""
        reason = self.available()
        if reason:
            raise StudioError(f"openpose preprocessor unavailable: {reason}")
        img = np.ascontiguousarray(image[..., :3])
        h, w = img.shape[:2]
        with self._lock:
            body_result = self._get("pose").process(img)
            hand_result = self._get("hands").process(img) if hands else None
            face_result = self._get("face").process(img) if face else None
        if body_result.pose_landmarks is None:
            return Pose([], w, h)
        lm = body_result.pose_landmarks.landmark

        def seen(i: int) -> Point:
            p = lm[i]
            if p.visibility < VISIBILITY or not (-0.01 <= p.x <= 1.01 and -0.01 <= p.y <= 1.01):
                return None
            return (min(max(p.x, 0.0), 1.0) * w, min(max(p.y, 0.0), 1.0) * h)

        person = Person([seen(i) if i is not None else None for i in _MP_BODY])
        rs, ls = person.body[2], person.body[5]
        if rs is not None and ls is not None:
            person.body[1] = ((rs[0] + ls[0]) / 2, (rs[1] + ls[1]) / 2)
        if hand_result is not None and hand_result.multi_hand_landmarks:
            for hand in hand_result.multi_hand_landmarks:
                pts: list[Point] = [(p.x * w, p.y * h) for p in hand.landmark]
                # mediapipe's handedness assumes a mirrored selfie; the nearer body wrist decides instead
                wrist = pts[0]
                d_right = _dist(wrist, person.body[4])
                d_left = _dist(wrist, person.body[7])
                side = "right_hand" if d_right <= d_left else "left_hand"
                if getattr(person, side) is None:
                    setattr(person, side, pts)
        if face_result is not None and face_result.multi_face_landmarks:
            mesh = face_result.multi_face_landmarks[0].landmark
            person.face = [(mesh[i].x * w, mesh[i].y * h) if i < len(mesh) else None for i in _MP_FACE]
        return Pose([person], w, h)


def _dist(a: Point, b: Point) -> float:
    if a is None or b is None:
        return math.inf
    return math.hypot(a[0] - b[0], a[1] - b[1])
