"""MMSA label.csv reading: both layouts, split aliases, CSV quoting, one-line errors for bad rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from avret.errors import DataError
from avret.sentiment.label_files import (
    by_split,
    check_teacher_coverage,
    default_data_path,
    load_label_csv,
    read_teacher_scores,
    resolve_label_csv,
    write_teacher_scores,
)


def _write(tmp_path: Path, text: str, name: str = "label.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_id_layout_and_quoting(tmp_path: Path) -> None:
    p = _write(tmp_path, 'id,text,label,mode\na_1,"well, it was ""great""",2.4,train\n'
                         "a_2,meh,-0.5,valid\na_3,bad,-3,test\n")
    ex = load_label_csv(p)
    assert [e.id for e in ex] == ["a_1", "a_2", "a_3"]
    assert ex[0].text == 'well, it was "great"'
    assert ex[0].label == pytest.approx(2.4)
    assert [e.split for e in ex] == ["train", "dev", "test"]
    assert [e.id for e in by_split(ex, "valid")] == ["a_2"]


def test_video_clip_layout(tmp_path: Path) -> None:
    p = _write(tmp_path, "video_id,clip_id,text,label,label_T,annotation,mode\n"
                         "vid,3,nice movie,1.0,1.0,Positive,dev\nvid,4,awful,-2.0,-2,Negative,train\n")
    ex = load_label_csv(p)
    assert [e.id for e in ex] == ["vid_3", "vid_4"]
    assert [e.split for e in ex] == ["dev", "train"]


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ("a_2,,1.0,train", "text"),
        ("a_2,hello,abc,train", "label"),
        ("a_2,hello,3.5,train", "label"),
        ("a_2,hello,nan,train", "label"),
        ("a_2,hello,1.0,holdout", "mode"),
        (",hello,1.0,train", "id"),
    ],
)
def test_bad_rows_name_file_line_field(tmp_path: Path, row: str, field: str) -> None:
    p = _write(tmp_path, f"id,text,label,mode\na_1,fine,0.0,train\n{row}\n")
    with pytest.raises(DataError) as err:
        load_label_csv(p)
    msg = str(err.value)
    assert str(p) in msg and "line 3" in msg and f"'{field}'" in msg
    assert "\n" not in msg


def test_missing_columns_and_duplicates(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no 'id' column"):
        load_label_csv(_write(tmp_path, "name,text,label,mode\nx,y,0,train\n"))
    with pytest.raises(DataError, match="no 'mode' column"):
        load_label_csv(_write(tmp_path, "id,text,label\nx,y,0\n"))
    with pytest.raises(DataError, match="repeats line 2"):
        load_label_csv(_write(tmp_path, "id,text,label,mode\nx,y,0,train\nx,z,1,test\n"))
    with pytest.raises(DataError, match="no such file"):
        resolve_label_csv(tmp_path / "nope.csv")


def test_resolve_directory(tmp_path: Path) -> None:
    _write(tmp_path, "id,text,label,mode\nx,y,0,train\n")
    assert resolve_label_csv(tmp_path) == tmp_path / "label.csv"
    assert default_data_path("mosi").parts[-3:] == ("data", "mosi", "label.csv")


def test_teacher_scores_roundtrip_and_coverage(tmp_path: Path) -> None:
    ex = load_label_csv(_write(tmp_path, "id,text,label,mode\na,x,1,train\nb,y,-1,train\nc,z,0,test\n"))
    f = tmp_path / "scores.csv"
    write_teacher_scores(f, {"a": 0.5, "b": -0.25})
    scores = read_teacher_scores(f)
    assert scores == {"a": 0.5, "b": -0.25}
    check_teacher_coverage(scores, ex, f)  # test rows need no score
    write_teacher_scores(f, {"a": 0.5})
    with pytest.raises(DataError, match="no teacher score for train id 'b'"):
        check_teacher_coverage(read_teacher_scores(f), ex, f)
    bad = _write(tmp_path, "id,score\na,high\n", "bad.csv")
    with pytest.raises(DataError, match="line 2: field 'score'"):
        read_teacher_scores(bad)


def test_real_mosi_if_present() -> None:
    path = default_data_path("mosi")
    if not path.is_file():
        pytest.skip("real MOSI label.csv not present")
    ex = load_label_csv(path)
    counts = {s: len(by_split(ex, s)) for s in ("train", "dev", "test")}
    assert counts == {"train": 1281, "dev": 229, "test": 685}
    assert all(-3 <= e.label <= 3 for e in ex)
