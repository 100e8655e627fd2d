"""Tests for the Shapes dataset: determinism, splits, captions and drawing agree with attributes."""

import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from diffusion_notes.data import (
    COLOURS,
    HELDOUT_PAIRS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    ShapesDataset,
    canonical_caption,
    caption_for,
    collate,
    is_heldout_pair,
    render,
    sample_attributes,
)
from diffusion_notes.data import captions as C
from diffusion_notes.data import shapes as S

TABLES = {"shape": C.SHAPE_WORDS, "colour": C.COLOUR_WORDS, "size": C.SIZE_WORDS,
          "position": C.POSITION_WORDS, "relation": C.RELATION_WORDS}


# ----------------------------------------------------------------------------- helpers

def _normalise(caption: str) -> str:
    return " " + " ".join(re.sub(r"[^a-z\-]+", " ", caption.lower()).split()) + " "


def _find(text: str, table: dict) -> tuple[set, str]:
    """Names whose phrases occur as whole words (longest first); returns them and the text
    with the matches cut out, so that 'left' inside 'top left' is not counted twice."""
    found = set()
    phrases = sorted(((p, n) for n, ps in table.items() for p in ps), key=lambda t: -len(t[0]))
    for phrase, name in phrases:
        while f" {phrase} " in text:
            found.add(name)
            text = text.replace(f" {phrase} ", " | ", 1)
    return found, text


def parse_caption(caption: str) -> dict:
    """The set of attribute names each table finds in a caption."""
    text = _normalise(caption)
    relations, text = _find(text, C.RELATION_WORDS)  # before positions: 'left of' vs 'left'
    parsed = {"relation": relations}
    for key in ("shape", "colour", "size", "position"):
        parsed[key], text = _find(text, TABLES[key])
    return parsed


def _cell_mask(row: int, col: int) -> np.ndarray:
    cell_of_pixel = np.floor((np.arange(32) + 0.5) / S.CELL).astype(int)  # (32,)
    return (cell_of_pixel[:, None] == row) & (cell_of_pixel[None, :] == col)  # (H, W)


def _alpha(image: torch.Tensor) -> np.ndarray:
    """Brightest channel in [0, 1]; 0 is background. (3, H, W) -> (H, W)."""
    return ((image.numpy() + 1) / 2).max(axis=0)


def _check_caption(caption: str, attrs: dict) -> None:
    objects = attrs["objects"]
    parsed = parse_caption(caption)
    for key in ("shape", "colour", "size", "position"):
        assert parsed[key] == {o[key] for o in objects}, (key, caption, attrs)
    assert parsed["relation"] == ({attrs["relation"]} if len(objects) == 2 else set()), caption
    if len(objects) == 2 and objects[0]["colour"] != objects[1]["colour"]:
        first = next(w for w in _normalise(caption).split() if _find(f" {w} ", C.COLOUR_WORDS)[0])
        assert _find(f" {first} ", C.COLOUR_WORDS)[0] == {objects[0]["colour"]}, caption


# ----------------------------------------------------------------------------- vocabularies

def test_vocabularies_and_word_tables_agree():
    assert len(SHAPES) >= 4 and len(COLOURS) >= 6 and SIZES == ("small", "large")
    assert len(POSITIONS) == 9 and RELATIONS == ("left of", "right of", "above", "below")
    for key, vocab in [("shape", SHAPES), ("colour", COLOURS), ("size", SIZES),
                       ("position", POSITIONS), ("relation", RELATIONS)]:
        assert tuple(TABLES[key]) == vocab
    assert set(S.COLOUR_RGB) == set(COLOURS)
    for key in ("shape", "colour", "size", "position"):  # canonical word = vocabulary name
        assert all(words[0] == name for name, words in TABLES[key].items())
    # every phrase names exactly one attribute value, across all tables
    phrases = [p for table in TABLES.values() for ps in table.values() for p in ps]
    assert len(phrases) == len(set(phrases))


def test_colours_are_far_apart():
    rgb = np.array([S.COLOUR_RGB[c] for c in COLOURS])
    distances = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + np.eye(len(COLOURS))
    assert distances.min() > 0.3
    assert np.linalg.norm(rgb - np.array(S.BACKGROUND_RGB), axis=-1).min() > 0.5


def test_heldout_pairs_leave_every_shape_and_colour_in_training():
    n_pairs = len(SHAPES) * len(COLOURS)
    assert 0.10 <= len(HELDOUT_PAIRS) / n_pairs <= 0.15
    assert {s for s, _ in S.TRAIN_PAIRS} == set(SHAPES)
    assert {c for _, c in S.TRAIN_PAIRS} == set(COLOURS)
    assert is_heldout_pair(*HELDOUT_PAIRS[0]) and not is_heldout_pair("circle", "red")


# ----------------------------------------------------------------------------- determinism

def test_same_seed_same_items_different_seed_different_images():
    a, b = ShapesDataset(length=20, seed=3), ShapesDataset(length=20, seed=3)
    c = ShapesDataset(length=20, seed=4)
    for i in range(20):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"])
        assert x["caption"] == y["caption"] and x["attributes"] == y["attributes"]
    assert not torch.equal(a.images(), c.images())
    assert [a[i]["caption"] for i in range(20)] != [c[i]["caption"] for i in range(20)]
    assert not torch.equal(a.images(), ShapesDataset("heldout", length=20, seed=3).images())


def test_item_is_a_pure_function_of_seed_split_index():
    long, short = ShapesDataset(length=1000, seed=1), ShapesDataset(length=10, seed=1)
    backwards = [long[i] for i in reversed(range(10))][::-1]
    batch = long.images(0, 10)  # (10, 3, H, W)
    for i in range(10):
        assert torch.equal(backwards[i]["image"], short[i]["image"])
        assert torch.equal(batch[i], short[i]["image"])
        assert backwards[i]["caption"] == short[i]["caption"]
    assert torch.equal(long[-1]["image"], long[999]["image"])


def test_dataloader_with_workers_matches_direct_access():
    dataset = ShapesDataset(length=12, seed=5)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert batches[0]["image"].shape == (4, 3, 32, 32)
    assert isinstance(batches[0]["caption"], list) and isinstance(batches[0]["caption"][0], str)
    assert isinstance(batches[0]["attributes"][0], dict)
    assert torch.equal(torch.cat([b["image"] for b in batches]), dataset.images())
    assert sum((b["caption"] for b in batches), []) == [dataset[i]["caption"] for i in range(12)]


# ----------------------------------------------------------------------------- splits

def test_splits_are_disjoint_in_colour_shape_pairs():
    train = [sample_attributes(i, seed=0, split="train") for i in range(3000)]
    heldout = [sample_attributes(i, seed=0, split="heldout") for i in range(3000)]
    train_pairs = {(o["shape"], o["colour"]) for a in train for o in a["objects"]}
    assert train_pairs == set(S.TRAIN_PAIRS)  # every allowed pair shows up, no held-out one
    for a in heldout:
        assert any(is_heldout_pair(o["shape"], o["colour"]) for o in a["objects"])
    assert {(o["shape"], o["colour"]) for a in heldout for o in a["objects"]} >= set(HELDOUT_PAIRS)


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_fraction_of_two_object_images(p):
    n_two = sum(sample_attributes(i, p_two_objects=p)["n_objects"] == 2 for i in range(2000))
    assert abs(n_two / 2000 - p) < 0.04


# ----------------------------------------------------------------------------- attributes and captions

def test_attributes_are_plain_and_consistent():
    for i in range(300):
        a = sample_attributes(i, p_two_objects=0.5)
        assert a["n_objects"] == len(a["objects"])
        for o in a["objects"]:
            assert SHAPES[o["shape_index"]] == o["shape"] and COLOURS[o["colour_index"]] == o["colour"]
            assert SIZES[o["size_index"]] == o["size"] and POSITIONS[o["position_index"]] == o["position"]
            assert o["position_index"] == 3 * o["row"] + o["col"]
            assert all(type(v) in (int, str, float) for v in o.values())
        if a["n_objects"] == 2:
            first, second = a["objects"]
            assert first["position"] != second["position"]
            assert RELATIONS[a["relation_index"]] == a["relation"]
            holds = {"left of": first["col"] < second["col"], "right of": first["col"] > second["col"],
                     "above": first["row"] < second["row"], "below": first["row"] > second["row"]}
            assert holds[a["relation"]]
        else:
            assert a["relation"] is None and a["relation_index"] is None


def test_captions_agree_with_attributes():
    for split in ("train", "heldout"):
        dataset = ShapesDataset(split, length=400, seed=2, p_two_objects=0.5)
        for i in range(400):
            a = dataset.attributes(i)
            _check_caption(dataset.caption(i), a)
    # every template, with random synonyms
    rng = np.random.default_rng(0)
    for i in range(60):
        a = sample_attributes(i, p_two_objects=0.5)
        templates = C.ONE_OBJECT_TEMPLATES if a["n_objects"] == 1 else C.TWO_OBJECT_TEMPLATES
        for t in range(len(templates)):
            _check_caption(caption_for(a, template=t, rng=rng), a)


def test_captions_vary_and_canonical_caption_is_fixed():
    dataset = ShapesDataset(length=200, seed=0)
    assert len({dataset.caption(i) for i in range(200)}) > 150
    one = {"n_objects": 1, "relation": None, "objects": [
        {"shape": "circle", "colour": "red", "size": "small", "position": "top left"}]}
    two = {"n_objects": 2, "relation": "left of", "objects": [
        one["objects"][0], {"shape": "square", "colour": "orange", "size": "large", "position": "right"}]}
    assert canonical_caption(one) == "a small red circle in the top left"
    assert canonical_caption(two) == ("a small red circle in the top left, to the left of "
                                      "a large orange square on the right")
    canonical = ShapesDataset(length=5, canonical_captions=True)
    assert canonical[0]["caption"] == canonical_caption(canonical[0]["attributes"])


# ----------------------------------------------------------------------------- drawing

def test_image_shape_range_and_anti_aliasing():
    dataset = ShapesDataset(length=64, seed=0, p_two_objects=0.0)
    images = dataset.images()
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    n_drawn = n_rim = 0
    for i, image in enumerate(images):
        colour = max(S.COLOUR_RGB[dataset.attributes(i)["objects"][0]["colour"]])
        coverage = _alpha(image) / colour  # 0 background, 1 fully inside
        rim = (coverage > 0.01) & (coverage < 0.99)  # strictly between background and colour
        assert rim.any(), i
        n_drawn, n_rim = n_drawn + (coverage > 0.01).sum(), n_rim + rim.sum()
    assert n_rim / n_drawn > 0.2  # a soft edge, not a hard mask with a few stray values


def test_drawing_agrees_with_attributes():
    dataset = ShapesDataset(length=300, seed=7, p_two_objects=0.5)
    palette = np.array([S.COLOUR_RGB[c] for c in COLOURS])  # (K, 3)
    images = dataset.images()
    for i in range(len(dataset)):
        a, image = dataset.attributes(i), images[i]
        alpha = _alpha(image)
        drawn = alpha > 0
        cells = np.zeros_like(drawn)
        for o in a["objects"]:
            cell = _cell_mask(o["row"], o["col"])
            cells |= cell
            assert (drawn & cell).sum() >= 9, (i, o)  # something is drawn in the named cell
            solid = cell & (alpha >= 0.8 * alpha[cell].max())
            mean_rgb = ((image.numpy() + 1) / 2)[:, solid].mean(axis=1)  # (3,)
            assert COLOURS[np.linalg.norm(palette - mean_rgb, axis=1).argmin()] == o["colour"], (i, o)
        assert not (drawn & ~cells).any(), i  # nothing outside the objects' cells


def test_large_objects_cover_more_pixels_than_small_ones():
    attrs = [sample_attributes(i, p_two_objects=0.0) for i in range(600)]
    coverage = np.array([_alpha(im).sum() for im in render(attrs)])
    for shape in SHAPES:
        sizes = np.array([a["objects"][0]["size"] for a in attrs])
        shapes = np.array([a["objects"][0]["shape"] for a in attrs])
        small = coverage[(shapes == shape) & (sizes == "small")]
        large = coverage[(shapes == shape) & (sizes == "large")]
        assert large.min() > small.max(), shape


def _centred(shape: str, size: str = "large") -> dict:
    return {"objects": [{"shape": shape, "colour": "white", "size": size, "x": 16.0, "y": 16.0}]}


def test_coverage_matches_analytic_area():
    # white is 0.95 in every channel; the coverage ramp should integrate to the true area
    circle, square = render([_centred("circle"), _centred("square")])
    r = S.SIZE_RADII["large"]
    assert _alpha(circle).sum() / 0.95 == pytest.approx(np.pi * r**2, rel=0.02)
    assert _alpha(square).sum() / 0.95 == pytest.approx((2 * 0.85 * r) ** 2, rel=0.02)


def test_shapes_look_different():
    alphas = [_alpha(im) for im in render([_centred(s) for s in SHAPES])]
    for i in range(len(SHAPES)):
        for j in range(i + 1, len(SHAPES)):
            assert np.abs(alphas[i] - alphas[j]).sum() > 8, (SHAPES[i], SHAPES[j])


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs, words", [
    ({"split": "test"}, "train"),
    ({"length": -1}, "length"), ({"length": 0}, "length"), ({"length": 2.5}, "length"),
    ({"seed": "1"}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": -3}, "seed"), ({"seed": True}, "seed"),
    ({"p_two_objects": 1.5}, "p_two_objects"),
])
def test_bad_arguments_raise_value_error(kwargs, words):
    with pytest.raises(ValueError, match=words):
        ShapesDataset(**kwargs)


def test_out_of_range_index_raises_index_error():
    dataset = ShapesDataset(length=5)
    for i in (5, 100, -6):
        with pytest.raises(IndexError):
            dataset[i]
    with pytest.raises(IndexError):
        dataset.images(0, 6)
    with pytest.raises(ValueError, match="template"):
        caption_for(dataset.attributes(0), template=99)
