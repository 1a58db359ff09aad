"""The folder data module's ``DataLoader`` path: each file decoded in a worker at its own size, then made square by
the preset (:mod:`~project.engine.data.presets`), its random draws seeded by ``(seed, epoch, index)``.

A file that decoded at setup but not here (replaced or truncated since, or judged from a kept scan) is left out of
its batch, which is one shorter, and :class:`SkippedFiles` collects it in the main process: listed in
``skipped_files.txt`` in the run directory, one warning per stage, or a :class:`DataError` with ``strict``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from project.engine.api import (
    BoundedWait,
    DataError,
    EpochSeededSampler,
    ResumableDataLoader,
    escape_name,
    worker_options,
)
from project.engine.data.images import NotAnImage, load_image
from project.engine.data.presets import Preset, sample_generator

#: ``(path, reason)`` of a file a worker could not decode.
Bad = tuple[str, str]


class PresetImages(Dataset):
    """``(image, label, None)`` per file, or ``(None, label, (path, reason))`` for a file that does not decode.

    ``epoch`` is a shared-memory tensor: the main process writes the epoch into it before the epoch's indices go out
    (:class:`FolderTrainLoader`), and persistent workers, started in an earlier epoch, read it from there.
    """

    def __init__(
        self, paths: Sequence[str], labels: Sequence[int], channels: int, preset: Preset, max_pixels: int, seed: int
    ) -> None:
        self.paths, self.labels = list(paths), list(labels)
        self.channels, self.preset, self.max_pixels, self.seed = channels, preset, max_pixels, seed
        self.epoch = torch.zeros(1, dtype=torch.long).share_memory_()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor | None, int, Bad | None]:
        path = self.paths[index]
        try:
            image = load_image(path, self.channels, None, self.max_pixels)
        except NotAnImage as error:  # the file changed since setup: reported by the main process, not fatal
            return None, self.labels[index], (path, str(error).removeprefix(f"{path}: "))
        generator = sample_generator(self.seed, int(self.epoch.item()), index)
        return self.preset(image, generator), self.labels[index], None


def collate_kept(batch: list[tuple[Tensor | None, int, Bad | None]]) -> tuple[Tensor | None, Tensor | None, list[Bad]]:
    """The decoded images and their labels (``None`` when none decoded) and the files that did not decode."""
    kept = [(image, label) for image, label, _ in batch if image is not None]
    bad = [entry for _, _, entry in batch if entry is not None]
    if not kept:
        return None, None, bad
    return torch.stack([image for image, _ in kept]), torch.tensor([label for _, label in kept]), bad


class SkippedFiles:
    """The files the workers skipped, collected in the main process: appended to ``skipped_files.txt`` in the run
    directory as they come (``skipped_files.rank<N>.txt`` for the other ranks of a multi-process run) and warned
    about once per stage (:meth:`warn`); with ``strict`` the first is a :class:`DataError`."""

    NAME = "skipped_files.txt"

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.found: dict[str, str] = {}  # path → reason, in the order met
        self.warned = 0  # how many of ``found`` a warning has named
        self.file: str | None = None
        self._listed: set[str] | None = None  # what the file holds (a resumed run's too)

    def place(self, run_dir: str, rank: int) -> None:
        """Where the list goes: the run directory (``trainer.default_root_dir``) and this process's rank."""
        name = self.NAME if rank == 0 else self.NAME.replace(".txt", f".rank{rank}.txt")
        if os.path.join(run_dir, name) != self.file:
            self.file, self._listed = os.path.join(run_dir, name), None

    def add(self, bad: list[Bad]) -> None:
        if self.strict:
            path, reason = bad[0]
            raise DataError(
                f"{path}: {reason}; it decoded at setup but not for a batch "
                f"(--data.strict is true; set it to false to skip such files)"
            )
        new = [(path, reason) for path, reason in bad if path not in self.found]
        self.found.update(new)
        if new and self.file is not None:
            self._write([path for path, _ in new])

    def _write(self, paths: list[str]) -> None:
        lines = [escape_name(path) for path in paths]  # bytes that are not UTF-8 as \xNN, as everywhere
        try:
            if self._listed is None:
                os.makedirs(os.path.dirname(self.file) or ".", exist_ok=True)
                with open(self.file, "a+", encoding="utf-8") as file:
                    file.seek(0)
                    self._listed = set(file.read().splitlines())
            lines = [line for line in lines if line not in self._listed]
            with open(self.file, "a", encoding="utf-8") as file:
                file.writelines(line + "\n" for line in lines)
            self._listed.update(lines)
        except OSError as error:
            rank_zero_warn(f"the list of skipped files is not kept: cannot write {self.file} ({error.strerror})")

    def warn(self) -> None:
        """One warning for the files found since the last one: how many, the first, and where the list is."""
        new = list(self.found.items())[self.warned :]
        if not new:
            return
        self.warned = len(self.found)
        path, reason = new[0]
        where = f"; all are listed in {self.file}" if self.file else ""
        rank_zero_warn(
            f"skipped {len(new)} file(s) that decoded at setup but not for a batch (changed since?), "
            f"first {path}: {reason}{where}"
        )


class _KeepsDecoded:
    """Mixed into the loaders below: hands over ``(images, labels)`` and gives the skipped files to ``skipped``."""

    skipped: SkippedFiles

    def _kept(self, batches: Iterator[Any], training: bool) -> Iterator[tuple[Tensor, Tensor]]:
        for images, labels, bad in batches:
            if bad:
                self.skipped.add(bad)
            if images is not None:
                yield images, labels
            elif training:  # a step on no samples is no step: under DDP the other ranks would wait for it
                path, reason = bad[0]
                raise DataError(
                    f"no file of a training batch decodes any more (first {path}: {reason}): the folder changed "
                    f"since setup scanned it; a new run scans it again"
                )


class FolderTrainLoader(_KeepsDecoded, BoundedWait, ResumableDataLoader):
    """The training loader: resumable mid-epoch; tells the workers the epoch (also when Lightning has put its
    ``DistributedSampler`` in place of ours: it reads the sampler's ``epoch``)."""

    def __init__(self, dataset: PresetImages, skipped: SkippedFiles, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.skipped = skipped

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # A generator: this runs at the first next(), after set_epoch() and before the workers get any index.
        self.dataset.epoch.fill_(self._epoch())
        yield from self._kept(super().__iter__(), training=True)


class FolderEvalLoader(_KeepsDecoded, BoundedWait, DataLoader):
    """The validation and test loader, in order; a batch of which no file decodes is left out."""

    def __init__(self, dataset: PresetImages, skipped: SkippedFiles, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.skipped = skipped

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        yield from self._kept(super().__iter__(), training=False)


def folder_loader(
    dataset: PresetImages,
    skipped: SkippedFiles,
    split: str,
    batch_size: int,
    num_workers: int,
    timeout: float,
    trainer: Any,
) -> FolderTrainLoader | FolderEvalLoader:
    """The loader of one split: shuffled by ``(seed, epoch)`` to train, in order otherwise; the skipped files are
    listed in the ``trainer``'s run directory (its ``default_root_dir``)."""
    if trainer is not None:
        skipped.place(trainer.default_root_dir, trainer.global_rank)
    options: dict[str, Any] = {
        "batch_size": batch_size,
        **worker_options(dataset, num_workers, timeout),
        "persistent_workers": num_workers > 0,
        "pin_memory": trainer is not None and trainer.strategy.root_device.type == "cuda",
        "collate_fn": collate_kept,
        # The workers' base seed is drawn from this generator, not from the global one: starting an epoch then
        # leaves the global random state (dropout masks, augmentation) as it was, so a resumed run matches.
        "generator": torch.Generator().manual_seed(dataset.seed),
    }
    if split == "train":
        loader = FolderTrainLoader(dataset, skipped, sampler=EpochSeededSampler(dataset, dataset.seed), **options)
    else:
        loader = FolderEvalLoader(dataset, skipped, **options)
    loader.what = f"the {split} loader"
    return loader
