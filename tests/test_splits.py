"""The held-out protocol: the images that train routers and the images the tables
are measured on are fixed in code and disjoint by content; training on an
evaluation image is said loudly; the auxiliary map loss pulls p_finest toward
the teacher's map."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dge_explain.data.listing import canonical_spec
from dge_explain.data.segmentation import segmentation_dataset
from dge_explain.training import splits
from dge_explain.training.config import TrainConfig
from dge_explain.training.distill import map_loss, train
from dge_explain.zoo import MODELS
from dge_explain.zoo.build import recipe

from conftest import shared_file, shared_home


def _files(spec):
    return splits.image_files(splits.under_home(spec, shared_home()))


def _digests(files):
    return {splits.digest(path): path for path in files}


def test_the_training_images_and_every_evaluation_set_are_disjoint_by_content():
    shared_file("data/ecssd")
    shared_file("data/in9-fg")
    training = _digests(f for spec in splits.TRAINING for f in _files(spec))
    assert len(training) == 1000, "the even halves of ECSSD (500) and imagenet-sample (500), no duplicate"
    for name, spec in {**splits.EVALUATION, **splits.DEVELOPMENT}.items():
        shared = set(training) & set(_digests(_files(spec)))
        if name in splits.DEVELOPMENT:
            assert len(shared) == 500, "development is the training half of ECSSD (its masks: choices only)"
        else:
            assert not shared, f"{name} shares {len(shared)} images with the training set"


def test_train_warns_loudly_when_its_images_are_in_an_evaluation_set(tmp_path, capsys):
    shared_file("weights/deit_tiny_patch16_224.safetensors")
    heldout = _files(splits.EVALUATION["ecssd-heldout"])
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(heldout[3], folder / "renamed.jpg")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / "black.png")
    config = TrainConfig(out=str(tmp_path / "run"), images=(str(folder),), batch_size=2, max_steps=1, epochs=1,
                         image_size=64, home=shared_home())
    train(config, progress=False)
    err = capsys.readouterr().err
    assert (f"WARNING: 1 of the 2 training images are in the evaluation set 'ecssd-heldout' "
            f"({splits.EVALUATION['ecssd-heldout']}): maps measured there after this training are not held out. "
            f"e.g. {folder / 'renamed.jpg'} = {heldout[3]}") in err


def test_a_half_of_a_segmentation_dataset(tmp_path):
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
        for stem in "abcde":
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / folder / f"{stem}.png")
    assert canonical_spec(f"ecssd:{tmp_path}:odd") == f"ecssd:{tmp_path.resolve()}:odd"
    assert segmentation_dataset(f"ecssd:{tmp_path}:even").keys() == ["a.png", "c.png", "e.png"]
    assert segmentation_dataset(f"masks:{tmp_path / 'images'},{tmp_path / 'masks'}:odd").keys() == ["b.png", "d.png"]
    assert segmentation_dataset(f"ecssd:{tmp_path}").keys() == [f"{s}.png" for s in "abcde"]


def test_the_map_loss_is_least_where_p_finest_follows_the_teachers_map():
    teacher = torch.tensor([[[0.0, 1.0], [3.0, 2.0]]])          # one image, 2 x 2 regions
    target = teacher / 3                                         # scaled to 0..1
    margins = torch.logit(target.clamp(1e-4, 1 - 1e-4))
    following = torch.stack([margins, torch.zeros_like(margins)], -1)   # two options: margin = h_fine - h_coarse
    opposite = torch.stack([-margins, torch.zeros_like(margins)], -1)
    assert map_loss([following], teacher) < map_loss([opposite], teacher)
    expected = torch.nn.functional.binary_cross_entropy(torch.sigmoid(margins), target)
    assert map_loss([following], teacher).item() == pytest.approx(expected.item(), rel=1e-6)
    flat = torch.ones(1, 2, 2)
    assert map_loss([following], flat).item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy(torch.sigmoid(margins), torch.full_like(margins, 0.5)).item())


def test_training_with_the_teachers_relevance_as_target_logs_its_loss(tmp_path):
    shared_file("weights/deit_tiny_patch16_224.safetensors")
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(2):
        pixels = np.random.default_rng(index).integers(0, 255, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    config = TrainConfig(out=str(tmp_path / "run"), images=(str(folder),), batch_size=2, max_steps=2, epochs=2,
                         image_size=64, home=shared_home(), map_target="relevance", map_weight=2.0,
                         map_layers=(4, 8))
    result = train(config, progress=False)
    assert result.steps == 2 and result.last["map"] > 0 and np.isfinite(result.last["map"])
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logged] == [1, 2] and all(entry["map"] > 0 for entry in logged)
    with pytest.raises(ValueError, match=r"--map-target and a positive --map-weight go together"):
        train(TrainConfig(out=str(tmp_path / "b"), images=(str(folder),), home=shared_home(), map_weight=1.0))


@pytest.mark.parametrize("name", list(MODELS))
def test_each_shipped_model_was_trained_on_no_image_of_an_evaluation_set(name):
    shared_file("data/ecssd")
    shared_file("data/in9-fg")
    trained_on = recipe(name).get("images_in_home")
    assert trained_on, f"{name}'s stored recipe does not say which images trained it"
    assert sorted(trained_on) == sorted(splits.TRAINING)
    files = [f for spec in trained_on for f in _files(spec)]
    assert len(files) == 1000
    assert splits.overlaps(files, shared_home()) == {}
