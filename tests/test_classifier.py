"""Tests for the Shapes attribute classifier: outputs, targets, decoding, inputs, and the trained model."""


import pytest
import torch
import torch.nn.functional as F

from diffusion_notes.data.shapes import COLOURS, POSITIONS, SHAPES, SIZES, ShapesDataset, render
from diffusion_notes.evaluation.classifier import (
    ClassifierConfig,
    ShapesClassifier,
    cell_targets,
    classifier_accuracy,
    classifier_batch,
    classifier_loss,
    decode_predictions,
    evaluate_classifier,
)

torch.set_num_threads(1)



@pytest.fixture(scope="module")
def trained():
    """The shipped classifier: a missing or corrupt file fails these tests."""
    from diffusion_notes import pretrained

    return pretrained.load("shapes_classifier")


def _tiny():
    torch.manual_seed(0)
    return ShapesClassifier(ClassifierConfig(width=4, feature_dim=8, colour_dim=4)).eval()


def _attributes(n, split="train", seed=3):
    dataset = ShapesDataset(split, length=n, seed=seed, p_two_objects=0.5)
    return [dataset.attributes(i) for i in range(n)]


class OracleClassifier(ShapesClassifier):
    """Returns one-hot logits of the given per-cell classes, whatever the images."""

    def __init__(self, classes):
        super().__init__(ClassifierConfig(width=4, feature_dim=8, colour_dim=4))
        self.classes = classes

    def forward(self, images):
        sizes = {"shape": len(SHAPES) + 1, "colour": len(COLOURS), "size": len(SIZES)}
        return {k: 10.0 * F.one_hot(self.classes[k][:len(images)].clamp(min=0), n).float()
                for k, n in sizes.items()}


def test_output_shapes_and_size():
    model = _tiny()
    images = render(_attributes(5))
    logits = model(images)
    assert logits["shape"].shape == (5, 9, 7)
    assert logits["colour"].shape == (5, 9, 8)
    assert logits["size"].shape == (5, 9, 2)
    assert model.features(images).shape == (5, 12)
    full = ShapesClassifier(ClassifierConfig())
    assert full.features(images).shape == (5, ClassifierConfig().feature_dim + ClassifierConfig().colour_dim)
    n_bytes = sum(p.numel() * 4 for p in full.state_dict().values())
    assert n_bytes < 2_000_000, f"classifier weights are {n_bytes} bytes"


def test_cell_targets_follow_attributes():
    attributes = _attributes(50)
    targets = cell_targets(attributes)
    for b, attrs in enumerate(attributes):
        cells = {o["position_index"]: o for o in attrs["objects"]}
        for cell in range(9):
            if cell in cells:
                obj = cells[cell]
                assert SHAPES[targets["shape"][b, cell] - 1] == obj["shape"]
                assert COLOURS[targets["colour"][b, cell]] == obj["colour"]
                assert SIZES[targets["size"][b, cell]] == obj["size"]
            else:
                assert targets["shape"][b, cell] == 0
                assert targets["colour"][b, cell] == -1 and targets["size"][b, cell] == -1


def test_classifier_batch_is_a_pure_function_of_the_index():
    batch = classifier_batch(3, 8, seed=5)
    again = classifier_batch(3, 8, seed=5)
    dataset = ShapesDataset("train", length=10**9, seed=5)
    assert torch.equal(batch["images"], again["images"])
    assert torch.equal(batch["images"], dataset.images(24, 32))
    expected = cell_targets([dataset.attributes(i) for i in range(24, 32)])
    for k in ("shape", "colour", "size"):
        assert torch.equal(batch["targets"][k], expected[k])
    assert not torch.equal(classifier_batch(4, 8, seed=5)["images"], batch["images"])
    assert not torch.equal(classifier_batch(3, 8, seed=6)["images"], batch["images"])


def test_predict_attributes_round_trip():
    attributes = _attributes(20, split="heldout")
    model = OracleClassifier(cell_targets(attributes)).eval()
    predicted = model.predict_attributes(render(attributes))
    for pred, attrs in zip(predicted, attributes):
        expected = sorted(({k: o[k] for k in ("shape", "colour", "size", "position")} for o in attrs["objects"]),
                          key=lambda o: POSITIONS.index(o["position"]))
        assert pred["objects"] == expected  # cell order
        assert pred["n_objects"] == attrs["n_objects"]
    assert decode_predictions({k: torch.zeros(1, 9, dtype=torch.long) for k in ("shape", "colour", "size")}) \
        == [{"n_objects": 0, "objects": []}]


def test_accuracy_of_an_oracle_and_of_a_wrong_classifier():
    attributes = _attributes(30)
    targets = cell_targets(attributes)
    accuracy = classifier_accuracy(OracleClassifier(targets), render(attributes), attributes)
    assert accuracy == {"shape": 1.0, "colour": 1.0, "size": 1.0, "position": 1.0, "count": 1.0, "all": 1.0}
    wrong = dict(targets, colour=(targets["colour"] + 1) % len(COLOURS))
    accuracy = classifier_accuracy(OracleClassifier(wrong), render(attributes), attributes)
    assert accuracy["colour"] == 0.0 and accuracy["all"] == 0.0 and accuracy["shape"] == 1.0
    empty = dict(targets, shape=torch.zeros_like(targets["shape"]))
    accuracy = classifier_accuracy(OracleClassifier(empty), render(attributes), attributes)
    assert accuracy["position"] == 0.0 and accuracy["count"] == 0.0


def test_loss_ignores_colour_and_size_of_empty_cells():
    model = _tiny()
    batch = classifier_batch(0, 6)
    loss = classifier_loss(model, batch, torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    logits = model(batch["images"])
    empty = batch["targets"]["shape"] == 0  # (B, 9)
    expected = sum(F.cross_entropy(logits[k][~empty] if k != "shape" else logits[k].flatten(0, 1),
                                   batch["targets"][k][~empty] if k != "shape" else batch["targets"][k].flatten())
                   for k in ("shape", "colour", "size"))
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("bad", [torch.zeros(2, 3, 16, 16), torch.zeros(2, 1, 32, 32), torch.zeros(3, 32, 32),
                                 torch.full((2, 3, 32, 32), 1.5), torch.zeros(2, 3, 32, 32, dtype=torch.long)])
def test_input_validation(bad):
    with pytest.raises(ValueError):
        _tiny()(bad)


@pytest.mark.slow
def test_trained_classifier_reads_unseen_and_heldout_images(trained):
    for split, seed in (("train", 1), ("heldout", 0)):
        dataset = ShapesDataset(split, length=500, seed=seed)
        attributes = [dataset.attributes(i) for i in range(500)]
        accuracy = classifier_accuracy(trained, render(attributes), attributes)
        for key in ("colour", "shape", "size", "position"):
            assert accuracy[key] >= 0.99, (split, accuracy)


def test_evaluate_classifier_keys():
    out = evaluate_classifier(_tiny(), n=4)
    assert set(out) == {f"{s}/{k}" for s in ("unseen", "heldout")
                        for k in ("colour", "shape", "size", "position", "count", "all")}
    assert all(0.0 <= v <= 1.0 for v in out.values())
