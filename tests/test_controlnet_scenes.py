"""ControlNet training scenes (Chapter 17): objects anywhere at any size, captions that may not say where,
Canny edges, and the evaluation sets."""

import numpy as np
import pytest
import torch

from diffusion_notes.data.captions import POSITION_WORDS
from diffusion_notes.data.shapes import CELL, POSITIONS, SIZE_RADII, render, sample_attributes
from diffusion_notes.practice.controlnet.conditions import (
    canny_edges,
    condition_region,
    make_condition,
)
from diffusion_notes.practice.controlnet.evaluate import eval_set
from diffusion_notes.practice.controlnet.scenes import (
    RADIUS_RANGE,
    cell_of,
    move,
    place,
    render_scene,
    scene_caption,
)

ONE = [sample_attributes(i, seed=4, p_two_objects=0.0) for i in range(30)]
TWO = [sample_attributes(i, seed=4, p_two_objects=1.0) for i in range(30)]


def positions_named(caption: str) -> set[str]:
    """The cells a caption names, by the words of data.captions (longest phrases first)."""
    found, text = set(), caption
    for name, words in sorted(POSITION_WORDS.items(), key=lambda kv: -max(map(len, kv[1]))):
        for word in sorted(words, key=len, reverse=True):
            if f"the {word}" in text:
                found.add(name)
                text = text.replace(f"the {word}", "")
    return found


def test_an_unmoved_scene_renders_as_the_dataset_does():
    assert torch.equal(render_scene(ONE + TWO), render(ONE + TWO))


def test_cells_are_the_datasets_thirds():
    assert cell_of(1, 1) == 0 and cell_of(31, 1) == 2 and cell_of(16, 16) == 4 and cell_of(1, 31) == 6
    assert cell_of(CELL - 0.01, 0) == 0 and cell_of(CELL + 0.01, 0) == 1 and cell_of(32.0, 32.0) == 8
    obj = place(ONE[0]["objects"][0], 30.0, 2.0, 3.5)
    assert (obj["position"], obj["row"], obj["col"], obj["size"]) == ("top right", 0, 2, "small")
    assert place(obj, 5.0, 28.0, 3.8)["size"] == "large" and place(obj, 5.0, 28.0, 3.8)["position"] == "bottom left"


def test_moved_scenes_stay_inside_apart_and_keep_shape_and_colour():
    rng = np.random.default_rng(0)
    for scene in ONE + TWO:
        moved = move(scene, rng)
        assert [(o["shape"], o["colour"]) for o in moved["objects"]] == [(o["shape"], o["colour"])
                                                                          for o in scene["objects"]]
        for o in moved["objects"]:
            assert RADIUS_RANGE[0] <= o["radius"] <= RADIUS_RANGE[1]
            assert all(o["radius"] + 1 <= o[k] <= 32 - o["radius"] - 1 for k in ("x", "y"))
        if len(moved["objects"]) == 2:
            a, b = moved["objects"]
            assert np.hypot(a["x"] - b["x"], a["y"] - b["y"]) > np.sqrt(2) * (a["radius"] + b["radius"]) + 1
            first, second = (condition_region([{**moved, "objects": [o]}]) for o in (a, b))
            assert not (first & second).any()  # the objects do not overlap


def test_caption_kinds_name_no_cell_their_own_or_another():
    rng = np.random.default_rng(1)
    for scene in ONE + TWO:
        own = {o["position"] for o in scene["objects"]}
        assert positions_named(scene_caption(scene, "none")) == set()
        assert positions_named(scene_caption(scene, "same", rng)) == own
        other = scene_caption(scene, "other", rng)
        named = positions_named(other)
        assert named and len(named) <= len(scene["objects"])
        for obj, text in zip(scene["objects"], other.split(" and ")):
            assert positions_named(text) and obj["position"] not in positions_named(text)
        for obj in scene["objects"]:
            assert obj["colour"] in scene_caption(scene, "none") or obj["colour"] in ("cyan", "purple")
    with pytest.raises(ValueError, match="kind must be one of"):
        scene_caption(ONE[0], "left")
    with pytest.raises(ValueError, match="needs an rng"):
        scene_caption(ONE[0], "other")


def test_canny_edges_run_along_the_outline():
    """skimage's Canny on a rendered picture marks pixels within a pixel and a half of the objects' edges."""
    pictures = (render(ONE) + 1) / 2
    edges = canny_edges(pictures)
    assert edges.shape == (30, 3, 32, 32) and set(edges.unique().tolist()) <= {0.0, 1.0}
    outline = make_condition(ONE, "outline")
    near = torch.nn.functional.max_pool2d(outline[:, :1], 3, 1, 1) > 0  # (B, 1, H, W): a pixel from the outline
    on = edges[:, :1] > 0
    assert on.sum() > 0 and float((on & near).sum() / on.sum()) > 0.9
    assert torch.equal(make_condition(ONE, "canny"), edges)
    with pytest.raises(ValueError, match="canny_edges takes"):
        canny_edges(pictures[:, :1])


def test_evaluation_sets_put_objects_where_they_say():
    grid = eval_set(12, "outline", "none")
    assert all(positions_named(c) == set() for c in grid["captions"])
    assert all(o["size"] in SIZE_RADII and "radius" not in o for a in grid["attributes"] for o in a["objects"])
    sizes = eval_set(12, "mask", "same", "sizes")
    radii = [a["objects"][0]["radius"] for a in sizes["attributes"]]
    assert all(3.2 <= r <= 4.3 for r in radii)
    assert [a["objects"][0]["x"] for a in sizes["attributes"]] == [a["objects"][0]["x"] for a in
                                                                    eval_set(12, "mask", "same")["attributes"]]
    small = eval_set(12, "outline", "other", "small")
    assert all(2.0 <= a["objects"][0]["radius"] <= 2.5 for a in small["attributes"])
    offgrid = eval_set(40, "outline", "none", "offgrid")
    xs = np.array([a["objects"][0]["x"] for a in offgrid["attributes"]])
    assert ((xs % CELL) < 2).any() or ((xs % CELL) > CELL - 2).any()  # some near a cell's border, off the grid
    assert all(len(a["objects"]) == 2 for a in eval_set(6, "outline", "none", "two")["attributes"])
    assert grid["condition"].shape == (12, 3, 32, 32) and grid["region"].shape == (12, 32, 32)
    with pytest.raises(ValueError, match="where must be one of"):
        eval_set(4, where="moon")
    with pytest.raises(ValueError, match="caption must be one of"):
        eval_set(4, caption="left")
    assert set(POSITIONS) == set(POSITION_WORDS)


def test_placed_sees_two_shapes_swapped_where_the_shape_check_does_not():
    """A two-object picture drawn with the objects' shapes exchanged: the multiset of shapes is right, the
    shape inside each outline is not."""
    from diffusion_notes.practice.controlnet.evaluate import scores
    from diffusion_notes.training import frozen

    items = eval_set(8, "outline", "none", "two")
    items = {**items, "attributes": [a for a in items["attributes"]
                                     if a["objects"][0]["shape"] != a["objects"][1]["shape"]][:4]}
    items["region"] = condition_region(items["attributes"])
    swapped = [{**a, "objects": [{**a["objects"][0], "shape": a["objects"][1]["shape"]},
                                 {**a["objects"][1], "shape": a["objects"][0]["shape"]}]} for a in items["attributes"]]
    judge = frozen.classifier()
    right = scores((render_scene(items["attributes"]) + 1) / 2, items, judge)
    wrong = scores((render_scene(swapped) + 1) / 2, items, judge)
    assert right["placed"].tolist() == [1.0] * 4 and right["shape"].tolist() == [1.0] * 4
    assert wrong["placed"].tolist() == [0.0] * 4 and wrong["shape"].tolist() == [1.0] * 4
