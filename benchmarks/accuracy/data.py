"""Synthetic video QA: coloured shapes over a static textured background, multiple-choice questions.

Every clip is 16 frames of 112x112 at 2 fps: 8 Qwen temporal groups of 4x4 merged vision tokens (128 video tokens).
The options are listed in the question in a fixed order per question type, answers are drawn uniformly, so chance
is exactly 25 % and the answer is one letter token (A-D), as in MVBench.

Question types (where the answer lives in the video):
    background  the background colour (no scene cut)          every token, static (merged by Stage 1)
    cut         the background colour after a scene cut       the tokens after the cut: needs time order
    mover       the colour of the one moving shape            the mover's tokens; still shapes are distractors
    flash       the colour of a big shape shown for 2 frames  one temporal group's 4 tokens of 128

A scene has a textured static background (with a cut at a temporal-group boundary half the time), 0-2 still shapes
inside one 28-px cell each, and with probability 3/4 each a mover (3-5 px per frame along a row or column of cells)
and a flash (36-44 px over a 2x2 block of cells, visible in the 2 frames of one temporal group); every shape has a
different colour, so each is a distractor for the others' questions. A scene is a pure function of (seed, index).
Training draws from seed 1000 and asks every question a scene has; the held-out set is seed HELD_OUT_SEED, never
used in training, one question per clip, round-robin over the types.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAMES, SIZE, CELL, FPS = 16, 112, 28, 2.0
GRID = SIZE // CELL                      # 4x4 cells = 4x4 merged vision tokens per temporal group
HELD_OUT_SEED = 7
LETTERS = "ABCD"

BACKGROUNDS = {"red": (150, 35, 35), "green": (35, 125, 45), "blue": (35, 55, 155), "yellow": (165, 150, 35)}
SHAPE_COLOURS = {"white": (240, 240, 240), "black": (15, 15, 15), "pink": (250, 110, 200), "orange": (250, 135, 0)}
DIRECTIONS = ["left", "right", "up", "down"]


def _options(words) -> str:
    return " ".join(f"({L}) {w}" for L, w in zip(LETTERS, words))


QUESTIONS = {
    "background": f"What colour is the background? {_options(BACKGROUNDS)}.",
    "cut": f"The scene changes. What colour is the background after the change? {_options(BACKGROUNDS)}.",
    "mover": f"What colour is the shape that moves? {_options(SHAPE_COLOURS)}.",
    "flash": f"A big shape appears for a moment. What colour is it? {_options(SHAPE_COLOURS)}.",
}
TYPES = list(QUESTIONS)


@dataclass
class Sample:
    frames: np.ndarray      # uint8 [FRAMES, SIZE, SIZE, 3]
    qtype: str
    question: str
    answer: str             # "A".."D"
    fps: float = FPS


# ---------------------------------------------------------------- drawing

def _background(rng, colour) -> np.ndarray:
    """A static textured background [SIZE, SIZE, 3] float: the colour, soft blotches and fine grain."""
    base = np.array(BACKGROUNDS[colour], dtype=np.float32)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    tex = np.zeros((SIZE, SIZE), np.float32)
    for _ in range(3):
        fy, fx = rng.uniform(0.02, 0.12, 2)
        tex += np.sin(fy * yy + fx * xx + rng.uniform(0, 2 * np.pi))
    tex = tex / 3 * 22
    grain = rng.normal(0, 6, (SIZE, SIZE, 3)).astype(np.float32)
    return base[None, None] + tex[..., None] + grain


def _shape_mask(kind, size) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    c = size / 2
    if kind == "square":
        return np.ones((size, size), bool)
    if kind == "disc":
        return (yy - c) ** 2 + (xx - c) ** 2 <= c * c
    return np.abs(xx - c) <= yy / 2 + 0.5          # triangle, apex up


def _paste(frame, y, x, mask, colour):
    h, w = mask.shape
    y0, x0 = max(0, y), max(0, x)
    y1, x1 = min(SIZE, y + h), min(SIZE, x + w)
    if y1 <= y0 or x1 <= x0:
        return
    m = mask[y0 - y:y1 - y, x0 - x:x1 - x]
    frame[y0:y1, x0:x1][m] = colour


def _still_shape(rng, cell):
    """A shape inside one cell: (y, x, mask)."""
    size = int(rng.integers(16, 25))
    kind = rng.choice(["square", "disc", "triangle"])
    r, c = divmod(int(cell), GRID)
    y = r * CELL + int(rng.integers(0, CELL - size + 1))
    x = c * CELL + int(rng.integers(0, CELL - size + 1))
    return y, x, _shape_mask(kind, size)


def _render(bg, layers) -> np.ndarray:
    """layers: list of (frame_indices, y_per_frame, x_per_frame, mask, colour). Returns uint8 [FRAMES, H, W, 3]."""
    out = np.empty((FRAMES, SIZE, SIZE, 3), np.float32)
    for t in range(FRAMES):
        f = bg.copy()
        for frames, ys, xs, mask, colour in layers:
            if t in frames:
                _paste(f, ys[t], xs[t], mask, np.array(colour, np.float32))
        out[t] = f
    return np.clip(out, 0, 255).astype(np.uint8)


def _still(rng, cells, colours):
    layers = []
    for cell, colour in zip(cells, colours):
        y, x, m = _still_shape(rng, cell)
        layers.append((range(FRAMES), [y] * FRAMES, [x] * FRAMES, m, SHAPE_COLOURS[colour]))
    return layers


def _mover(rng, direction, colour):
    """A shape gliding 3-5 px per frame from a cell-aligned start; returns (layer, cells it crosses)."""
    size = int(rng.integers(20, 27))
    speed = float(rng.uniform(3.0, 5.0))
    travel = speed * (FRAMES - 1)
    lane = int(rng.integers(0, GRID)) * CELL + (CELL - size) // 2
    span = SIZE - size
    start_max = int(span - travel)
    start = int(rng.integers(0, max(0, start_max) + 1))
    start = (start // CELL) * CELL if rng.random() < 0.5 else start        # half the time cell-aligned
    along = np.array([start + speed * t for t in range(FRAMES)])
    if direction in ("left", "up"):
        along = span - along
    along = np.round(along).astype(int)
    lanes = [lane] * FRAMES
    ys, xs = (lanes, list(along)) if direction in ("left", "right") else (list(along), lanes)
    kind = rng.choice(["square", "disc"])
    cells = set()
    for t in range(FRAMES):
        for yy in (ys[t], ys[t] + size - 1):
            for xx in (xs[t], xs[t] + size - 1):
                cells.add((yy // CELL) * GRID + xx // CELL)
    return (range(FRAMES), ys, xs, _shape_mask(kind, size), SHAPE_COLOURS[colour]), cells


def _pick(rng, items, k, exclude=()):
    pool = [x for x in items if x not in exclude]
    return list(rng.choice(pool, size=k, replace=False))


# ---------------------------------------------------------------- scenes

@dataclass
class Scene:
    """One clip and every question that can be asked about it: [(qtype, question, answer option index)]."""
    frames: np.ndarray      # uint8 [FRAMES, SIZE, SIZE, 3]
    questions: list
    fps: float = FPS

    def samples(self, qtype: str | None = None) -> list:
        return [Sample(self.frames, t, q, LETTERS[a], self.fps) for t, q, a in self.questions
                if qtype in (None, t)]


def _flash_corner(rng, avoid):
    """An interior grid corner whose 2x2 block of cells avoids `avoid`: ((i, j), block cells)."""
    corners = []
    for i in range(1, GRID):
        for j in range(1, GRID):
            block = {(i - 1) * GRID + j - 1, (i - 1) * GRID + j, i * GRID + j - 1, i * GRID + j}
            if not block & avoid:
                corners.append(((i, j), block))
    return corners[int(rng.integers(0, len(corners)))]


MODES = ("easy", "solo", "full")


def make_scene(rng, require: str | None = None, mode: str = "full") -> Scene:
    """A random scene: a textured static background (a cut to another colour at a temporal-group boundary half the
    time), a mover and a flash with probability 3/4 each, 0-2 still shapes; every shape a different colour, so each
    is a distractor for the others' questions. `require` forces what a question type needs. Curriculum modes:
    "easy": no cut, mover or flash, 0-2 still shapes; "solo": no still shape and exactly one of mover and flash;
    "full": everything."""
    bg_names, shape_names = list(BACKGROUNDS), list(SHAPE_COLOURS)
    easy, solo = mode == "easy", mode == "solo"
    questions = []
    cut = not easy and require != "background" and (require == "cut" or rng.random() < 0.5)
    has_mover = not easy and (require == "mover" or (require != "flash" or not solo) and rng.random() < 0.75)
    has_flash = not easy and (require == "flash" or (require != "mover" or not solo) and rng.random() < 0.75)
    if solo and has_mover and has_flash:
        has_mover = rng.random() < 0.5
        has_flash = not has_mover
    if solo and not has_mover and not has_flash:
        has_mover = rng.random() < 0.5
        has_flash = not has_mover
    bg1 = int(rng.integers(0, 4))
    bg2 = int(rng.choice([b for b in range(4) if b != bg1])) if cut else bg1
    questions.append(("cut", QUESTIONS["cut"], bg2) if cut else ("background", QUESTIONS["background"], bg1))
    colours = [int(c) for c in rng.permutation(4)]        # mover, flash, then stills: all different colours
    layers, busy = [], set()
    if has_mover:
        layer, crossed = _mover(rng, DIRECTIONS[int(rng.integers(0, 4))], shape_names[colours[0]])
        layers.append(layer)
        busy |= crossed
        questions.append(("mover", QUESTIONS["mover"], colours[0]))
    flash = None
    if has_flash:
        (i, j), block = _flash_corner(rng, busy)
        busy |= block
        size = int(rng.integers(36, 45))
        y = i * CELL - size // 2 + int(rng.integers(-3, 4))
        x = j * CELL - size // 2 + int(rng.integers(-3, 4))
        g = int(rng.integers(0, FRAMES // 2))
        mask = _shape_mask(rng.choice(["square", "disc"]), size)
        flash = (range(2 * g, 2 * g + 2), [y] * FRAMES, [x] * FRAMES, mask, SHAPE_COLOURS[shape_names[colours[1]]])
        questions.append(("flash", QUESTIONS["flash"], colours[1]))
    n_still = 0 if solo else int(rng.integers(0, 3))
    free = [c for c in range(GRID * GRID) if c not in busy]
    cells = rng.choice(free, n_still, replace=False)
    still_colours = [shape_names[c] for c in colours[2:2 + n_still]] if not easy else \
        list(rng.choice(shape_names, n_still))
    layers = _still(rng, cells, still_colours) + layers + ([flash] if flash else [])
    frames = _render(_background(rng, bg_names[bg1]), layers)
    if cut:
        at = 2 * int(rng.integers(2, 7))           # first frame of the new scene: a temporal-group boundary
        frames[at:] = _render(_background(rng, bg_names[bg2]), layers)[at:]
    return Scene(frames, questions)


def scene(seed: int, index: int, require: str | None = None, mode: str = "full") -> Scene:
    """Scene `index` of stream `seed` (a pure function of its arguments)."""
    return make_scene(np.random.default_rng([seed, index]), require, mode)


def sample(seed: int, index: int, qtype: str) -> Sample:
    """One question of type `qtype` about scene `index` of stream `seed` (built to have that question)."""
    return scene(seed, index, require=qtype).samples(qtype)[0]


def held_out(n: int, types=None) -> list:
    """The fixed held-out set: n samples of seed HELD_OUT_SEED, round-robin over the question types."""
    types = types or TYPES
    return [sample(HELD_OUT_SEED, i, types[i % len(types)]) for i in range(n)]
