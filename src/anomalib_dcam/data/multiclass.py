# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""One model for many MVTec-layout categories: a dataset and a datamodule over their union.

anomalib's :class:`~anomalib.data.MVTecAD` datamodule trains on one category. :class:`MultiClassMVTec` pools several
categories of the same root into one training set (the "unified" or multi-class setting) and tests on the union of
their test sets. File discovery is anomalib's own: every category is read with
:class:`~anomalib.data.datasets.MVTecADDataset` and the sample tables are concatenated, with a ``category`` column
added so that every sample knows where it came from.

The batches anomalib builds (:class:`~anomalib.data.ImageBatch`) have no category field, but they carry
``image_path``; :func:`categories_by_image_path` maps those paths back to the category, which is what
:class:`anomalib_dcam.callbacks.PerCategoryMetrics` does at test time.

Many lines label images OK/NG and never draw masks: a category without a ``ground_truth/`` folder is read with image
labels only (:func:`has_masks`). It trains and tests with the others; its defect images carry an empty mask so that
batches collate, and the per-category report gives it image metrics only (:func:`categories_without_masks`). A
category whose ``ground_truth/`` exists must still have a mask for every defect image.

Expected layout (the MVTec AD layout)::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/*.png
    <root>/<category>/ground_truth/<defect>/*_mask.png   (optional: without it, image labels only)

Example:
    >>> from anomalib_dcam.data import MultiClassMVTec
    >>> datamodule = MultiClassMVTec(root="./datasets/MVTecAD", categories=["bottle", "cable"])  # doctest: +SKIP
    >>> datamodule.setup()  # doctest: +SKIP
    >>> datamodule.train_data.samples.category.unique()  # doctest: +SKIP
    array(['bottle', 'cable'], dtype=object)
"""

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from tempfile import mkdtemp

import pandas as pd
import torch
from anomalib import TaskType
from anomalib.data import ImageItem
from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.datasets.image.mvtecad import IMG_EXTENSIONS, MVTecADDataset
from anomalib.data.errors import MisMatchError
from anomalib.data.utils import LabelName, Split, TestSplitMode, ValSplitMode, random_split, read_image
from anomalib.data.utils.synthetic import ROOT as SYNTHETIC_ROOT
from anomalib.data.utils.synthetic import SyntheticAnomalyDataset, make_synthetic_dataset
from anomalib.utils.path import resolve_dataset_root
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import Transform
from torchvision.tv_tensors import Mask

from anomalib_dcam._validation import coerce_choice
from anomalib_dcam.data.preflight import (
    BadDataError,
    BadFile,
    check_samples,
    drop_bad_samples,
    image_samples,
    write_skipped,
)
from anomalib_dcam.data.sampler import EpochSeededRandomSampler

__all__ = [
    "CATEGORY_COLUMN",
    "MultiClassMVTec",
    "MultiClassMVTecDataset",
    "categories_by_image_path",
    "categories_without_masks",
    "find_categories",
    "has_masks",
    "resolve_categories",
]

logger = logging.getLogger(__name__)

BAD_FILE_MODES = ("error", "skip", "off")
"""Values of ``MultiClassMVTec(bad_files=...)``."""

CATEGORY_COLUMN = "category"

"""Name of the column of ``dataset.samples`` that holds each sample's category."""

ALL_CATEGORIES_NAME = "all"
"""Run name (``datamodule.category``) when every category found under the root is used."""


def find_categories(root: str | Path) -> list[str]:
    """List the categories under an MVTec-layout root.

    A sub-folder counts as a category when it has a ``train/good`` folder.

    Args:
        root: Dataset root, e.g. ``./datasets/MVTecAD``.

    Returns:
        Sorted category names; empty when ``root`` is not a folder or holds no category.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(child.name for child in root.iterdir() if (child / "train" / "good").is_dir())


def resolve_categories(root: str | Path, categories: Sequence[str] | str | None) -> list[str]:
    """Check ``root`` and turn the ``categories`` option into the list of categories to use.

    Args:
        root: Dataset root.
        categories: Category names, one name, or ``None`` for every category found under ``root``.

    Returns:
        The categories, in the order given (sorted when ``categories`` is ``None``).

    Raises:
        ValueError: If ``root`` is not a folder or holds no category, or if ``categories`` is empty, repeats a name
            or names a category that is not under ``root``. The message names the option and lists the categories
            found.
    """
    root = Path(root)
    if not root.is_dir():
        msg = (
            f"root={str(root)!r} is not an existing folder; it must hold one folder per category in the MVTec AD "
            "layout (<root>/<category>/train/good/*.png)."
        )
        raise ValueError(msg)
    found = find_categories(root)
    if not found:
        msg = (
            f"root={str(root)!r} holds no category; a category is a sub-folder with a train/good folder "
            "(<root>/<category>/train/good/*.png)."
        )
        raise ValueError(msg)
    if categories is None:
        return found
    selected = [categories] if isinstance(categories, str) else [str(category) for category in categories]
    if not selected:
        msg = f"categories=[] selects nothing; pass None to use every category under root ({', '.join(found)})."
        raise ValueError(msg)
    repeated = sorted({category for category in selected if selected.count(category) > 1})
    if repeated:
        msg = f"categories={selected!r} names {', '.join(map(repr, repeated))} more than once; name each once."
        raise ValueError(msg)
    unknown = [category for category in selected if category not in found]
    if unknown:
        msg = (
            f"categories={selected!r}: {', '.join(map(repr, unknown))} not found under root={str(root)!r}; "
            f"accepted values are the categories found there: {', '.join(found)}."
        )
        raise ValueError(msg)
    return selected


def run_name(categories: Sequence[str], available: Sequence[str]) -> str:
    """Name a multi-category run (used by anomalib for the results folder).

    Args:
        categories: The categories in use.
        available: Every category found under the root.

    Returns:
        ``"all"`` when every available category is used, else the names joined with ``+``.
    """
    if sorted(categories) == sorted(available):
        return ALL_CATEGORIES_NAME
    return "+".join(categories)


def _defect_images_without_mask(category_root: Path) -> list[str]:
    """List the defect images of a category that have no ``ground_truth/<defect>/<name>_mask.png``."""
    missing = []
    for defect_folder in sorted(path for path in (category_root / "test").glob("*") if path.is_dir()):
        if defect_folder.name == "good":
            continue
        mask_folder = category_root / "ground_truth" / defect_folder.name
        masks = {path.stem.removesuffix("_mask") for path in mask_folder.glob("*") if path.suffix in IMG_EXTENSIONS}
        missing += [
            f"test/{defect_folder.name}/{path.name}"
            for path in sorted(defect_folder.glob("*"))
            if path.suffix in IMG_EXTENSIONS and path.stem not in masks
        ]
    return missing


def _samples_without_masks(category_root: Path) -> pd.DataFrame:
    """Read a category that has no ``ground_truth/`` folder: image labels only, no masks.

    The table has the columns and order of anomalib's MVTec AD reader (``path``, ``split``, ``label``, ``image_path``,
    ``mask_path``, ``label_index``), with an empty ``mask_path`` everywhere and the classification task.
    """
    category_root = category_root.resolve()  # absolute paths, as anomalib's reader gives
    rows = [
        (str(category_root), path.parts[-3], path.parts[-2], str(path))
        for split in ("train", "test")
        for path in sorted((category_root / split).glob("*/*"))
        if path.suffix in IMG_EXTENSIONS
    ]
    samples = pd.DataFrame(rows, columns=["path", "split", "label", "image_path"])
    samples["mask_path"] = ""
    samples["label_index"] = (samples.label != "good").astype(int)
    return samples.sort_values(by="image_path", ignore_index=True)


def has_masks(category_root: str | Path) -> bool:
    """Whether an MVTec-layout category has pixel masks (a ``ground_truth/`` folder).

    A category without one has image labels only (OK/NG, as on many lines): it gets image metrics, and no pixel
    metrics. A category whose ``ground_truth/`` exists must have a mask for every defect image.
    """
    return (Path(category_root) / "ground_truth").is_dir()


def _category_samples(root: Path, category: str, split: Split | str | None) -> pd.DataFrame:
    """Read one category with anomalib's MVTec AD reader and tag its samples with the category.

    A category without a ``ground_truth/`` folder is read with image labels only (:func:`has_masks`).

    Raises:
        ValueError: If the category has no test images, no training images, or a ``ground_truth/`` folder that lacks
            the mask of a defect image.
    """
    category_root = root / category
    if not has_masks(category_root):
        samples = _samples_without_masks(category_root)
        split_value = split.value if isinstance(split, Split) else split
        if split_value is not None:
            samples = samples[samples.split == split_value].reset_index(drop=True)
        samples.attrs["task"] = TaskType.CLASSIFICATION.value
        return _checked_category_samples(samples, category, category_root, split)
    try:
        # anomalib reads the whole category folder (train, test and ground_truth) whatever the split.
        samples = MVTecADDataset(root=root, category=category, split=split).samples
    except (MisMatchError, ValueError, RuntimeError) as error:
        # anomalib pairs the sorted defect images with the sorted masks; say which image lacks its mask.
        missing = _defect_images_without_mask(category_root)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            msg = (
                f"categories: {category!r} has defect images without a mask under {category_root / 'ground_truth'}:"
                f" {shown}; every test/<defect>/<name>.png needs ground_truth/<defect>/<name>_mask.png."
            )
        else:
            msg = f"categories: {category!r} could not be read from {category_root}: {error}"
        raise ValueError(msg) from error
    return _checked_category_samples(samples, category, category_root, split)


def _checked_category_samples(
    samples: pd.DataFrame,
    category: str,
    category_root: Path,
    split: Split | str | None,
) -> pd.DataFrame:
    """Check that a category has the training and test images its split needs and tag its samples."""
    split_value = split.value if isinstance(split, Split) else split
    for required_split, folder in ((Split.TEST.value, "test"), (Split.TRAIN.value, "train/good")):
        if split_value in {None, required_split} and not (samples.split == required_split).any():
            msg = f"categories: {category!r} has no {required_split} image under {category_root / folder}."
            raise ValueError(msg)
    samples[CATEGORY_COLUMN] = category
    return samples


class MultiClassMVTecDataset(AnomalibDataset):
    """Union of several categories of an MVTec-layout root.

    Each category is read with anomalib's :class:`~anomalib.data.datasets.MVTecADDataset`; the sample tables are
    concatenated and get a ``category`` column. Items and batches are anomalib's usual
    :class:`~anomalib.data.ImageItem` / :class:`~anomalib.data.ImageBatch`; map ``image_path`` back to the category
    with :func:`categories_by_image_path`. Grayscale images are read as RGB (anomalib's ``read_image``).

    Args:
        root: Dataset root holding one folder per category.
        categories: Categories to pool; ``None`` for every category under ``root``.
        split: ``"train"``, ``"test"`` or ``None`` for both.
        augmentations: Augmentations applied to every item. Defaults to ``None``.

    Raises:
        ValueError: If ``root`` or ``categories`` is invalid (see :func:`resolve_categories`), or if a category has
            no test images, no training images, or a ``ground_truth/`` folder without the mask of a defect image.

    Example:
        >>> dataset = MultiClassMVTecDataset("./datasets/MVTecAD", ["bottle", "cable"], split="test")  # doctest: +SKIP
        >>> dataset.samples.groupby("category").size()  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | Path,
        categories: Sequence[str] | None = None,
        split: str | Split | None = None,
        augmentations: Transform | None = None,
    ) -> None:
        super().__init__(augmentations=augmentations)
        self.root = Path(root)
        self.split = split
        available = find_categories(self.root)
        self.categories = resolve_categories(self.root, categories)
        frames, errors = [], []
        for category in self.categories:  # every unreadable category is reported at once, not the first only
            try:
                frames.append(_category_samples(self.root, category, split))
            except ValueError as error:
                errors.append(str(error))
        if errors:
            raise ValueError("\n".join(errors))
        samples = pd.concat(frames, ignore_index=True)
        # Segmentation as soon as one category has masks (anomalib infers it whenever it reads masks); the defect
        # images of categories without masks then get an empty mask (see __getitem__).
        tasks = {frame.attrs.get("task", TaskType.SEGMENTATION.value) for frame in frames}
        segmentation = TaskType.SEGMENTATION.value in tasks
        samples.attrs["task"] = TaskType.SEGMENTATION.value if segmentation else TaskType.CLASSIFICATION.value
        self.samples = samples
        self.category = run_name(self.categories, available)

    def __getitem__(self, index: int) -> ImageItem:
        """Anomalib's item; a defect image of a category without masks gets an empty mask in a segmentation set.

        The empty mask only keeps the batch collatable next to categories with masks: its pixels are never scored
        (:class:`~anomalib_dcam.callbacks.PerCategoryMetrics` leaves categories without masks out of pixel metrics,
        :func:`categories_without_masks`).
        """
        sample = self.samples.iloc[index]
        if self.task != TaskType.SEGMENTATION or sample.label_index != LabelName.ABNORMAL or sample.mask_path:
            return super().__getitem__(index)
        image = read_image(sample.image_path, as_tensor=True)
        gt_mask = Mask(torch.zeros(image.shape[-2:], dtype=torch.uint8))
        if self.augmentations:
            image, gt_mask = self.augmentations(image, gt_mask)
        return ImageItem(
            image=image,
            gt_mask=gt_mask,
            gt_label=torch.tensor(int(sample.label_index)),
            image_path=sample.image_path,
            mask_path="",
        )


def _samples_or_none(dataset: object) -> pd.DataFrame | None:
    """Return ``dataset.samples``, or ``None`` for an object without a samples table (or one not set yet)."""
    try:
        return getattr(dataset, "samples", None)
    except RuntimeError:  # anomalib raises when the table was never assigned
        return None


def categories_by_image_path(dataset: AnomalibDataset) -> dict[str, str]:
    """Map each image path of a dataset to its category.

    Works on any anomalib dataset whose ``samples`` table has a ``category`` column, including the subsets that
    anomalib's splitting utilities derive from a :class:`MultiClassMVTecDataset`.

    Args:
        dataset: The dataset, e.g. ``datamodule.test_data``.

    Returns:
        ``{image_path: category}``; empty when the samples carry no category.
    """
    samples = _samples_or_none(dataset)
    if samples is None or CATEGORY_COLUMN not in samples.columns:
        return {}
    return dict(zip(samples.image_path.astype(str), samples[CATEGORY_COLUMN].astype(str), strict=True))


def categories_without_masks(dataset: AnomalibDataset) -> set[str]:
    """The categories of a dataset whose defect images have no masks (image labels only).

    Args:
        dataset: Any anomalib dataset whose ``samples`` have a ``category`` column, e.g. ``datamodule.test_data``.

    Returns:
        The categories with defect images of which none has a mask; empty for a table without categories or
        without defect images (a training set).
    """
    samples = _samples_or_none(dataset)
    if samples is None or CATEGORY_COLUMN not in samples.columns or "mask_path" not in samples.columns:
        return set()
    defects = samples[samples.label_index == LabelName.ABNORMAL]
    with_mask = defects.mask_path.fillna("").astype(str) != ""
    masked = with_mask.groupby(defects[CATEGORY_COLUMN].astype(str)).any()
    return {str(category) for category, any_mask in masked.items() if not any_mask}


class CategorySyntheticAnomalyDataset(SyntheticAnomalyDataset):
    """anomalib's synthetic validation set, made category by category so that every sample keeps its category.

    Half of each category's normals become synthetic anomalies (anomalib's ``make_synthetic_dataset``), written
    under ``<temporary folder>/abnormal/<category>/``; the folder is removed with the dataset, as anomalib's is.

    Args:
        augmentations: Augmentations of the source dataset.
        source_samples: Normal samples with a ``category`` column.
        dataset_name: Name of the temporary folder's parent.
    """

    def __init__(self, augmentations: Transform | None, source_samples: pd.DataFrame, dataset_name: str) -> None:
        AnomalibDataset.__init__(self, augmentations=augmentations)  # the parent's generation is replaced below
        self.source_samples = source_samples
        parent = SYNTHETIC_ROOT / dataset_name
        parent.mkdir(parents=True, exist_ok=True)
        self.root = Path(mkdtemp(dir=parent))
        self.im_dir, self.mask_dir = self.root / "abnormal", self.root / "ground_truth"
        self._cleanup = True
        frames = []
        for category, normals in source_samples.groupby(CATEGORY_COLUMN, sort=False):
            image_dir, mask_dir = self.im_dir / str(category), self.mask_dir / str(category)
            image_dir.mkdir(parents=True)
            mask_dir.mkdir(parents=True)
            samples = make_synthetic_dataset(normals, image_dir, mask_dir, 0.5)
            frames.append(samples.assign(**{CATEGORY_COLUMN: category}))
        self.samples = pd.concat(frames, ignore_index=True)
        self.samples.attrs["task"] = "segmentation"


class MultiClassMVTec(AnomalibDataModule):
    """Datamodule that trains one model on the union of several MVTec-layout categories.

    The options mirror anomalib's :class:`~anomalib.data.MVTecAD`, with ``categories`` in place of ``category``.
    The defaults follow the DCAM paper's model selection: a seeded 20 % of the pooled training images (all normal)
    is held out as the validation set, disjoint from the training set and the same for a given ``seed``. Pair it
    with :class:`anomalib_dcam.callbacks.HeldOutNormalCheckpoint` to keep the checkpoint with the lowest mean anomaly
    score on the held-out normals; test labels are never looked at. By default (``val_split_mode="synthetic"``)
    anomalib adds Perlin anomalies to half of the held-out images, so that the post-processor sets its thresholds
    and normalisation range from anomalous scores as well: with normals alone (``"from_train"``) the threshold is
    the largest normal score and the normalised anomaly maps, in the checkpoint and in every exported model, clip to
    0 almost everywhere. Any other anomalib ``ValSplitMode`` works as with ``MVTecAD`` (e.g. ``"same_as_test"``).

    anomalib names the results folder ``<model>/<datamodule.name>/<datamodule.category>``: here ``name`` is the root
    folder's name (e.g. ``MVTecAD``) and ``category`` is ``"all"`` when every category under ``root`` is used, else
    the category names joined with ``+`` (e.g. ``results/Dcam/MVTecAD/all/v0``).

    Args:
        root: Dataset root holding one folder per category. Defaults to ``"./datasets/MVTecAD"``.
        categories: Categories to pool, e.g. ``["bottle", "magnetic_tile"]``; ``None`` (default) uses every folder
            of ``root`` that has ``train/good``.
        train_batch_size: Training batch size. Defaults to ``32``.
        eval_batch_size: Validation and test batch size. Defaults to ``32``.
        num_workers: Dataloader workers. Defaults to ``8``.
        train_augmentations: Augmentations of the training images. Defaults to ``None``.
        val_augmentations: Augmentations of the validation images. Defaults to ``None``.
        test_augmentations: Augmentations of the test images. Defaults to ``None``.
        augmentations: Augmentations used where no stage-specific one is given. Defaults to ``None``.
        test_split_mode: anomalib ``TestSplitMode``: ``"from_dir"`` (default), ``"synthetic"`` or ``"none"``.
        test_split_ratio: Fraction of training images moved to the test set when the test set has no normal image.
            Defaults to ``0.2``.
        val_split_mode: anomalib ``ValSplitMode``: ``"synthetic"`` (default: held-out normals, half with synthetic
            anomalies), ``"from_train"`` (held-out normals), ``"same_as_test"``, ``"from_test"`` or ``"none"``.
        val_split_ratio: Fraction of the pooled training (or test) images held out for validation.
            Defaults to ``0.2``.
        seed: Seed of the random splits; ``None`` gives a different split each run. Defaults to ``0``.
        bad_files: Data pre-flight when the datamodule sets up (:mod:`anomalib_dcam.data.preflight`): ``"error"``
            (the default) decodes every image and mask and stops with one error naming every bad file; ``"skip"``
            leaves the bad samples out and writes ``skipped_files.csv`` into the run's folder; ``"off"`` trusts the
            files.

    Raises:
        ValueError: If ``root`` does not exist or holds no category, if ``categories`` names a category not under
            ``root`` (the message lists those found), or if a split option is out of range. A category without
            test images, training images or masks for its defect images raises ``ValueError`` at ``setup``.

    Example:
        >>> from anomalib.engine import Engine
        >>> from anomalib_dcam import Dcam
        >>> from anomalib_dcam.callbacks import HeldOutNormalCheckpoint, PerCategoryMetrics
        >>> datamodule = MultiClassMVTec(root="./datasets/MVTecAD", categories=["bottle", "cable"])  # doctest: +SKIP
        >>> engine = Engine(max_epochs=100, callbacks=[HeldOutNormalCheckpoint(), PerCategoryMetrics()])
        >>> engine.train(model=Dcam(), datamodule=datamodule)  # doctest: +SKIP
    """

    def __init__(
        self,
        root: Path | str | None = "./datasets/MVTecAD",
        categories: Sequence[str] | None = None,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        test_split_mode: TestSplitMode | str = TestSplitMode.FROM_DIR,
        test_split_ratio: float = 0.2,
        val_split_mode: ValSplitMode | str = ValSplitMode.SYNTHETIC,
        val_split_ratio: float = 0.2,
        seed: int | None = 0,
        bad_files: str = "error",
    ) -> None:
        # Fail on bad options here rather than deep inside anomalib's splitting code.
        if bad_files not in BAD_FILE_MODES:
            msg = f"bad_files={bad_files!r} is not accepted; use one of {', '.join(map(repr, BAD_FILE_MODES))}."
            raise ValueError(msg)
        self.bad_files = bad_files
        self.skipped_files: list[BadFile] = []
        val_split_mode = coerce_choice(val_split_mode, ValSplitMode, "val_split_mode")
        test_split_mode = coerce_choice(test_split_mode, TestSplitMode, "test_split_mode")
        for option, ratio in (("val_split_ratio", val_split_ratio), ("test_split_ratio", test_split_ratio)):
            if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio < 1:
                msg = f"{option}={ratio!r} is not accepted; it must be a number strictly between 0 and 1."
                raise ValueError(msg)
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            test_split_mode=test_split_mode,
            test_split_ratio=test_split_ratio,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )
        self.root = resolve_dataset_root(root, "MVTecAD")
        self.categories = resolve_categories(self.root, categories)
        self.category = run_name(self.categories, find_categories(self.root))

    @property
    def name(self) -> str:
        """Name of the dataset: the root folder's name, e.g. ``"MVTecAD"``.

        anomalib names the results folder ``<model>/<name>/<category>`` and its image visualizer keeps the part of
        each image path after ``<name>``; with the root's name, heat maps land in
        ``images/<category>/test/<defect>/<file>`` instead of colliding across categories.
        """
        return Path(self.root).resolve().name or self.__class__.__name__

    def _setup(self, _stage: str | None = None) -> None:
        """Read the training and test images of every category.

        anomalib's base class then builds the validation set from these (``val_split_mode``).
        """
        try:
            self.train_data = MultiClassMVTecDataset(root=self.root, categories=self.categories, split=Split.TRAIN)
        except ValueError as error:
            if self.bad_files == "off":
                raise
            # A category anomalib cannot read (e.g. masks missing): name its undecodable files in the same error.
            undecodable = [
                problem
                for category in self.categories
                for problem in check_samples(image_samples(self.root / category))
            ]
            if not undecodable:
                raise
            listed = "\n".join(f"  {bad.path}: {bad.reason}" for bad in undecodable)
            msg = f"{error}\nand {len(undecodable)} file(s) that do not decode:\n{listed}"
            raise ValueError(msg) from error
        self.test_data = MultiClassMVTecDataset(root=self.root, categories=self.categories, split=Split.TEST)
        if self.bad_files != "off":
            self._check_files()

    def _check_files(self) -> None:
        """Decode every image and mask before anything reads them (anomalib's synthetic split does, at set-up)."""
        start = time.perf_counter()
        samples = pd.concat([self.train_data.samples, self.test_data.samples], ignore_index=True)
        problems = check_samples(samples, self.categories)
        logger.info(
            "Data pre-flight: %d images of %d categories and their masks decoded in %.1f s; %d bad file(s).",
            len(samples),
            len(self.categories),
            time.perf_counter() - start,
            len(problems),
        )
        if not problems:
            return
        if self.bad_files == "error":
            raise BadDataError(problems, f"root={str(self.root)!r}")
        for subset in (self.train_data, self.test_data):
            subset.samples = drop_bad_samples(subset.samples, problems)
        emptied = [
            BadFile(category, f"every {name} image of the category is bad")
            for category in self.categories
            for name, subset in (("training", self.train_data), ("test", self.test_data))
            if not (subset.samples[CATEGORY_COLUMN] == category).any()
        ]
        if emptied:
            raise BadDataError([*problems, *emptied], f"root={str(self.root)!r}")
        self.skipped_files = problems
        folder = getattr(getattr(self, "trainer", None), "default_root_dir", None)
        listed = f"; listed in {write_skipped(problems, folder)}" if folder else ""
        logger.warning("bad_files='skip': %d bad file(s) left out%s.", len(problems), listed)

    def _create_val_split(self) -> None:
        """Build the validation set as anomalib does, keeping every sample's category.

        anomalib's synthetic split keeps only its own columns and draws its anomalies from the pooled normals; here
        they are drawn per category (half of each category's held-out normals, as anomalib does overall), so that
        each synthetic anomaly keeps its source's category and per-category calibration can use it.
        """
        if self.val_split_mode == ValSplitMode.SYNTHETIC and len(self.categories) > 1:
            self.train_data, normal_val_data = random_split(self.train_data, self.val_split_ratio, seed=self.seed)
            self.val_data = CategorySyntheticAnomalyDataset.from_dataset(normal_val_data)
            return
        categories = categories_by_image_path(self.train_data)  # a synthetic split draws from the training images
        super()._create_val_split()
        samples = _samples_or_none(getattr(self, "val_data", None))  # val_split_mode="none" sets no val_data
        if samples is not None and len(samples) and CATEGORY_COLUMN not in samples.columns:
            # One category: anomalib's own split, every sample of that category.
            tags = [categories.get(str(path), self.categories[0]) for path in samples.image_path]
            self.val_data.samples = samples.assign(**{CATEGORY_COLUMN: tags})

    def train_dataloader(self) -> DataLoader:
        """Anomalib's training loader, with an order that depends only on ``seed`` and the epoch.

        With it, ``--ckpt_path last.ckpt`` resumes with the same image order as an uninterrupted run (see
        :class:`~anomalib_dcam.data.sampler.EpochSeededRandomSampler`); with ``seed=None`` the order follows
        PyTorch's global random state, as in anomalib.
        """
        if self.seed is None:
            return super().train_dataloader()
        return DataLoader(
            dataset=self.train_data,
            sampler=EpochSeededRandomSampler(self.train_data, seed=self.seed),
            batch_size=self.train_batch_size,
            num_workers=self.num_workers,
            collate_fn=self.external_collate_fn or self.train_data.collate_fn,
        )

    def summary(self) -> pd.DataFrame:
        """Count the images of every subset per category (after :meth:`setup`).

        Returns:
            One row per category with the columns ``train``, ``val`` (held-out normals), ``val_synthetic``
            (synthetic anomalies made from them), ``test_normal`` and ``test_anomalous`` (a subset that does not
            exist, or that carries no category, is left out), and ``masks``: whether the category has pixel masks
            (:func:`has_masks`; without them it gets image metrics only).
        """
        columns = {}
        for subset in ("train", "val", "test"):
            samples = _samples_or_none(getattr(self, f"{subset}_data", None))
            if samples is None or CATEGORY_COLUMN not in samples.columns:
                continue
            anomalous = samples.label_index == LabelName.ABNORMAL
            if subset == "test":
                columns["test_normal"] = samples[~anomalous].groupby(CATEGORY_COLUMN).size()
                columns["test_anomalous"] = samples[anomalous].groupby(CATEGORY_COLUMN).size()
            elif subset == "val":
                columns["val"] = samples[~anomalous].groupby(CATEGORY_COLUMN).size()
                if anomalous.any():
                    columns["val_synthetic"] = samples[anomalous].groupby(CATEGORY_COLUMN).size()
            else:
                columns[subset] = samples.groupby(CATEGORY_COLUMN).size()
        table = pd.DataFrame(columns).reindex(self.categories).fillna(0).astype(int)
        table["masks"] = [has_masks(Path(self.root) / category) for category in self.categories]
        table.index.name = CATEGORY_COLUMN
        return table
