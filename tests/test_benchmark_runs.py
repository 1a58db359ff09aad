"""The speed benchmark on the CPU: the template reaches the per-sample path's accuracy, the MLP and GPU parts run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import benchmark, common, gpu, mlp


def _context(root: Path, tmp_path: Path, *options: str) -> mlp.Context:
    args = benchmark.parse_args(["--data.root", str(root), "--runs", "A,C", *options])
    return mlp.Context(args, root, tmp_path, torch.device("cpu"), common.MNISTTensors.load(root))


@pytest.mark.slow
def test_template_reaches_the_accuracy_of_the_per_sample_path(digits_root: Path, tmp_path: Path) -> None:
    # The same MLP, seed, data, batch size and epochs: A is the textbook loop over torchvision's per-sample
    # MNIST, C the template through its command line (fused Adam, gradient clipping, batch normalization).
    # (Both orders are random but different, so single runs differ by the noise of training: on 297 test images,
    # up to ~6 points after 4 epochs, ~1.5 after 8, measured over 5 seeds.)
    ctx = _context(digits_root, tmp_path, "--epochs", "8", "--batch_size", "64")
    for seed in (0, 1):
        textbook = mlp.run_a(ctx, seed)
        template = mlp.run_c(ctx, seed)
        assert textbook.samples == template.samples == 8 * 1500
        assert textbook.test_acc > 0.85 and template.test_acc > 0.85, (textbook.test_acc, template.test_acc)
        assert abs(textbook.test_acc - template.test_acc) < 0.03, (seed, textbook.test_acc, template.test_acc)


@pytest.mark.slow
def test_benchmark_runs_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    argv = ["--quick", "--samples", "640", "--repeats", "1", "--runs", "A,B,B+fused,B+clip,C", "--json", str(out)]
    assert benchmark.main([*argv, "--workdir", str(tmp_path / "work")]) == 0
    report = json.loads(out.read_text())
    runs = report["mlp"]["runs"]
    assert set(runs) == {"A", "B", "B+fused", "B+clip", "C"}
    assert all(run["samples"] == 640 and run["median"] > 0 for run in runs.values())
    assert {"C/A", "C/B", "C/B+fused", "C/B+clip"} <= set(report["mlp"]["ratios"])
    assert report["environment"]["torch_threads"] == torch.get_num_threads()
    table = capsys.readouterr().out
    assert "samples/s" in table and "C/A =" in table and "torch.get_num_threads()" in table


@pytest.mark.slow
def test_gpu_measurements_run_end_to_end_on_cpu(tmp_path: Path, data_root: Path) -> None:
    # The ResNet-18 part runs only on a GPU; its code (data, command line, timing, FLOPs, MFU) is checked here on the
    # CPU with a few tiny steps, so that the one GPU run the numbers come from does not fail on a typo.
    options = ["--gpu_batch_size", "4", "--gpu_steps", "2", "--gpu_warmup", "1", "--gpu_sizes", "32,40"]
    args = benchmark.parse_args([*options, "--peak_tflops", "1", "--gpu_ablations", "--gpu_repeats", "2"])
    out = gpu.benchmark_gpu(args, tmp_path, lambda message: None, device=torch.device("cpu"))
    kinds = ["plain", "template", *(f"template, {ablation}" for ablation in gpu.GPU_ABLATIONS)]
    assert set(out["runs"]) == {f"resnet18 {size}px {kind}" for size in (32, 40) for kind in kinds}
    for key, run in out["runs"].items():
        assert len(run["images_per_s_all"]) == 2 and run["images_per_s"] > 0 and run["mfu"] > 0
        assert run["vs_plain"] == 1.0 if key.endswith("plain") else run["vs_plain"] > 0
    assert out["runs"]["resnet18 32px plain"]["forward_gflops_per_image"] == pytest.approx(0.0740, rel=1e-2)
    assert out["data"].startswith("generated CIFAR-10")
    # With --data.root at real CIFAR-10 files (written in the true format here), the template trains on those.
    args = benchmark.parse_args([*options[:6], "--gpu_sizes", "32", "--data.root", str(data_root)])
    out = gpu.benchmark_gpu(args, tmp_path / "real", lambda message: None, device=torch.device("cpu"))
    assert out["data"] == f"CIFAR-10 files in {data_root}" and out["runs"]["resnet18 32px template"]["mfu"] is None
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989
    assert gpu.peak_tflops("NVIDIA H100 PCIe", None) == 756
    assert gpu.peak_tflops("NVIDIA A100-SXM4-80GB", None) == 312
    assert gpu.peak_tflops("Unknown GPU", None) is None and gpu.peak_tflops("Unknown", 100.0) == 100.0


@pytest.mark.slow
def test_main_job_benchmark_runs_every_way(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import main_job

    out = tmp_path / "main_job.json"
    # The 32 px way and the default: the 224 px way through the backbone differs from the default by one flag.
    assert main_job.main(["--train_images", "40", "--test_images", "16", "--ways", "0,2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [row["way"] for row in rows] == [list(main_job.WAYS)[0], list(main_job.WAYS)[2]]
    assert all(row["two_epochs_s"] > 0 and row["one_epoch_s"] > 0 for row in rows)
    assert "224 px, features once" in capsys.readouterr().out
