"""The benchmark annotation converters of sigma_ray/eval/splits.py on tiny fixtures in each dataset's own format."""
import json

import numpy as np
import pytest

from sigma_ray.data.annotations import AnnotationError, load_list
from sigma_ray.eval.splits import (charades_lists, finegym_lists, kinetics_lists, load_count_list, load_multilabel_list,
                                   main, ssv2_lists, ucfrep_lists)


def lines(path):
    return open(path).read().splitlines()


def write_ssv2(folder, train_template="Holding [something] next to [something]"):
    folder.mkdir(exist_ok=True)
    # not in index order in the file, and index 0 is not the first key: an order-based mapping would be wrong
    labels = {"Holding something next to something": "2", "Approaching something with your camera": "0",
              "Putting number of something onto something": "1"}
    (folder / "labels.json").write_text(json.dumps(labels))
    (folder / "train.json").write_text(json.dumps([
        {"id": "78687", "label": "holding potato next to vicks vaporub bottle", "template": train_template,
         "placeholders": ["potato", "vicks vaporub bottle"]},
        {"id": "42326", "label": "putting 2 pens onto a book", "template": "Putting [number of] [something] onto "
         "[something]", "placeholders": ["2", "pens", "a book"]}]))
    (folder / "validation.json").write_text(json.dumps([
        {"id": "5", "label": "approaching a cup with your camera", "template": "Approaching [something] with your "
         "camera", "placeholders": ["a cup"]}]))


def test_ssv2(tmp_path):
    write_ssv2(tmp_path / "ssv2")
    paths = ssv2_lists(tmp_path / "ssv2", tmp_path / "lists")
    assert lines(paths["train"]) == ["78687.webm 2", "42326.webm 1"]
    assert lines(paths["val"]) == ["5.webm 0"]
    assert lines(paths["classes"]) == ["Approaching something with your camera",
                                       "Putting number of something onto something",
                                       "Holding something next to something"]
    assert lines(ssv2_lists(tmp_path / "ssv2", tmp_path / "mp4", ext=".mp4")["val"]) == ["5.mp4 0"]

    write_ssv2(tmp_path / "bad", train_template="Holding [something] behind [something]")
    with pytest.raises(ValueError, match=r"train\.json: entry 0 \(id 78687\): template .*behind.* not in labels"):
        ssv2_lists(tmp_path / "bad", tmp_path / "bad_lists")
    (tmp_path / "bad" / "labels.json").write_text(json.dumps({"a": "0", "b": "2"}))
    with pytest.raises(ValueError, match=r"labels\.json: the indices are not 0\.\.1"):
        ssv2_lists(tmp_path / "bad", tmp_path / "bad_lists")
    with pytest.raises(ValueError, match=r"nowhere/labels\.json: annotation file does not exist"):
        ssv2_lists(tmp_path / "nowhere", tmp_path / "bad_lists")


K400_TRAIN = """label,youtube_id,time_start,time_end,split,is_cc
zumba,-Abc_123xyz,14,24,train,0
abseiling,0347ZoDXyP0,5,15,train,0
"passing American football (in game)",abc,0,10,train,1
"dancing ""ballet"", badly",q,120,130,train,0
abseiling,zzz,1,11,train,0
"""
K400_VAL = """label,youtube_id,time_start,time_end,split
zumba,v1,3,13,val
"passing American football (in game)",v2,7,17,val
"""


def test_kinetics(tmp_path):
    (tmp_path / "train.csv").write_text(K400_TRAIN)
    (tmp_path / "validate.csv").write_text(K400_VAL)   # no is_cc column: both headers are accepted
    paths = kinetics_lists(tmp_path, tmp_path / "lists")
    classes = ["abseiling", 'dancing "ballet", badly', "passing American football (in game)", "zumba"]
    assert lines(paths["classes"]) == classes
    assert lines(paths["train"]) == ["train/zumba/-Abc_123xyz_000014_000024.mp4 3",
                                     "train/abseiling/0347ZoDXyP0_000005_000015.mp4 0",
                                     "train/passing American football (in game)/abc_000000_000010.mp4 2",
                                     'train/dancing "ballet", badly/q_000120_000130.mp4 1',
                                     "train/abseiling/zzz_000001_000011.mp4 0"]
    assert lines(paths["val"]) == ["val/zumba/v1_000003_000013.mp4 3",
                                   "val/passing American football (in game)/v2_000007_000017.mp4 2"]
    # the written list reads back through the data layer's reader (labels last, so spaces in paths are fine)
    records = load_list(paths["train"], root="/k400", num_classes=4, check_files=False)
    assert records[2].path == "/k400/train/passing American football (in game)/abc_000000_000010.mp4"
    assert records[2].label == 2

    flat = kinetics_lists(tmp_path, tmp_path / "flat", layout="flat", train_dir="", val_dir="videos_val")
    assert lines(flat["train"])[0] == "-Abc_123xyz_000014_000024.mp4 3"
    assert lines(flat["val"])[1] == "videos_val/v2_000007_000017.mp4 2"

    with pytest.raises(ValueError, match="layout must be"):
        kinetics_lists(tmp_path, tmp_path / "x", layout="nested")
    (tmp_path / "validate.csv").write_text(K400_VAL + "yoga,v3,1,11,val\n")
    with pytest.raises(ValueError, match=r"validate\.csv:4: label 'yoga' is not a train class"):
        kinetics_lists(tmp_path, tmp_path / "x")
    (tmp_path / "validate.csv").write_text(K400_VAL + "zumba,v3,1.5,11,val\n")
    with pytest.raises(ValueError, match=r"validate\.csv:4: time_start / time_end '1\.5'"):
        kinetics_lists(tmp_path, tmp_path / "x")
    (tmp_path / "validate.csv").write_text(K400_VAL + "zumba,v3\n")
    with pytest.raises(ValueError, match=r"validate\.csv:4: fewer fields"):
        kinetics_lists(tmp_path, tmp_path / "x")
    (tmp_path / "validate.csv").write_text("label,youtube_id,split\nzumba,v1,val\n")
    with pytest.raises(ValueError, match=r"validate\.csv:1: header lacks time_end, time_start"):
        kinetics_lists(tmp_path, tmp_path / "x")


def test_finegym(tmp_path):
    (tmp_path / "gym99_train_element_v1.1.txt").write_text(
        "A0xAXXysHUo_E_002407_002435_A_0003_0005 12\nB1_E_000001_000002_A_0001_0002 0\n\n"
        "C2_E_000010_000020_A_0000_0001 98\n")
    (tmp_path / "gym99_val_element.txt").write_text("V1_E_000001_000002_A_0001_0002 5\nV2_E_1_2_A_3_4 12\n")
    paths = finegym_lists(tmp_path, tmp_path / "gym99")
    assert lines(paths["train"]) == ["A0xAXXysHUo_E_002407_002435_A_0003_0005.mp4 12",
                                     "B1_E_000001_000002_A_0001_0002.mp4 0", "C2_E_000010_000020_A_0000_0001.mp4 98"]
    assert lines(paths["val"]) == ["V1_E_000001_000002_A_0001_0002.mp4 5", "V2_E_1_2_A_3_4.mp4 12"]
    assert lines(paths["classes"]) == [str(c) for c in range(99)]

    # a subset: given order, renumbered 0..k-1, the original ids in classes.txt, other classes dropped
    subset = finegym_lists(tmp_path, tmp_path / "subset", keep=[12, 5, 0])
    assert lines(subset["train"]) == ["A0xAXXysHUo_E_002407_002435_A_0003_0005.mp4 0",
                                      "B1_E_000001_000002_A_0001_0002.mp4 2"]
    assert lines(subset["val"]) == ["V1_E_000001_000002_A_0001_0002.mp4 1", "V2_E_1_2_A_3_4.mp4 0"]
    assert lines(subset["classes"]) == ["12", "5", "0"]
    for keep in ([1, 1], [99]):
        with pytest.raises(ValueError, match="keep must be distinct class ids in"):
            finegym_lists(tmp_path, tmp_path / "x", keep=keep)

    (tmp_path / "gym288_train_element_v1.1.txt").write_text("a 287\nb 99\n")
    (tmp_path / "gym288_val_element.txt").write_text("c 0\n")
    gym288 = finegym_lists(tmp_path, tmp_path / "gym288", num_classes=288)
    assert lines(gym288["train"]) == ["a.mp4 287", "b.mp4 99"] and len(lines(gym288["classes"])) == 288
    with pytest.raises(ValueError, match="Gym99 and Gym288"):
        finegym_lists(tmp_path, tmp_path / "x", num_classes=100)

    for content, message in (("v 5\nw 99\n", r":2: label 99 is not in \[0, 99\)"), ("v 5\nw -1\n", r":2: label -1 is not in"),
                             ("v 5\n\nw\n", r":3: expected '<clip_name> <label>'"), ("v five\n", r":1: expected")):
        (tmp_path / "gym99_val_element.txt").write_text(content)
        with pytest.raises(ValueError, match=r"gym99_val_element\.txt" + message):
            finegym_lists(tmp_path, tmp_path / "x")


CHARADES_HEADER = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"


def write_charades(folder, test_rows):
    folder.mkdir(exist_ok=True)
    (folder / "Charades_v1_classes.txt").write_text(
        "c000 Holding some clothes\nc001 Putting clothes somewhere\nc002 Taking some clothes from somewhere\n"
        "c003 Throwing clothes somewhere\n")
    (folder / "Charades_v1_train.csv").write_text(
        CHARADES_HEADER
        + 'AAA11,HR43,Kitchen,6,7,Yes,"A person, cooking; then eating.",food;pan,"A man, cooks.",'
          'c003 11.90 21.20;c001 0.00 12.60;c003 1.0 2.0,33.67\n'
        + "BBB22,HR44,Bedroom,5,6,Yes,sleeps,bed,sleeps,,12.0\n"
        + "CCC33,HR45,Garage,,,No,x,,x,c000 0.0 3.0,5.0\n")
    (folder / "Charades_v1_test.csv").write_text(CHARADES_HEADER + test_rows)


def test_charades(tmp_path):
    write_charades(tmp_path / "ch", "ZZZ99,HR1,Hall,7,7,Yes,walks,door,walks,c002 0.1 0.5,10.0\n")
    paths = charades_lists(tmp_path / "ch", tmp_path / "lists")
    assert lines(paths["train"]) == ["AAA11.mp4 1,3", "BBB22.mp4 -", "CCC33.mp4 0"]
    assert lines(paths["val"]) == ["ZZZ99.mp4 2"]
    assert paths["train"].endswith("train_multilabel.csv") and paths["val"].endswith("val_multilabel.csv")
    assert lines(paths["classes"]) == ["Holding some clothes", "Putting clothes somewhere",
                                       "Taking some clothes from somewhere", "Throwing clothes somewhere"]
    assert load_multilabel_list(paths["train"], root="/ch", num_classes=4) == [
        ("/ch/AAA11.mp4", [1, 3]), ("/ch/BBB22.mp4", []), ("/ch/CCC33.mp4", [0])]

    write_charades(tmp_path / "bad", "ZZZ99,HR1,Hall,7,7,Yes,walks,door,walks,c157 0.1 0.5,10.0\n")
    with pytest.raises(ValueError, match=r"Charades_v1_test\.csv:2: action 'c157 0\.1 0\.5' is not"):
        charades_lists(tmp_path / "bad", tmp_path / "x")
    write_charades(tmp_path / "bad", "ZZZ99,HR1,Hall,7,7,Yes,walks,door,walks,c002 0.1,10.0\n")
    with pytest.raises(ValueError, match=r"Charades_v1_test\.csv:2: action 'c002 0\.1'"):
        charades_lists(tmp_path / "bad", tmp_path / "x")
    write_charades(tmp_path / "bad", "ZZZ99,HR1\n")
    with pytest.raises(ValueError, match=r"Charades_v1_test\.csv:2: fewer fields"):
        charades_lists(tmp_path / "bad", tmp_path / "x")


def test_multilabel_and_count_readers(tmp_path):
    bad = tmp_path / "bad.csv"
    for text, message in [("a.mp4 1,2\nb.mp4 1,,2\n", r"bad\.csv:2: labels '1,,2' are not"),
                          ("a.mp4 1,x\n", r"bad\.csv:1: labels '1,x'"),
                          ("a.mp4 1\n\nb.mp4\n", r"bad\.csv:3: expected 'path value'"),
                          ("a.mp4 0,4\n", r"bad\.csv:1: label 4 is not in \[0, 4\)"),
                          ("\n", r"bad\.csv: no videos listed")]:
        bad.write_text(text)
        with pytest.raises(AnnotationError, match=message):
            load_multilabel_list(bad, num_classes=4)
    with pytest.raises(AnnotationError, match="missing.csv: annotation file does not exist"):
        load_multilabel_list(tmp_path / "missing.csv")
    (tmp_path / "ok.csv").write_text("/abs/my video.mp4 2,0,2\n")
    assert load_multilabel_list(tmp_path / "ok.csv", root="/r") == [("/abs/my video.mp4", [0, 2])]

    (tmp_path / "counts.csv").write_text("A/v_A_g01_c01.avi 4\nB/b b.avi 0\n")
    assert load_count_list(tmp_path / "counts.csv", root="/ucf") == [("/ucf/A/v_A_g01_c01.avi", 4),
                                                                     ("/ucf/B/b b.avi", 0)]
    for text, message in [("a.avi 3\nb.avi -1\n", r"bad\.csv:2: count '-1' is not an integer >= 0"),
                          ("a.avi 2.5\n", r"bad\.csv:1: count '2\.5'"), ("a.avi\n", r"bad\.csv:1: expected")]:
        bad.write_text(text)
        with pytest.raises(AnnotationError, match=message):
            load_count_list(bad)


def write_mat(path, bounds):
    from scipy.io import savemat

    # the layout of the authors' files: struct 'label' with a column vector of cycle boundaries (frame numbers)
    savemat(path, {"label": {"duration": np.array([[200]], np.uint8), "start_frame": np.array([[1]], np.uint8),
                             "end_frame": np.array([[bounds[-1] if bounds else 1]], np.uint8),
                             "temporal_bound_num": np.array([[len(bounds)]], np.uint8),
                             "temporal_bound": np.array(bounds, np.uint8).reshape(-1, 1)}})


def test_ucfrep(tmp_path):
    ann = tmp_path / "annotations"
    (ann / "train").mkdir(parents=True)
    (ann / "val").mkdir()
    write_mat(ann / "train" / "v_JumpingJack_g02_c03.mat", [1, 29, 64, 105, 155])
    write_mat(ann / "train" / "v_HandStandPushups_g01_c04.mat", [1, 67, 130])
    write_mat(ann / "val" / "v_BabyCrawling_g01_c01.mat", [10, 46, 79])
    write_mat(ann / "val" / "v_Rowing_g05_c02.mat", [7])   # one boundary: no full cycle
    (ann / "train" / "notes.txt").write_text("ignored\n")
    paths = ucfrep_lists(ann, tmp_path / "lists")
    assert sorted(paths) == ["train", "val"]   # counts only, no classes.txt
    # sorted by file name; the folder of HandStandPushups' files is UCF101's HandstandPushups
    assert lines(paths["train"]) == ["HandstandPushups/v_HandStandPushups_g01_c04.avi 2",
                                     "JumpingJack/v_JumpingJack_g02_c03.avi 4"]
    assert lines(paths["val"]) == ["BabyCrawling/v_BabyCrawling_g01_c01.avi 2", "Rowing/v_Rowing_g05_c02.avi 0"]
    assert paths["train"].endswith("train_counts.csv")
    assert load_count_list(paths["val"], root="/ucf") == [("/ucf/BabyCrawling/v_BabyCrawling_g01_c01.avi", 2),
                                                           ("/ucf/Rowing/v_Rowing_g05_c02.avi", 0)]

    write_mat(ann / "val" / "v_Rowing_g06_c01.mat", [5, 30, 30])
    with pytest.raises(ValueError, match=r"v_Rowing_g06_c01\.mat: temporal_bound \[5, 30, 30\] is not increasing"):
        ucfrep_lists(ann, tmp_path / "x")
    (ann / "val" / "v_Rowing_g06_c01.mat").write_bytes(b"not a mat file")
    with pytest.raises(ValueError, match=r"v_Rowing_g06_c01\.mat: not a MATLAB file"):
        ucfrep_lists(ann, tmp_path / "x")
    (ann / "val" / "v_Rowing_g06_c01.mat").unlink()
    write_mat(ann / "val" / "Rowing_6.mat", [1, 2])
    with pytest.raises(ValueError, match=r"Rowing_6\.mat: not a UCF101 video name"):
        ucfrep_lists(ann, tmp_path / "x")
    with pytest.raises(ValueError, match=r"nowhere/train: annotation folder does not exist"):
        ucfrep_lists(tmp_path / "nowhere", tmp_path / "x")


def test_cli(tmp_path, capsys):
    (tmp_path / "gym99_train_element_v1.1.txt").write_text("a 3\nb 7\nc 1\n")
    (tmp_path / "gym99_val_element.txt").write_text("d 7\n")
    assert main(["finegym", str(tmp_path), str(tmp_path / "out"), "--keep", "7,3", "--ext", ".mkv"]) == 0
    assert "train.csv" in capsys.readouterr().out
    assert lines(tmp_path / "out" / "train.csv") == ["a.mkv 1", "b.mkv 0"]
    assert lines(tmp_path / "out" / "val.csv") == ["d.mkv 0"]
    assert lines(tmp_path / "out" / "classes.txt") == ["7", "3"]
    write_ssv2(tmp_path / "ssv2")
    assert main(["ssv2", str(tmp_path / "ssv2"), str(tmp_path / "ssv2_out")]) == 0
    assert lines(tmp_path / "ssv2_out" / "val.csv") == ["5.webm 0"]
