# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

r"""Calibration data for INT8 quantization: training normals, random-normal noise, or normals with Perlin anomalies.

Post-training quantization (``INT8_PTQ``) and accuracy-controlled quantization (``INT8_ACQ``) estimate the range of
every activation from a calibration set. The datamodules here choose that set:

- :class:`NormalsCalibration`: normal training images of a wrapped datamodule (what the model was trained on).
- :class:`RandomNormalCalibration`: images drawn from a standard normal distribution, as in the DCAM paper; no data
  needed. See the class for what "standard normal" means for a model that contains its own pre-processor.
- :class:`SyntheticAnomalyCalibration`: normal training images of which a share carries a synthetic defect made by
  anomalib's :class:`~anomalib.data.utils.generators.perlin.PerlinAnomalyGenerator`, so that the calibrated ranges also
  cover the larger teacher-student discrepancies that anomalies cause.

Every calibration image is resized to ``image_size``, the exported model's input size, whatever the size of the data
images: an IR exported with a static ``input_size`` accepts nothing else. When the export goes through
:func:`anomalib_dcam.deploy.export_openvino` (or ``Dcam.to_openvino`` with
:class:`~anomalib_dcam.deploy.OpenVINOQuantizationMixin`), ``image_size`` and the normalisation statistics are taken
from the exported model; set them yourself for other export paths.

The datamodules are for export only. anomalib's quantization reads calibration batches from ``val_dataloader()`` and
validates ``INT8_ACQ`` candidates on ``test_dataloader()``, so both are defined accordingly:

- ``train_dataloader()`` and ``val_dataloader()`` yield the calibration images (``batch_size`` per batch);
- ``test_dataloader()`` yields the labelled validation images of the wrapped datamodule (its validation split, else
  its test split), resized like the calibration images, for ``INT8_ACQ``.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib_dcam.deploy import NormalsCalibration
    >>> calibration = NormalsCalibration(MVTecAD(category="bottle"), image_size=256)  # doctest: +SKIP

From the command line::

    anomalib export --model Dcam --ckpt_path model.ckpt --export_type openvino --input_size "[256,256]" \
        --compression_type INT8_PTQ --data anomalib_dcam.deploy.NormalsCalibration \
        --data.datamodule MVTecAD --data.datamodule.root ./datasets/MVTecAD --data.datamodule.category bottle \
        --data.image_size "[256,256]"
"""

import copy
import logging
from collections.abc import Sequence
from enum import Enum
from pathlib import Path

import torch
from anomalib import TaskType
from anomalib.data import AnomalibDataModule, ImageBatch
from anomalib.data.datasets.base.image import AnomalibDataset
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms.v2 import Resize

from anomalib_dcam._validation import check_unit_interval, coerce_choice

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CalibrationDataModule",
    "CalibrationSource",
    "NoiseSpace",
    "NormalsCalibration",
    "RandomNormalCalibration",
    "SyntheticAnomalyCalibration",
    "build_calibration_datamodule",
]

# anomalib's default pre-processor normalises with the ImageNet statistics (AnomalibModule.configure_pre_processor).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# anomalib's default pre-processor size, used when neither the user nor the exported model gives one.
DEFAULT_IMAGE_SIZE = (256, 256)
# NNCF's default calibration subset size.
DEFAULT_NUM_IMAGES = 300


class CalibrationSource(str, Enum):
    """Where the INT8 calibration images come from."""

    NORMALS = "normals"
    RANDOM_NORMAL = "random_normal"
    SYNTHETIC_ANOMALIES = "synthetic_anomalies"


class NoiseSpace(str, Enum):
    """Space in which :class:`RandomNormalCalibration` draws its standard-normal values."""

    NORMALIZED = "normalized"
    PIXEL = "pixel"


def _image_size(value: int | Sequence[int] | None, option: str = "image_size") -> tuple[int, int] | None:
    """Turn ``256`` or ``[256, 256]`` into ``(256, 256)``; ``None`` stays ``None``."""
    if value is None:
        return None
    size = [value, value] if isinstance(value, int) else list(value)
    if len(size) != 2 or not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in size):
        msg = f"{option}={value!r} is not accepted; pass a positive integer or [height, width]."
        raise ValueError(msg)
    return int(size[0]), int(size[1])


def _channel_stats(value: Sequence[float] | None, option: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    stats = tuple(float(item) for item in value)
    if len(stats) != 3:
        msg = f"{option}={value!r} is not accepted; pass three per-channel values (RGB)."
        raise ValueError(msg)
    return stats  # type: ignore[return-value]


def _check_count(value: int, option: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        msg = f"{option}={value!r} is not accepted; it must be an integer >= {minimum}."
        raise ValueError(msg)
    return value


def _collate_images(images: list[torch.Tensor]) -> ImageBatch:
    """Batch generated images; the batch carries only ``image``, which is all calibration needs."""
    return ImageBatch(image=torch.stack(images))


def _resized_copy(dataset: AnomalibDataset, image_size: tuple[int, int] | None) -> AnomalibDataset:
    """A copy of ``dataset`` that only resizes (masks too), leaving the original dataset untouched.

    Random training augmentations of the source datamodule are dropped on purpose: calibration must be repeatable.
    """
    resized = copy.copy(dataset)
    # The same resize as anomalib's default pre-processor, so calibration sees what the exported model sees.
    resized.augmentations = Resize(image_size, antialias=True) if image_size is not None else None
    return resized


class _RandomNormalImages(Dataset):
    """``count`` images of i.i.d. standard-normal values, reproducible per index."""

    def __init__(
        self,
        count: int,
        image_size: tuple[int, int],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        space: NoiseSpace,
        seed: int,
    ) -> None:
        self.count = count
        self.image_size = image_size
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.space = space
        self.seed = seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + index)
        noise = torch.randn(3, *self.image_size, generator=generator)
        if self.space == NoiseSpace.PIXEL:
            return noise
        # N(0, 1) after the model's own normalisation: invert (x - mean) / std.
        return self.mean + self.std * noise


class _PerlinAnomalyImages(Dataset):
    """Normal images of which a share gets a Perlin-shaped synthetic defect; reproducible per index."""

    def __init__(
        self,
        normals: Dataset,
        probability: float,
        anomaly_source_path: str | Path | None,
        seed: int,
    ) -> None:
        from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator

        self.normals = normals
        self.seed = seed
        self.generator = PerlinAnomalyGenerator(anomaly_source_path=anomaly_source_path, probability=probability)

    def __len__(self) -> int:
        return len(self.normals)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.normals[index].image
        # The generator draws from torch's global generator: seed it per image, without disturbing the caller's.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + index)
            augmented, _ = self.generator(image)
        return augmented.clamp(0.0, 1.0)


class CalibrationDataModule(AnomalibDataModule):
    """Base class of the calibration datamodules: resized calibration images plus labelled validation images.

    Args:
        datamodule: The datamodule whose images are used (training normals for calibration, its validation split for
            ``INT8_ACQ``). Optional for sources that need no data.
        image_size: Side or ``[height, width]`` of the calibration images: the export ``input_size``. ``None`` keeps
            the data images' size, unless the export fills it in (see the module docstring).
        num_images: Number of calibration images (at most the number available). Defaults to ``300``.
        batch_size: Calibration images per batch. Defaults to ``1``.
        eval_batch_size: Validation images per batch (``INT8_ACQ``). Defaults to the wrapped datamodule's.
        seed: Seed of the image subset and of generated images. Defaults to ``0``.

    Raises:
        ValueError: If an option is out of range; the message names the option.
    """

    source: CalibrationSource

    def __init__(
        self,
        datamodule: AnomalibDataModule | None = None,
        image_size: int | Sequence[int] | None = None,
        num_images: int = DEFAULT_NUM_IMAGES,
        batch_size: int = 1,
        eval_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        if datamodule is not None and not isinstance(datamodule, AnomalibDataModule):
            msg = f"datamodule={datamodule!r} is not accepted; pass an anomalib datamodule (e.g. MVTecAD) or None."
            raise TypeError(msg)
        if eval_batch_size is None:
            eval_batch_size = datamodule.eval_batch_size if datamodule is not None else 1
        super().__init__(
            train_batch_size=_check_count(batch_size, "batch_size"),
            eval_batch_size=_check_count(eval_batch_size, "eval_batch_size"),
            num_workers=datamodule.num_workers if datamodule is not None else 0,
            seed=seed,
        )
        self.datamodule = datamodule
        self.image_size = _image_size(image_size)
        self.num_images = _check_count(num_images, "num_images")
        self._is_source_setup = False

    @property
    def name(self) -> str:
        """Name of the wrapped datamodule, or of this one when there is none."""
        return self.datamodule.name if self.datamodule is not None else self.__class__.__name__

    @property
    def category(self) -> str:
        """Category of the wrapped datamodule (empty without one)."""
        return self.datamodule.category if self.datamodule is not None else ""

    @category.setter
    def category(self, category: str) -> None:
        if self.datamodule is not None:
            self.datamodule.category = category

    @property
    def task(self) -> TaskType:
        """Task of the wrapped datamodule; classification when there is none."""
        if self.datamodule is None:
            return TaskType.CLASSIFICATION
        self._setup_source()
        return self.datamodule.task

    def configure_for_export(
        self,
        image_size: tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        """Fill in what the exported model knows and the user left unset: input size and normalisation.

        Values the user passed to the constructor are kept.

        Args:
            image_size: The exported model's static input size, or its pre-processor's size.
            mean: Per-channel mean of the model's normalisation.
            std: Per-channel standard deviation of the model's normalisation.
        """
        del mean, std  # only the random-normal source uses them
        if self.image_size is None and image_size is not None:
            self.image_size = _image_size(tuple(image_size))

    def setup(self, stage: str | None = None) -> None:
        """Set up the wrapped datamodule; calibration images are produced lazily by the dataloaders."""
        del stage
        self._setup_source()

    def _setup(self, _stage: str | None = None) -> None:
        self._setup_source()

    def _setup_source(self) -> None:
        if self.datamodule is not None and not self._is_source_setup:
            self.datamodule.setup("fit")
            self._is_source_setup = True

    def _require_datamodule(self, purpose: str) -> AnomalibDataModule:
        if self.datamodule is None:
            msg = (
                f"{self.__class__.__name__} needs datamodule=<an anomalib datamodule> for {purpose}; "
                "e.g. --data.datamodule MVTecAD --data.datamodule.root <root> on the command line."
            )
            raise ValueError(msg)
        self._setup_source()
        return self.datamodule

    def _normal_training_images(self) -> Dataset:
        """Up to ``num_images`` normal training images of the wrapped datamodule, resized, in a seeded order."""
        datamodule = self._require_datamodule("its normal training images")
        train_data = _resized_copy(datamodule.train_data, self.image_size)
        if len(train_data) == 0:
            msg = f"The training split of {datamodule.name} is empty: there is nothing to calibrate on."
            raise ValueError(msg)
        count = min(self.num_images, len(train_data))
        if count < self.num_images:
            logger.info("Calibrating on all %d normal training images (num_images=%d).", count, self.num_images)
        order = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(self.seed or 0))
        return Subset(train_data, order[:count].tolist())

    def labelled_normals(self) -> tuple[Dataset, list[str]] | None:
        """Every normal training image of the wrapped datamodule, resized, with the name of its category.

        An INT8 export of a unified model re-fits its product prototypes and unknown-product limits on these
        (:mod:`anomalib_dcam.deploy.recognition_limits`). All training normals are returned, not the calibration
        subset: the prototypes are the means of the training normals, and the limit rule needs about a hundred
        normals per category.

        Returns:
            The dataset and one category name per item, or ``None`` without a wrapped datamodule or when its
            training samples carry no category (not a unified datamodule).
        """
        from anomalib_dcam.data.multiclass import categories_by_image_path

        if self.datamodule is None:
            return None
        self._setup_source()
        train_data = getattr(self.datamodule, "train_data", None)
        if train_data is None or len(train_data) == 0:
            return None
        category_of = categories_by_image_path(train_data)
        if not category_of:
            return None
        names = [category_of[str(path)] for path in train_data.samples.image_path]
        return _resized_copy(train_data, self.image_size), names

    def calibration_dataset(self) -> Dataset:
        """The calibration images (each a ``(3, H, W)`` tensor in the exported model's input range, or an item)."""
        raise NotImplementedError

    def calibration_dataloader(self) -> DataLoader:
        """Batches (``ImageBatch``) of calibration images at ``image_size``."""
        dataset = self.calibration_dataset()
        collate_fn = getattr(dataset, "collate_fn", None)
        if isinstance(dataset, Subset):
            collate_fn = getattr(dataset.dataset, "collate_fn", None)
        return DataLoader(
            dataset,
            batch_size=self.train_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_fn or _collate_images,
        )

    def calibration_images(self, count: int | None = None) -> torch.Tensor:
        """The first ``count`` calibration images (all when ``None``) as one ``(N, 3, H, W)`` tensor."""
        dataset = self.calibration_dataset()
        count = len(dataset) if count is None else min(count, len(dataset))  # type: ignore[arg-type]
        images = [dataset[index] for index in range(count)]
        return torch.stack([getattr(image, "image", image) for image in images])

    def validation_dataloader(self) -> DataLoader:
        """Labelled validation images of the wrapped datamodule, resized like the calibration images (``INT8_ACQ``).

        The wrapped datamodule's validation split is used; for ``MVTecAD`` that is its test set unless
        ``val_split_mode`` says otherwise (``synthetic`` keeps the test set out of quantization).
        """
        datamodule = self._require_datamodule("accuracy-controlled quantization (INT8_ACQ) validation images")
        source = getattr(datamodule, "val_data", None)
        if source is None or len(source) == 0:
            source = getattr(datamodule, "test_data", None)
        if source is None or len(source) == 0:
            msg = f"{datamodule.name} has neither a validation nor a test split to validate INT8_ACQ candidates on."
            raise ValueError(msg)
        dataset = _resized_copy(source, self.image_size)
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=dataset.collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        """The calibration images."""
        return self.calibration_dataloader()

    def val_dataloader(self) -> DataLoader:
        """The calibration images: anomalib's quantization calibrates on ``val_dataloader()``."""
        return self.calibration_dataloader()

    def test_dataloader(self) -> DataLoader:
        """The labelled validation images: anomalib's ``INT8_ACQ`` validates on ``test_dataloader()``."""
        return self.validation_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """The labelled validation images."""
        return self.validation_dataloader()


class NormalsCalibration(CalibrationDataModule):
    """Calibrate on the normal training images of ``datamodule``, resized to ``image_size``.

    Args:
        datamodule: The datamodule the model was trained with.
        image_size: See :class:`CalibrationDataModule`.
        num_images: See :class:`CalibrationDataModule`.
        batch_size: See :class:`CalibrationDataModule`.
        eval_batch_size: See :class:`CalibrationDataModule`.
        seed: See :class:`CalibrationDataModule`.
    """

    source = CalibrationSource.NORMALS

    def __init__(
        self,
        datamodule: AnomalibDataModule,
        image_size: int | Sequence[int] | None = None,
        num_images: int = DEFAULT_NUM_IMAGES,
        batch_size: int = 1,
        eval_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        if datamodule is None:
            msg = "NormalsCalibration needs datamodule=<the training datamodule>; it calibrates on its normals."
            raise ValueError(msg)
        super().__init__(datamodule, image_size, num_images, batch_size, eval_batch_size, seed)

    def calibration_dataset(self) -> Dataset:
        """The normal training images."""
        return self._normal_training_images()


class RandomNormalCalibration(CalibrationDataModule):
    """Calibrate on images of i.i.d. standard-normal values, as the DCAM paper does; no data needed.

    The exported model contains its pre-processor, so it takes raw RGB images in ``[0, 1]`` and normalises them with
    ``(x - mean) / std`` itself. "Random normal" therefore has two readings:

    - ``space="normalized"`` (default): the backbones see N(0, 1) values, as a network without built-in
      pre-processing does when it is fed ``torch.randn`` inputs. The raw input is ``mean + std * z``, mostly inside
      ``[-0.2, 1.1]``: close to the range of real images.
    - ``space="pixel"``: the raw input itself is N(0, 1), so the backbones see values around ``-2 +- 4.4``, several
      times the range of real images; the calibrated ranges are then too wide for real data.

    Either way the noise is white (no spatial correlation), unlike real images; compare with
    :class:`NormalsCalibration` before relying on it.

    Args:
        datamodule: Only needed for ``INT8_ACQ`` (labelled validation images).
        image_size: See :class:`CalibrationDataModule`; without it and without an exporting model, 256 x 256.
        num_images: Number of noise images. Defaults to ``300``.
        batch_size: See :class:`CalibrationDataModule`.
        eval_batch_size: See :class:`CalibrationDataModule`.
        seed: Seed of the noise. Defaults to ``0``.
        space: ``"normalized"`` or ``"pixel"``, see above. Defaults to ``"normalized"``.
        mean: Per-channel mean of the model's normalisation. Defaults to the exporting model's, else ImageNet's.
        std: Per-channel standard deviation of the model's normalisation. Defaults like ``mean``.
    """

    source = CalibrationSource.RANDOM_NORMAL

    def __init__(
        self,
        datamodule: AnomalibDataModule | None = None,
        image_size: int | Sequence[int] | None = None,
        num_images: int = DEFAULT_NUM_IMAGES,
        batch_size: int = 1,
        eval_batch_size: int | None = None,
        seed: int = 0,
        space: NoiseSpace | str = NoiseSpace.NORMALIZED,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(datamodule, image_size, num_images, batch_size, eval_batch_size, seed)
        self.space = coerce_choice(space, NoiseSpace, "space")
        self.mean = _channel_stats(mean, "mean")
        self.std = _channel_stats(std, "std")

    def configure_for_export(
        self,
        image_size: tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        """Take input size and normalisation from the exported model unless given to the constructor."""
        super().configure_for_export(image_size)
        if self.mean is None and mean is not None:
            self.mean = _channel_stats(mean, "mean")
        if self.std is None and std is not None:
            self.std = _channel_stats(std, "std")

    def calibration_dataset(self) -> Dataset:
        """Standard-normal images, generated on the fly."""
        return _RandomNormalImages(
            count=self.num_images,
            image_size=self.image_size or DEFAULT_IMAGE_SIZE,
            mean=self.mean or IMAGENET_MEAN,
            std=self.std or IMAGENET_STD,
            space=self.space,
            seed=self.seed or 0,
        )


class SyntheticAnomalyCalibration(CalibrationDataModule):
    """Calibrate on normal training images, a share of them with Perlin-shaped synthetic defects.

    The defects come from anomalib's :class:`~anomalib.data.utils.generators.perlin.PerlinAnomalyGenerator`: a Perlin
    noise mask filled with a texture (from ``anomaly_source_path``, e.g. the DTD dataset, else the noise itself).
    Anomalies move student features away from the teacher's; calibrating on some keeps those larger activations
    inside the quantization ranges.

    Args:
        datamodule: The datamodule the model was trained with.
        image_size: See :class:`CalibrationDataModule`.
        num_images: See :class:`CalibrationDataModule`.
        batch_size: See :class:`CalibrationDataModule`.
        eval_batch_size: See :class:`CalibrationDataModule`.
        seed: Seed of the image subset and of the defects. Defaults to ``0``.
        anomaly_probability: Share of images that get a defect, in ``[0, 1]``. Defaults to ``0.5``.
        anomaly_source_path: Folder of texture images for the defects. Defaults to ``None`` (Perlin noise).
    """

    source = CalibrationSource.SYNTHETIC_ANOMALIES

    def __init__(
        self,
        datamodule: AnomalibDataModule,
        image_size: int | Sequence[int] | None = None,
        num_images: int = DEFAULT_NUM_IMAGES,
        batch_size: int = 1,
        eval_batch_size: int | None = None,
        seed: int = 0,
        anomaly_probability: float = 0.5,
        anomaly_source_path: str | Path | None = None,
    ) -> None:
        if datamodule is None:
            msg = "SyntheticAnomalyCalibration needs datamodule=<the training datamodule>; it alters its normals."
            raise ValueError(msg)
        super().__init__(datamodule, image_size, num_images, batch_size, eval_batch_size, seed)
        anomaly_probability = check_unit_interval(anomaly_probability, "anomaly_probability")
        if anomaly_source_path is not None and not Path(anomaly_source_path).is_dir():
            msg = f"anomaly_source_path={str(anomaly_source_path)!r} is not a folder; pass a folder of images or None."
            raise ValueError(msg)
        self.anomaly_probability = float(anomaly_probability)
        self.anomaly_source_path = anomaly_source_path

    def calibration_dataset(self) -> Dataset:
        """Normal training images with synthetic defects, generated on the fly."""
        return _PerlinAnomalyImages(
            self._normal_training_images(),
            probability=self.anomaly_probability,
            anomaly_source_path=self.anomaly_source_path,
            seed=self.seed or 0,
        )


_SOURCE_CLASSES: dict[CalibrationSource, type[CalibrationDataModule]] = {
    CalibrationSource.NORMALS: NormalsCalibration,
    CalibrationSource.RANDOM_NORMAL: RandomNormalCalibration,
    CalibrationSource.SYNTHETIC_ANOMALIES: SyntheticAnomalyCalibration,
}


def build_calibration_datamodule(
    source: CalibrationSource | str,
    datamodule: AnomalibDataModule | None = None,
    **kwargs: object,
) -> CalibrationDataModule:
    """Build the calibration datamodule of a source by name.

    Args:
        source: ``"normals"``, ``"random_normal"`` or ``"synthetic_anomalies"``.
        datamodule: The training datamodule (optional for ``"random_normal"``).
        kwargs: Further constructor arguments of the chosen class (``image_size``, ``num_images``, ...).

    Returns:
        The calibration datamodule.

    Raises:
        ValueError: If ``source`` is unknown.
    """
    source = coerce_choice(source, CalibrationSource, "calibration source")
    return _SOURCE_CLASSES[source](datamodule=datamodule, **kwargs)  # type: ignore[arg-type]
