# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""The benchmark command: configuration checks, weights honesty, results, resuming, failures, and its timing."""

import contextlib
import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from anomalib_dcam.benchmark import callbacks, main, timing, training
from anomalib_dcam.benchmark.config import ConfigError, load_config, parse_config
from anomalib_dcam.benchmark.report import QUALITY_METRICS, RESULT_COLUMNS, seed_tables
from conftest import requires_lite0, subprocess_env

REPOSITORY = Path(__file__).resolve().parents[1]
RUNTIME_COLUMNS = [f"{runtime}_{measure}" for runtime in ("torch", "openvino_fp32", "openvino_fp16", "openvino_int8")
                   for measure in ("size_mb", "latency_ms", "throughput_ips", "peak_rss_mb")]  # fmt: skip
TINY_INFERENCE = {"warmup": 1, "iterations": 2, "batch_size": 2, "batch_iterations": 1, "int8_calibration_images": 4}


def _data(texture_root: Path) -> dict:
    arguments = {"root": str(texture_root), "category": "brick", "num_workers": 0}
    return {"name": "brick", "class_path": "MVTecAD", "init_args": {**arguments, "train_batch_size": 4}}


def _config(tmp_path: Path, texture_root: Path, models: list[dict], **options: object) -> Path:
    config = {
        "output": str(tmp_path / "out"),
        "image_size": 64,
        "trainer": {"max_epochs": 1},
        "weights": {"hf_cache": str(tmp_path / "hf-cache"), "install_lite0": False},
        "inference": TINY_INFERENCE,
        "models": models,
        "datamodules": [_data(texture_root)],
        **options,
    }
    path = tmp_path / "benchmark.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(*arguments: str) -> tuple[int, str]:
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = main(["--heartbeat", "0", *arguments])
    return code, output.getvalue()


def _rows(output: Path) -> list[dict[str, str]]:
    with (output / "results.csv").open() as file:
        return list(csv.DictReader(file))


# resnet18 rather than tf_efficientnet_lite0: its ONNX export takes a third of the time.
RANDOM_TEACHER_DCAM = {
    "name": "dcam",
    "class_path": "Dcam",
    "init_args": {"backbone": "resnet18", "pre_trained": False},
}
BAD_DCAM = {"name": "dcam_bad_lr", "class_path": "Dcam", "init_args": {"lr": -1.0, "pre_trained": False}}
# resnet18's ImageNet weights are in no cache of the test run (its Hugging Face cache is an empty folder).
STFPM_WITHOUT_WEIGHTS = {"name": "stfpm_r18", "class_path": "TunedStfpm", "init_args": {"lr": 0.1}}


# ---------------------------------------------------------------------------------------------------- fast checks


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"speed": 1}, "Option 'speed' is not accepted"),
        ({"seeds": []}, "seeds=[]"),
        ({"inference": {"runtimes": ["tensorrt"]}}, 'inference: Parser key "runtimes"'),
        ({"inference": {"int8_calibration": "test_set"}}, 'inference: Parser key "int8_calibration"'),
        ({"inference": {"warmup": -1}}, 'inference: Parser key "warmup"'),
        ({"models": [{"name": "x"}]}, "models[0].class_path is required"),
        ({"models": [{"class_path": "Dcam", "args": {}}]}, "models[0]: Option 'args' is not accepted"),
        ({"models": [{"class_path": "Dcam"}, {"class_path": "Dcam"}]}, "'Dcam' appear more than once"),
        ({"trainer": [1]}, 'Parser key "trainer"'),
    ],
)
def test_config_errors_name_the_option(tmp_path: Path, change: dict, expected: str) -> None:
    raw = {"models": [{"class_path": "Dcam"}], "datamodules": [{"class_path": "MVTecAD"}], **change}
    with pytest.raises(ConfigError) as error:
        parse_config(raw, tmp_path / "c.yaml")
    assert expected in str(error.value)


def test_job_key_covers_model_arguments_data_and_seed_but_not_names(tmp_path: Path) -> None:
    def jobs(**model: object) -> list:
        raw = {
            "seeds": [0, 1],
            "models": [{"name": "a", "class_path": "Dcam", "init_args": {"lr": 0.1}, **model}],
            "datamodules": [{"name": "d", "class_path": "MVTecAD", "init_args": {"category": "bottle"}}],
        }
        return parse_config(raw, tmp_path / "c.yaml").jobs()

    first, second = jobs()
    assert first.key != second.key  # seeds
    assert jobs()[0].key == first.key
    assert jobs(name="renamed")[0].key == first.key
    assert jobs(init_args={"lr": 0.2})[0].key != first.key
    assert jobs(data={"train_batch_size": 1})[0].key != first.key


def test_shipped_configs_are_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anomalib_dcam.benchmark.runner import plan_jobs

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the EfficientAd check looks into anomalib's cache folder

    for name in ("benchmark_industrial.yaml", "benchmark_industrial_short.yaml"):
        config = load_config(REPOSITORY / "configs" / name)
        assert {model.class_path for model in config.models} >= {"Dcam", "TunedStfpm", "ReverseDistillation"}
        planned = plan_jobs(config, speed_only_without_weights=True)  # resolves every class and argument name
        assert len(planned) == len(config.models) * len(config.datamodules) * len(config.seeds)

    # anomalib's own pipeline: Dcam and Stfpm share the backbone, ReverseDistillation comes last (docs/benchmarks.md).
    grid = yaml.safe_load((REPOSITORY / "configs" / "benchmark.yaml").read_text())["benchmark"]["model"]["grid"]
    assert [model["class_path"] for model in grid] == ["Dcam", "Stfpm", "EfficientAd", "ReverseDistillation"]
    assert grid[0]["init_args"]["backbone"] == grid[1]["init_args"]["backbone"]


def test_weights_check_finds_what_is_on_this_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anomalib.models import EfficientAd, ReverseDistillation

    from anomalib_dcam import Dcam
    from anomalib_dcam.benchmark.models import TunedStfpm, check_weights

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # anomalib's pre_trained folder, empty
    cache = tmp_path / "hf"
    cache.mkdir()
    missing = check_weights(ReverseDistillation, {}, cache)
    assert not missing.available
    assert "wide_resnet50_2" in missing.description
    assert not check_weights(TunedStfpm, {"backbone": "resnet18"}, cache).available
    assert check_weights(ReverseDistillation, {"pre_trained": False}, cache).description.startswith("random by config")
    efficient_ad = check_weights(EfficientAd, {"imagenet_dir": str(tmp_path / "none")}, cache)
    assert not efficient_ad.available
    assert "pretrained_teacher_small.pth" in efficient_ad.description
    assert "Imagenette" in efficient_ad.description
    assert check_weights(Dcam, {"backbone_weights": str(tmp_path / "no.pth")}, cache).available is False


@requires_lite0
def test_weights_check_sees_the_packaged_lite0_weights(tmp_path: Path) -> None:
    from anomalib_dcam import Dcam
    from anomalib_dcam.benchmark.models import TunedStfpm, check_weights
    from anomalib_dcam.weights import install_hf_cache

    assert check_weights(Dcam, {"backbone": "tf_efficientnet_lite0"}, tmp_path).available
    assert not check_weights(TunedStfpm, {"backbone": "tf_efficientnet_lite0"}, tmp_path).available
    install_hf_cache(tmp_path)
    found = check_weights(TunedStfpm, {"backbone": "tf_efficientnet_lite0"}, tmp_path)
    assert found.available
    assert "Hugging Face cache" in found.description


@requires_lite0
def test_list_shows_the_weights_the_run_will_install(tmp_path: Path, texture_root: Path) -> None:
    stfpm = {"name": "stfpm", "class_path": "TunedStfpm", "init_args": {"backbone": "tf_efficientnet_lite0"}}
    config = _config(tmp_path, texture_root, [stfpm])
    config.write_text(config.read_text().replace("install_lite0: false", "install_lite0: true"))
    code, output = _run("--config", str(config), "--list", "--no-speed-only-without-weights")
    assert code == 0, output
    assert "mode: full" in output
    assert "Hugging Face cache (timm/tf_efficientnet_lite0.in1k)" in output
    assert "pending" in output


def test_speed_only_models_build_with_random_weights_offline() -> None:
    import torch
    from anomalib.models import ReverseDistillation

    from anomalib_dcam.benchmark.models import RandomTeacherEfficientAd, TunedStfpm, build_model

    stfpm = build_model("TunedStfpm", {"backbone": "resnet18", "lr": 0.1}, image_size=64, speed_only=True)
    assert isinstance(stfpm, TunedStfpm)
    assert stfpm.configure_optimizers().param_groups[0]["lr"] == 0.1
    reverse = build_model("ReverseDistillation", {"backbone": "resnet18"}, image_size=64, speed_only=True)
    assert isinstance(reverse, ReverseDistillation)
    assert reverse.pre_trained is False
    efficient_ad = build_model("EfficientAd", {}, image_size=64, speed_only=True)
    assert isinstance(efficient_ad, RandomTeacherEfficientAd)
    teacher = {name: value.clone() for name, value in efficient_ad.model.teacher.state_dict().items()}
    efficient_ad.prepare_pretrained_model()  # no download, teacher unchanged
    assert all(torch.equal(value, efficient_ad.model.teacher.state_dict()[name]) for name, value in teacher.items())
    efficient_ad.prepare_imagenette_data((64, 64))
    assert next(efficient_ad.imagenet_iterator)[0].shape == (1, 3, 64, 64)


def test_training_monitor_times_training_loops_without_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([10.0, 11.0, 12.0, 12.5, 13.5, 14.0, 16.0])  # each call of time.perf_counter, in order
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    trainer = SimpleNamespace(sanity_checking=False, current_epoch=0, max_epochs=1)
    batch = SimpleNamespace(image=np.zeros((4, 3, 8, 8)))
    finished = []
    monitor = callbacks.TrainingMonitor(on_epoch_end=lambda *epoch: finished.append(epoch))
    monitor.on_train_epoch_start(trainer, None)  # 10
    monitor.on_train_batch_start(trainer, None, batch, 0)  # 11: waited 1 s for the first batch
    monitor.on_train_batch_end(trainer, None, None, batch, 0)  # 12
    monitor.on_train_batch_start(trainer, None, batch, 1)  # 12.5: waited 0.5 s
    monitor.on_train_batch_end(trainer, None, None, batch, 1)  # 13.5: the training loop took 3.5 s
    monitor.on_validation_epoch_start(trainer, None)  # 14
    monitor.on_validation_batch_end(trainer, None, None, batch, 0)
    monitor.on_validation_epoch_end(trainer, None)  # 16: validation took 2 s
    monitor.on_train_epoch_end(trainer, None)
    assert monitor.epochs == [{"train_s": 3.5, "images": 8, "data_wait_s": 1.5, "val_s": 2.0, "val_images": 4}]
    assert (monitor.seconds, monitor.images, monitor.first_batch_at, finished) == (3.5, 8, 11.0, [(1, 1)])


def test_timed_fit_times_fitting_alone_with_an_engine_of_the_given_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class RecordingEngine:
        def __init__(self, **arguments: object) -> None:
            calls.append(("engine", arguments))

        def fit(self, model: object, datamodule: object) -> None:
            calls.append(("fit", model, datamodule))

        def test(self, model: object, datamodule: object, verbose: bool) -> None:
            calls.append(("test", model, datamodule, verbose))

    monkeypatch.setattr("anomalib.engine.Engine", RecordingEngine)
    clock = iter([10.0, 12.5, 20.0, 21.0])  # fit from 10 to 12.5, test from 20 to 21
    monkeypatch.setattr(training, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    monitor = callbacks.TrainingMonitor()
    engine, fit_seconds = training.timed_fit("model", "data", Path("runs"), (monitor,), max_epochs=3, precision="bf16")
    assert fit_seconds == 2.5
    settings = {"default_root_dir": Path("runs"), "logger": False, "callbacks": [monitor], "max_epochs": 3}
    assert calls == [("engine", {**settings, "precision": "bf16"}), ("fit", "model", "data")]
    assert training.timed_test(engine, "model", "data") == 1.0
    assert calls[-1] == ("test", "model", "data", False)


def test_latency_is_the_median_of_timed_calls_after_the_warm_up() -> None:
    calls = []
    durations = timing.time_calls(lambda: calls.append(1), warmup=3, iterations=5)
    assert (len(calls), len(durations)) == (8, 5)
    stats = timing.latency_stats([0.001, 0.002, 0.003, 0.004, 0.100])
    assert stats["latency_ms"] == pytest.approx(3.0)
    assert stats["latency_p90_ms"] == pytest.approx(61.6)


def test_seed_tables_pair_rows_with_the_baseline_seed_by_seed() -> None:
    nan = float("nan")  # a metric undefined for a category (pixel metrics without masks), as records hold it
    values = {
        "dcam": {0: {"a": 0.80, "mean": 0.70}, 1: {"a": 0.90, "mean": 0.74}, 2: {"a": 0.70, "mean": nan}},
        "stfpm": {0: {"a": 0.75, "mean": 0.68}, 1: {"a": 0.80, "mean": 0.70}},  # seed 2 not recorded
    }
    summary, paired = seed_tables(values, ["a", "mean"], baseline="stfpm", per_seed_column="mean")
    assert summary.splitlines()[:2] == ["| row | n | a | mean |", "|---|---|---|---|"]
    # The baseline first; undefined values are left out of mean ± std.
    assert summary.splitlines()[2:] == ["| stfpm | 2 | 0.775 ± 0.035 | 0.690 ± 0.014 |",
                                        "| dcam | 3 | 0.800 ± 0.100 | 0.720 ± 0.028 |"]  # fmt: skip
    assert paired.splitlines()[0] == "| row | seeds | a | mean | per seed (mean) |"
    # Differences over the seeds both rows have: a = +0.05, +0.10; mean = +0.02, +0.04.
    assert paired.splitlines()[2] == "| dcam | 2 | +0.075 ± 0.035 | +0.030 ± 0.014 | s0 +0.020, s1 +0.040 |"
    # With seed 2 recorded for both, its undefined difference is left out of the mean ± std, not made a number.
    values["stfpm"][2] = {"a": 0.60, "mean": 0.69}
    _, paired = seed_tables(values, ["a", "mean"], baseline="stfpm", per_seed_column="a")
    assert paired.splitlines()[2] == "| dcam | 3 | +0.083 ± 0.029 | +0.030 ± 0.014 | s0 +0.050, s1 +0.100, s2 +0.100 |"


@pytest.mark.slow
def test_openvino_timing_runs_the_settings_that_benchmark_app_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import openvino as ov

    image = ov.opset13.parameter([-1, 3, 16, 16], ov.Type.f32)
    xml = tmp_path / "model.xml"
    ov.save_model(ov.Model([ov.opset13.relu(image)], [image]), xml)
    inputs = np.ones((1, 3, 16, 16), dtype=np.float32)
    (output,) = timing.compile_request(xml, inputs.shape, "f32", 1).infer({0: inputs}).values()
    assert np.array_equal(output, inputs)
    assert timing.benchmark_app_latency(xml, inputs.shape, "f32", 1, iterations=20) > 0
    assert timing.openvino_async_throughput(xml, inputs, "f32", 1, count=8)["throughput_images_per_s"] > 0
    assert timing.main([str(xml), "--threads", "1", "--iterations", "5", "--rounds", "1"]) == 0
    assert "INFERENCE_PRECISION_HINT=f32, 1 threads" in capsys.readouterr().out


def test_cli_has_the_benchmark_command(capsys: pytest.CaptureFixture[str]) -> None:
    from anomalib_dcam.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["benchmark", "--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert "--speed-only-without-weights" in usage


def test_missing_weights_skip_the_job_without_numbers(tmp_path: Path, texture_root: Path) -> None:
    config = _config(tmp_path, texture_root, [STFPM_WITHOUT_WEIGHTS])
    code, output = _run("--config", str(config))
    assert code == 0, output
    assert "skipped: pretrained weights not available" in output
    assert "resnet18" in output
    (row,) = _rows(tmp_path / "out")
    assert row["status"] == "skipped"
    assert all(row[column] == "" for column in [*QUALITY_METRICS, "fit_s", *RUNTIME_COLUMNS])


def test_unknown_model_argument_is_a_configuration_error(tmp_path: Path, texture_root: Path) -> None:
    config = _config(tmp_path, texture_root, [{"class_path": "Dcam", "init_args": {"learning_rate": 0.1}}])
    code, output = _run("--config", str(config))
    assert code == 2
    assert "models[0].init_args: Dcam has no argument(s) 'learning_rate'" in output


# ---------------------------------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def benchmark_run(tmp_path_factory: pytest.TempPathFactory, texture_root: Path) -> tuple[Path, int, str]:
    """A random-teacher Dcam with every runtime, and a job that fails (a bad learning rate)."""
    tmp_path = tmp_path_factory.mktemp("benchmark")
    config = _config(tmp_path, texture_root, [RANDOM_TEACHER_DCAM, BAD_DCAM])
    code, output = _run("--config", str(config))
    return config, code, output


@pytest.mark.slow
def test_results_have_every_column_and_value(benchmark_run: tuple[Path, int, str]) -> None:
    config, _, output = benchmark_run
    out = config.parent / "out"
    rows = {row["model"]: row for row in _rows(out)}
    assert list(_rows(out)[0]) == list(RESULT_COLUMNS)
    dcam = rows["dcam"]
    assert dcam["status"] == "done", output
    assert dcam["mode"] == "full"
    assert dcam["weights"] == "random by configuration (pre_trained: false)"
    for column in [*QUALITY_METRICS, "fit_s", "train_images_per_s", "train_peak_rss_mb", "params", *RUNTIME_COLUMNS]:
        assert float(dcam[column]) > 0, column
    assert 0 <= float(dcam["image_AUROC"]) <= 1
    assert float(dcam["openvino_int8_size_mb"]) < float(dcam["openvino_fp32_size_mb"])
    assert int(dcam["epochs"]) == 1
    assert int(dcam["train_images_seen"]) == 8
    assert int(dcam["threads"]) >= 1
    assert json.loads(dcam["precision_hints"])["openvino_fp32"] == "f32"
    per_category = pd.read_csv(out / "per_category.csv")
    assert set(per_category.category) == {"brick", "mean", "global"}
    for figure in ("metrics.png", "latency_vs_accuracy.png", "latency.png"):
        assert (out / figure).stat().st_size > 10_000, figure
    markdown = (out / "results.md").read_text()
    assert "## Quality" in markdown
    assert "synchronous calls" in markdown  # the timing settings are stated next to the latencies
    assert "[1/2] dcam | brick | seed 0: train + export" in output


@pytest.mark.slow
def test_failing_job_is_named_and_makes_the_run_fail(benchmark_run: tuple[Path, int, str]) -> None:
    config, code, output = benchmark_run
    assert code == 1
    assert "FAILED dcam_bad_lr | brick | seed 0" in output
    assert "lr=-1.0 is not accepted" in output
    bad = next(row for row in _rows(config.parent / "out") if row["model"] == "dcam_bad_lr")
    assert bad["status"] == "failed"
    assert "lr=-1.0" in bad["message"]


@pytest.mark.slow
def test_rerun_skips_finished_jobs_and_retries_failed_ones(benchmark_run: tuple[Path, int, str]) -> None:
    config, _, _ = benchmark_run
    out = config.parent / "out"
    train = next(out.glob("jobs/dcam__*/train.json"))
    before = train.stat().st_mtime_ns
    code, output = _run("--config", str(config))
    assert code == 1  # the bad job fails again
    assert "[1/2] dcam | brick | seed 0: finished in an earlier run, skipped" in output
    assert "[2/2] dcam_bad_lr | brick | seed 0: train + export" in output
    assert train.stat().st_mtime_ns == before
    assert next(row for row in _rows(out) if row["model"] == "dcam")["status"] == "done"


@pytest.mark.slow
def test_a_training_is_reused_only_with_the_same_resolved_settings(benchmark_run: tuple[Path, int, str]) -> None:
    config, _, _ = benchmark_run
    train = next((config.parent / "out").glob("jobs/dcam__*/train.json"))
    stored = train.read_text()

    def status() -> str:
        _, listed = _run("--config", str(config), "--list")
        return next(line for line in listed.splitlines() if line.startswith("[1] dcam | brick")).rsplit(" ", 1)[-1]

    assert status() == "done"
    record = json.loads(stored)
    assert record["settings"]["model"]["init_args"]["backbone"] == "resnet18"
    assert record["settings"]["model"]["init_args"]["image_score_top_fraction"] == 0.001  # a default, resolved
    record["settings"]["model"]["init_args"]["image_score_top_fraction"] = 0.0  # as trained before a default changed
    train.write_text(json.dumps(record))
    try:
        assert status() == "pending"
    finally:
        train.write_text(stored)


@pytest.mark.slow
def test_speed_only_rows_carry_no_quality(tmp_path: Path, texture_root: Path) -> None:
    torch_only = {**TINY_INFERENCE, "runtimes": ["torch"]}
    config = _config(tmp_path, texture_root, [STFPM_WITHOUT_WEIGHTS], inference=torch_only)
    code, output = _run("--config", str(config), "--speed-only-without-weights")
    assert code == 0, output
    assert "speed only, not pretrained: no ImageNet weights for backbone 'resnet18'" in output
    (row,) = _rows(tmp_path / "out")
    assert row["mode"] == "speed only, not pretrained"
    assert row["weights"].startswith("random: ")
    assert all(row[column] == "" for column in QUALITY_METRICS)
    assert float(row["torch_latency_ms"]) > 0
    assert float(row["train_images_per_s"]) > 0
    job = json.loads(next((tmp_path / "out").glob("jobs/*/train.json")).read_text())
    assert job["metrics"] is None  # never measured, not merely hidden


def test_deployment_script_scores_precisions_with_the_per_category_metrics() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("deployment", REPOSITORY / "benchmarks" / "deployment.py")
    deployment = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deployment)
    masks = np.zeros((4, 8, 8), np.uint8)
    masks[2:, 2:4, 2:4] = 1
    maps = np.full((4, 8, 8), 0.1, np.float32)
    maps[2:, 2:4, 2:4] = 0.9  # every defect pixel above every normal one
    predictions = {"pred_score": np.array([0.2, 0.6, 0.5, 0.9], np.float32), "anomaly_map": maps}
    truth = {"gt_label": np.array([0, 0, 1, 1]), "gt_mask": masks}
    metrics = deployment.compute_metrics(predictions, truth, np.ones(4, bool))
    assert metrics == pytest.approx({"image_AUROC": 0.75, "pixel_AUROC": 1.0, "AUPRO": 1.0})
    # Only the selected images count: without the normal scored 0.6, every defect outranks every normal.
    selected = deployment.compute_metrics(predictions, truth, np.array([True, False, True, True]))
    assert selected["image_AUROC"] == pytest.approx(1.0)
    # Image labels only (no defect pixel in the selection): pixel metrics are undefined, not zero.
    no_masks = deployment.compute_metrics(predictions, {**truth, "gt_mask": np.zeros_like(masks)}, np.ones(4, bool))
    assert no_masks["image_AUROC"] == pytest.approx(0.75)
    assert np.isnan(no_masks["pixel_AUROC"])
    assert np.isnan(no_masks["AUPRO"])


@pytest.mark.slow
def test_deployment_script_times_every_precision_with_its_settings(tmp_path: Path, texture_root: Path) -> None:
    import subprocess
    import sys

    output = tmp_path / "deployment"
    command = [sys.executable, str(REPOSITORY / "benchmarks" / "deployment.py"), "--speed-only", "--root"]
    command += [str(texture_root), "--categories", "brick", "--output", str(output), "--input-size", "64", "64"]
    command += ["--precisions", "torch_fp32", "ov_fp32", "--num-threads", "1", "--warmup", "1"]
    command += ["--latency-iterations", "3", "--throughput-images", "4", "--torch-batch-size", "2"]
    command += ["--dcam-options", '{"image_score_top_fraction": 0.0}']
    completed = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows = {row["precision"]: row for row in csv.DictReader(io.StringIO((output / "results.csv").read_text()))}
    assert set(rows) == {"torch_fp32", "ov_fp32"}
    for row in rows.values():
        assert float(row["latency_ms"]) > 0
        assert float(row["throughput_images_per_s"]) > 0
        assert row["num_threads"] == "1"
        assert row["image_AUROC"] == ""  # speed only: no quality
    assert rows["ov_fp32"]["precision_hint"] == "f32"
    assert rows["ov_fp32"]["api"] == "sync latency; async queue throughput"
    assert "Dcam(image_score_top_fraction=0.0) with random weights" in (output / "results.md").read_text()
    record = json.loads((output / "record.json").read_text())
    assert record["settings"]["measure"]["latency_iterations"] == 3
    assert {row["precision"] for row in record["results"]} == {"torch_fp32", "ov_fp32"}

    # The same settings reuse every measurement; other settings are refused, naming what differs, and lose nothing.
    again = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[skip] ov_fp32: already measured" in again.stdout
    changed = [
        *command[: command.index("--latency-iterations") + 1],
        "4",
        *command[command.index("--throughput-images") :],
    ]
    refused = subprocess.run(changed, capture_output=True, text=True, env=subprocess_env(), check=False)
    assert refused.returncode != 0
    assert "measure.latency_iterations: 3 -> 4" in refused.stderr
    assert (output / "runs" / "ov_fp32" / "measure.json").is_file()
