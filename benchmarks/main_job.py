"""What the main job costs: ``python scripts/train.py --model resnet`` as whole processes, three ways.

    python -m benchmarks.main_job                      # 50,000 CIFAR-sized training images (45,000 trained on)
    python -m benchmarks.main_job --train_images 2000  # smaller, for a quick look

Each way trains 1 and then 2 epochs in fresh processes on the same generated CIFAR-10 files (the tests' writers of
the true format); one epoch's time is the difference, and 10 epochs (the default) are projected from both:
``t(1) + 9 × (t(2) − t(1))``. The weights are a stand-in with ResNet-18's shapes where the real ones are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import fake_data_writers

REPO = Path(__file__).resolve().parents[1]
WAYS = {
    "32 px through the backbone": ["--data.image_size", "32", "--frozen_features", "false"],
    "224 px through the backbone": ["--frozen_features", "false"],
    "224 px, features once (the default)": [],
}


def _train(root: Path, workdir: Path, epochs: int, extra: list[str], env: dict[str, str]) -> float:
    command = [sys.executable, str(REPO / "scripts" / "train.py"), "--model", "resnet", "--data.root", str(root)]
    command += ["--max_epochs", str(epochs), "--trainer.enable_progress_bar", "false", "--data.val_size", "0.1"]
    command += ["--trainer.default_root_dir", str(workdir / "runs"), *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=24 * 3600)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_images", type=int, default=50_000, help="training images before the 10 %% split")
    parser.add_argument("--test_images", type=int, default=10_000)
    parser.add_argument("--ways", default=",".join(map(str, range(len(WAYS)))), help="which ways, by index (0,1,2)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        fakedata = fake_data_writers()
        fakedata.write_cifar10(workdir / "data", n_train=args.train_images, n_test=args.test_images)
        env = dict(os.environ)
        weights = Path(env.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
        if not (weights / "resnet18-f37072fd.pth").is_file():
            fakedata.write_resnet18_weights(workdir / "torch_home")
            env["TORCH_HOME"] = str(workdir / "torch_home")
        rows = []
        chosen = [list(WAYS)[int(index)] for index in args.ways.split(",")]
        for name in chosen:
            extra = WAYS[name]
            one, two = (_train(workdir / "data", workdir, epochs, extra, env) for epochs in (1, 2))
            epoch = two - one
            rows.append(
                {"way": name, "one_epoch_s": one, "two_epochs_s": two, "epoch_s": epoch, "ten_s": one + 9 * epoch}
            )
    print(f"ResNet-18, frozen backbone, {args.train_images} CIFAR-sized training images (90 % trained on)")
    print(f"{'way':40} {'1 epoch':>10} {'2 epochs':>10} {'per epoch':>10} {'10 epochs':>10}")
    for row in rows:
        print(
            f"{row['way']:40} {row['one_epoch_s']:9.0f}s {row['two_epochs_s']:9.0f}s {row['epoch_s']:9.0f}s "
            f"{row['ten_s'] / 60:8.1f}min"
        )
    if args.json:
        args.json.write_text(json.dumps({"train_images": args.train_images, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
