"""DICOM/video decoding to one uint8 convention, fps rules, label maps and dataset layouts."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from preprocess_fixtures import (
    dicom_dataset,
    dicom_tree,
    fan_video,
    id_map,
    jpeg_baseline,
    save,
    small_cfg,
    write_avi,
)

from echoclr_cli.data import labels, readers
from echoclr_cli.data.layouts import discover as layouts
from echoclr_cli.data.manifest import load_manifest
from echoclr_cli.data.store import load_video
from echoclr_cli.data.video_reader import read_video
from echoclr_cli.errors import UserError
from echoclr_cli.preprocess.run import preprocess

OPTS = readers.ReadOptions(max_frames=100, min_frames=8, min_fps=25, fallback_fps=30)


@pytest.fixture(scope="module")
def fan():
    return fan_video(12, 64, 80, seed=7)


def _gray(frames):
    return frames[..., 0]


def test_jpeg_baseline_ybr_422_decodes_to_rgb(tmp_path, fan):
    frames, _ = fan
    ds = dicom_dataset(frames, "RGB")
    jpeg_baseline(ds, frames)
    raw = readers.read_dicom(save(ds, tmp_path / "IM0001"), OPTS)  # no extension, like vendors
    assert raw.frames.shape == frames.shape and raw.frames.dtype == np.uint8
    assert np.abs(raw.frames.astype(int) - frames).mean() < 4  # lossy but RGB, not YBR
    assert (raw.patient_id, raw.study_id, raw.study_year) == ("PAT1", "1.2.826.0.1.1", 2019)


def test_jpeg_baseline_uses_the_reference_decoder_whatever_is_installed(tmp_path, fan):
    """JPEG Baseline always decodes with pillow (readers.REFERENCE_DECODERS), so a dataset does not
    depend on whether the optional GPL decoder happens to be installed (it differs by a few grey
    levels): the pixels equal pydicom's pillow plugin's, and the plugin was asked for by name."""
    from pydicom import dcmread
    from pydicom.pixels import iter_pixels

    frames, _ = fan
    ds = dicom_dataset(frames, "RGB")
    jpeg_baseline(ds, frames)
    path = save(ds, tmp_path / "IM0001.dcm")
    asked = []
    import pydicom.pixels as px

    real = px.iter_pixels

    def spy(*args, **kwargs):
        asked.append(kwargs.get("decoding_plugin"))
        return real(*args, **kwargs)

    import unittest.mock as um

    with um.patch.object(px, "iter_pixels", spy):
        raw = readers.read_dicom(path, OPTS)
    assert set(asked) == {"pillow"}
    ref = np.stack(list(iter_pixels(dcmread(path), decoding_plugin="pillow")))
    assert np.array_equal(raw.frames, ref)


def test_jpeg2000_rgb_palette_16bit_mono1_same_convention(tmp_path, fan):
    from pydicom.uid import JPEG2000Lossless

    frames, _ = fan
    gray = _gray(frames)
    ds = dicom_dataset(frames, "RGB")
    ds.compress(JPEG2000Lossless, frames, encoding_plugin="pylibjpeg")
    assert np.array_equal(readers.read_dicom(save(ds, tmp_path / "j2k.dcm"), OPTS).frames, frames)

    assert np.array_equal(
        readers.read_dicom(save(dicom_dataset(frames), tmp_path / "rgb.dcm"), OPTS).frames, frames
    )

    pal = dicom_dataset(gray, "PALETTE COLOR")  # gray LUT, 16-bit entries
    lut = (np.arange(256, dtype=np.uint16) * 257).tobytes()
    for c in ("Red", "Green", "Blue"):
        setattr(pal, f"{c}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(pal, f"{c}PaletteColorLookupTableData", lut)
    got = readers.read_dicom(save(pal, tmp_path / "pal.dcm"), OPTS).frames
    assert got.shape == frames.shape and np.array_equal(got[..., 1], gray)

    wide = gray.astype(np.uint16) * 16 + 100  # 16-bit, scaled by its actual range
    got16 = readers.read_dicom(
        save(dicom_dataset(wide, "MONOCHROME2"), tmp_path / "w.dcm"), OPTS
    ).frames
    assert got16.dtype == np.uint8 and got16.max() == 255 and got16.min() == 0
    assert np.corrcoef(got16.ravel(), gray.ravel())[0, 1] > 0.999

    inv = readers.read_dicom(
        save(dicom_dataset(255 - gray, "MONOCHROME1"), tmp_path / "m1.dcm"), OPTS
    ).frames
    assert np.array_equal(inv, gray)


@pytest.mark.parametrize(
    "tags, fps, source",
    [
        ({"cine_rate": 50.0}, 50.0, "CineRate"),
        ({"cine_rate": None, "frame_time": 20.0}, 50.0, "FrameTime"),
        ({"cine_rate": None, "frame_time_vector": [0.0] + [25.0] * 11}, 40.0, "FrameTimeVector"),
        ({"cine_rate": None}, 30.0, "fallback"),
    ],
)
def test_fps_sources(tmp_path, fan, tags, fps, source):
    raw = readers.read_dicom(save(dicom_dataset(fan[0], **tags), tmp_path / "a.dcm"), OPTS)
    assert raw.fps == pytest.approx(fps) and raw.fps_source == source


def test_regions_read(tmp_path, fan):
    raw = readers.read_dicom(
        save(dicom_dataset(fan[0], regions=[(5, 2, 70, 50)]), tmp_path / "r.dcm"), OPTS
    )
    assert raw.regions == [(5, 2, 70, 50)]


def test_avi_frames_counted_not_header(tmp_path, fan):
    path = write_avi(tmp_path / "a.avi", fan[0], fps=40)
    raw = read_video(path, OPTS)
    assert raw.frames.shape == fan[0].shape and raw.fps == pytest.approx(40)
    short = read_video(path, readers.ReadOptions(max_frames=5, min_frames=2))
    assert short.frames.shape[0] == 5  # first max_frames kept


def test_label_map_expressions():
    df = pd.DataFrame(
        {
            "sev": ["Severe", "Mild", "", "severe"],
            "ef": ["45", "60", "x", ""],
            "y": ["1", "0", "2", ""],
        }
    )
    v, bad = labels.map_label(df, "sev==Severe", "t")
    assert v.tolist()[:2] == [1.0, 0.0] and np.isnan(v[2]) and v[3] == 1.0 and not bad.any()
    v, bad = labels.map_label(df, "ef<50", "t")
    assert v.tolist()[:2] == [1.0, 0.0] and bad.tolist() == [False, False, True, False]
    v, bad = labels.map_label(df, "y", "t")
    assert v.tolist()[:2] == [1.0, 0.0] and bad.tolist() == [False, False, True, False]
    with pytest.raises(UserError, match="nope"):
        labels.map_label(df, "nope>=1", "t")


# --------------------------------------------------------------------------- layouts
def _echoclr_dir(tmp_path: Path) -> Path:
    root = tmp_path / "echoclr"
    vids = []
    for i in range(6):
        frames, _ = fan_video(10, 96, 120, seed=i)
        write_avi(root / "videos" / f"vid{i}.avi", frames)
        vids.append(f"vid{i}")
    rows = lambda idx, sev: [  # noqa: E731
        {"plax_prob": p, "fpath": f"/home/user/echo/videos/{vids[i]}" + (".avi" if i % 2 else ""),
         "acc_num": f"ACC{i // 2}", "av_stenosis": s, "video_num": i} for i, s, p in zip(idx, sev, [0.9, 0.3], strict=False)
    ]  # fmt: skip
    # train.csv: pandas index column (the published files); val.csv: no header (positional).
    pd.DataFrame(rows([0, 1], ["Severe", "Severe"])).to_csv(root / "train.csv", index=True)
    pd.DataFrame(rows([2, 3], ["Non-Severe", "Non-Severe"])).to_csv(
        root / "val.csv", index=False, header=False
    )
    pd.DataFrame(rows([4, 5], ["None", ""])).to_csv(root / "ext_test.csv", index=False)
    pd.DataFrame({"Accession Number": ["ACC0", "ACC1", "ACC2"],
                  "LVH_LVMi": ["Hypertrophy", "Normal", ""]}).to_csv(root / "echo_labels.csv", index=False)  # fmt: skip
    return root


def test_echoclr_layout(tmp_path):
    root = _echoclr_dir(tmp_path)
    assert layouts.detect_layout(root) == "echoclr"
    res = preprocess(small_cfg(), root, tmp_path / "out")
    df = load_manifest(tmp_path / "out")
    assert res.layout == "echoclr" and len(df) == 6 and res.label_columns == ["as", "lvh"]
    by_split = df.groupby("split")
    assert set(df["split"]) == {"train", "val", "ext_test"}
    assert by_split["as"].apply(list).to_dict()["train"] == [1, 1]
    assert by_split["as"].apply(list).to_dict()["val"] == [0, 0]
    # av_stenosis 'None' is no stenosis (0), never a silent NaN; the empty cell is unknown and
    # counted (FAULTS 46)
    ext = df.loc[df["split"] == "ext_test", "as"]
    assert sorted(ext.fillna(-1).tolist()) == [-1, 0]
    rep = json.loads((tmp_path / "out" / "labels_report.json").read_text())
    assert rep["issues"]["empty_value"]["count"] == 3  # 1 av_stenosis + 2 rows of ACC2's LVH
    assert not rep["issues"]["empty_value"]["error"] and rep["n_errors"] == 0
    assert sorted(df.groupby("split")["lvh"].max().fillna(-1).tolist()) == [-1, 0, 1]

    view = small_cfg(view_column="plax_prob", view_min=0.5)
    res = preprocess(view, root, tmp_path / "out_view")
    assert res.n_videos == 3 and res.skipped_by_reason == {"view_filter": 3}


def test_echonet_layout(tmp_path):
    root = tmp_path / "EchoNet-Dynamic"
    names, efs = [], [30.0, 65.0, 55.0, 40.0]
    for i, _ef in enumerate(efs):
        frames, _ = fan_video(10, 96, 120, seed=10 + i)
        write_avi(root / "Videos" / f"0X{i:04X}.avi", frames, fps=50)
        names.append(f"0X{i:04X}" + (".avi" if i == 3 else ""))
    pd.DataFrame({"FileName": names, "EF": efs, "FPS": 50, "NumberOfFrames": 10,
                  "Split": ["TRAIN", "TRAIN", "VAL", "TEST"]}).to_csv(root / "FileList.csv", index=False)  # fmt: skip
    assert layouts.detect_layout(root) == "echonet"
    res = preprocess(small_cfg(label_threshold={"EF": 50.0}), root, tmp_path / "out")
    df = load_manifest(tmp_path / "out", task="ef")
    assert res.n_videos == 4 and df["split"].tolist() == ["train", "train", "val", "test"]
    assert df["ef"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert df["patient_id"].nunique() == 4


def test_plain_tree_with_label_csv_keyed_by_study(tmp_path):
    root = dicom_tree(tmp_path / "raw", 4, frames=10, seed=20, study="1.2.3")
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"StudyInstanceUID": [f"1.2.3.{i}" for i in range(4)],
                  "severity": ["severe", "mild", "severe", "moderate"]}).to_csv(labels, index=False)  # fmt: skip
    cfg = small_cfg(labels=labels, label_map={"as": "severity==severe"})
    res = preprocess(cfg, root, tmp_path / "out")
    df = load_manifest(tmp_path / "out")
    ids = id_map(tmp_path / "out")
    orig = dict(zip(ids["hashed"], ids["original"], strict=True))
    got = {orig[s]: a for s, a in zip(df["study_id"], df["as"], strict=True)}
    assert res.label_columns == ["as"] and got == {
        "1.2.3.0": 1,
        "1.2.3.1": 0,
        "1.2.3.2": 1,
        "1.2.3.3": 0,
    }
    text = (tmp_path / "out" / "manifest.csv").read_text()
    assert "PAT0" not in text and "1.2.3.0" not in text  # de-identified
    assert load_video(tmp_path / "out" / df["path"][0]).shape == (10, 32, 32)
