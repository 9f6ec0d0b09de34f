# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Data pre-flight: every bad image or mask is named, all at once; the skip mode leaves them out and lists them."""

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from anomalib_dcam.cli import main as cli_main
from anomalib_dcam.data import MultiClassMVTec
from anomalib_dcam.data.preflight import BadDataError
from test_multiclass import make_category


@pytest.fixture
def damaged_root(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """Two categories; category a has a truncated image, an empty file and a mask of the wrong size."""
    root = tmp_path / "damaged"
    make_category(root, "a", train_images=6, seed=0)
    make_category(root, "b", train_images=6, seed=1)
    truncated = root / "a" / "train" / "good" / "001.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    empty = root / "a" / "test" / "good" / "000.png"
    empty.write_bytes(b"")
    wrong_size = root / "a" / "ground_truth" / "square" / "001_mask.png"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(wrong_size)
    return root, {"truncated": truncated, "empty": empty, "wrong_size": wrong_size}


def test_every_bad_file_is_named_at_once(damaged_root: tuple[Path, dict[str, Path]]) -> None:
    root, bad = damaged_root
    datamodule = MultiClassMVTec(root=root, categories=["a", "b"], num_workers=0)
    with pytest.raises(BadDataError) as raised:
        datamodule.setup()
    reasons = {Path(problem.path).name: problem.reason for problem in raised.value.bad_files}
    assert len(raised.value.bad_files) == 3
    assert "does not decode" in reasons["001.png"]
    assert "truncated" in reasons["001.png"]
    assert reasons["000.png"] == "empty file"
    assert "mask is 16x16" in reasons["001_mask.png"]
    message = str(raised.value)
    assert all(str(path) in message for path in bad.values())
    assert "bad_files='skip'" in message


def test_skip_mode_leaves_bad_files_out_and_lists_them(
    damaged_root: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    root, bad = damaged_root
    datamodule = MultiClassMVTec(root=root, categories=["a", "b"], num_workers=0, bad_files="skip")
    datamodule.trainer = SimpleNamespace(default_root_dir=str(tmp_path / "run"))
    datamodule.setup()
    used = {*datamodule.train_data.samples.image_path, *datamodule.val_data.samples.image_path}
    used |= {*datamodule.test_data.samples.image_path, *datamodule.test_data.samples.mask_path}
    assert not {str(path) for path in bad.values()} & used
    assert len(datamodule.test_data) == 8 - 2  # the empty normal and the defect whose mask is the wrong size
    with (tmp_path / "run" / "skipped_files.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert {row["path"] for row in rows} == {str(path) for path in bad.values()}


def test_missing_masks_are_named_for_every_category(tmp_path: Path) -> None:
    root = tmp_path / "masks"
    make_category(root, "a", seed=0)
    make_category(root, "b", seed=1)
    for category in ("a", "b"):
        (root / category / "ground_truth" / "square" / "000_mask.png").unlink()
    truncated = root / "b" / "train" / "good" / "002.png"
    truncated.write_bytes(truncated.read_bytes()[:100])
    # Every missing mask and every file that does not decode, in one error.
    with pytest.raises(
        ValueError, match=r"(?s)'a' has defect images without a mask.*000.png.*'b' has defect"
    ) as raised:
        MultiClassMVTec(root=root, categories=["a", "b"], num_workers=0).setup()
    assert f"{truncated}: does not decode" in str(raised.value)


def test_bad_files_option_is_checked(tmp_path: Path) -> None:
    make_category(tmp_path / "ok", "a")
    with pytest.raises(ValueError, match=r"bad_files='ignore' is not accepted; use one of 'error', 'skip', 'off'"):
        MultiClassMVTec(root=tmp_path / "ok", bad_files="ignore")


def test_check_data_command(damaged_root: tuple[Path, dict[str, Path]], capsys: pytest.CaptureFixture) -> None:
    root, bad = damaged_root
    assert cli_main(["check-data", str(root)]) == 1
    printed = capsys.readouterr().out
    assert all(str(path) in printed for path in bad.values())
    assert "3 bad file(s)" in printed
    assert "per 1,000 images" in printed
    # Any folder of images (anomalib's Folder layout): decoding only.
    assert cli_main(["check-data", str(root / "b" / "train")]) == 0
    assert cli_main(["check-data", str(root / "a" / "test")]) == 1
