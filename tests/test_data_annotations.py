"""Annotation loaders: VideoMAE lists, folder-per-class, unlabeled lists, and file:line errors."""
import pytest

from sigma_ray.data.annotations import AnnotationError, load_folder, load_list, load_split
from sigma_ray.data.config import DataConfig
from sigma_ray.infra.config import from_dict


@pytest.fixture
def videos(tmp_path):
    for rel in ("a/x.mp4", "a/y.mp4", "b/z.mp4", "b/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    return tmp_path


def test_videomae_list_relative_and_absolute(videos):
    lst = videos / "train.csv"
    lst.write_text(f"a/x.mp4 0\n\n{videos / 'b/z.mp4'} 1\n")
    recs = load_list(lst, root=str(videos), num_classes=2)
    assert [(r.path, r.label, r.video_id) for r in recs] == [
        (str(videos / "a/x.mp4"), 0, 0), (str(videos / "b/z.mp4"), 1, 1)]


@pytest.mark.parametrize("text,line,message", [
    ("a/x.mp4 0\na/y.mp4\n", 2, "expected 'path label'"),
    ("a/x.mp4 0\na/y.mp4 one\n", 2, "not an integer"),
    ("a/x.mp4 0\n\na/y.mp4 5\n", 3, "unknown label 5"),
    ("a/x.mp4 -1\n", 1, "unknown label -1"),
    ("a/x.mp4 0\nmissing.mp4 1\n", 2, "does not exist"),
])
def test_errors_name_file_and_line(videos, text, line, message):
    lst = videos / "bad.csv"
    lst.write_text(text)
    with pytest.raises(AnnotationError, match=f"bad.csv:{line}: .*{message}"):
        load_list(lst, root=str(videos), num_classes=3)


def test_unlabeled_list(videos):
    lst = videos / "pretrain.csv"
    lst.write_text("a/x.mp4\nb/z.mp4\n")
    recs = load_list(lst, root=str(videos), labeled=False)
    assert [r.label for r in recs] == [-1, -1]


def test_folder_layout_and_unknown_class(videos):
    recs, classes = load_folder(videos)
    assert classes == ["a", "b"] and [r.label for r in recs] == [0, 0, 1]   # notes.txt ignored
    with pytest.raises(AnnotationError, match="unknown label 'b'"):
        load_folder(videos, classes=["a"])


def test_load_split_from_config(videos):
    (videos / "train.csv").write_text("a/x.mp4 0\nb/z.mp4 1\n")
    cfg = from_dict(DataConfig, {"train_list": str(videos / "train.csv"), "val_list": str(videos),
                                 "root": str(videos)})
    assert len(load_split(cfg, "train")) == 2
    assert [r.label for r in load_split(cfg, "val")] == [0, 0, 1]
    with pytest.raises(AnnotationError, match="val_list is not set"):
        load_split(DataConfig(train_list="x"), "val")
