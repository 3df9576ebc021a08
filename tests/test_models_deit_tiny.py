"""The real DeiT-Tiny of the shared folder: its DGE conversion with every gate
at the finest option gives timm's logits (max abs difference <= 1e-4) and the
same 79.4% top-1 on imagenet-sample (bicubic 256, centre crop 224)."""
import pytest
import timm
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dge_explain.data import LabelledImageFolder, Preprocessing
from dge_explain.models import force_gates, from_dense, load_checkpoint

from conftest import shared_file

# DeiT's evaluation (the shared README's 79.4 %): bicubic resize to 256, centre crop 224.
DEIT = Preprocessing(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic", 0.875)


@pytest.mark.slow
def test_finest_gates_reproduce_dense_deit_tiny_on_imagenet_sample():
    weights = shared_file("weights/deit_tiny_patch16_224.safetensors")
    folder = shared_file("data/imagenet-sample")
    dense = timm.create_model("deit_tiny_patch16_224")
    load_checkpoint(dense, weights)
    dense.eval()
    dge = from_dense(dense, phi=(1, 2)).eval()
    data = LabelledImageFolder(folder, DEIT.classification_transform())
    assert len(data) == 1000
    correct = {"dense": 0, "dge": 0}
    top5 = 0
    worst = 0.0
    with torch.inference_mode(), force_gates(dge, "finest"):
        for images, labels in DataLoader(data, batch_size=50, num_workers=2):
            a, b = dense(images), dge(images)
            worst = max(worst, float((a - b).abs().max()))
            correct["dense"] += int((a.argmax(1) == labels).sum())
            correct["dge"] += int((b.argmax(1) == labels).sum())
            top5 += int((b.topk(5).indices == labels[:, None]).any(1).sum())
    assert worst <= 1e-4
    assert correct == {"dense": 794, "dge": 794}
    assert top5 == 946


def test_labelled_folder_fixture(tmp_path):
    for name in ["n01440764_tench.jpg", "n01443537_goldfish.jpg", "n00000001_other.png"]:
        Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / name)
    data = LabelledImageFolder(tmp_path, DEIT.classification_transform())
    assert [f.name for f in data.files] == ["n00000001_other.png", "n01440764_tench.jpg",
                                            "n01443537_goldfish.jpg"]
    assert data.labels == [0, 1, 2]
    image, label = data[1]
    assert image.shape == (3, 224, 224) and label == 1
    full = ["n00000000_a", "n00000001_other", "n01440764_tench", "n01443537_goldfish"]
    transform = DEIT.classification_transform()
    assert LabelledImageFolder(tmp_path, transform, synsets=[s.split("_")[0] for s in full]).labels == [1, 2, 3]
    assert LabelledImageFolder(f"{tmp_path}:odd", transform).labels == [1], "a half keeps the folder's class list"
    with pytest.raises(ValueError, match=r"synsets \['n01443537'\] are not in the given synset list"):
        LabelledImageFolder(tmp_path, transform, synsets=["n00000001", "n01440764"])
    (tmp_path / "._n01440764_tench.jpg").write_bytes(b"macOS resource fork")
    assert len(LabelledImageFolder(tmp_path, transform)) == 3, "._ files are skipped"
    (tmp_path / "unlabelled.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"do not start with a synset id.*unlabelled.jpg"):
        LabelledImageFolder(tmp_path, transform)


def test_unreadable_image_is_named(tmp_path):
    (tmp_path / "n01440764_broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"cannot read image .*n01440764_broken.jpg"):
        LabelledImageFolder(tmp_path, DEIT.classification_transform())[0]


def test_classification_report(tmp_path, generator):
    from dge_explain.evaluation.classification import evaluate_classification
    for name in ["n01440764_tench.jpg", "n01443537_goldfish.jpg", "n01484850_shark.jpg"]:
        Image.new("RGB", (60, 50), (10, 200, 10)).save(tmp_path / name)
    dense = timm.create_model("deit_tiny_patch16_224", depth=2, num_classes=3).eval()
    dge = from_dense(dense, phi=(1, 2))
    with force_gates(dge, "coarsest"):
        result = evaluate_classification(dge, str(tmp_path), dense, batch_size=2, workers=0, progress=False)
    # three identical images of three classes: one prediction, right for exactly one of them
    assert result.images == 3 and result.top1 == pytest.approx(1 / 3) and result.top5 == 1.0
    assert result.dense_top1 == pytest.approx(1 / 3) and result.dense_top5 == 1.0
    assert result.fine_per_layer == [0.0, 0.0] and 0.2 < result.ratio < 0.6


def test_classification_report_of_a_dense_model(tmp_path):
    from dge_explain.evaluation.classification import evaluate_classification

    Image.new("RGB", (60, 50)).save(tmp_path / "n01440764_tench.jpg")
    dense = timm.create_model("deit_tiny_patch16_224", depth=1).eval()
    result = evaluate_classification(dense, str(tmp_path), workers=0, progress=False)
    assert result.ratio is None and result.fine_per_layer == [] and result.images == 1
