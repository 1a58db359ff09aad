"""The dashboard's WorstPredictions: the most confident mistakes first, filled with the least confident hits, DDP."""

from __future__ import annotations

import pytest
import torch

from project.engine.callbacks.dashboard import WorstPredictions


def _logits(preds: list[int], confidences: list[float], num_classes: int = 3) -> torch.Tensor:
    """Logits whose softmax gives ``confidence`` to class ``pred`` and shares the rest evenly."""
    probs = torch.zeros(len(preds), num_classes)
    for row, (pred, confidence) in enumerate(zip(preds, confidences, strict=True)):
        probs[row] = (1 - confidence) / (num_classes - 1)
        probs[row, pred] = confidence
    return probs.log()


# ---------------------------------------------------------------------------------------------- what is kept
def test_worst_predictions_keeps_the_most_confident_mistakes_first() -> None:
    metric = WorstPredictions(k=3, input_shape=(1, 1, 1))
    # Sample ids travel in the images, so we can see which samples were kept.
    first = _logits([0, 1, 2, 0], [0.9, 0.6, 0.95, 0.5])  # targets below: right, wrong, wrong, right
    metric.update(torch.arange(4.0).view(4, 1, 1, 1), first, torch.tensor([0, 0, 1, 0]))
    second = _logits([2, 1], [0.7, 0.99])  # wrong, right
    metric.update(torch.arange(4.0, 6.0).view(2, 1, 1, 1), second, torch.tensor([0, 1]))
    kept = metric.compute()
    # Mistakes by confidence (2: 0.95, 4: 0.7, 1: 0.6); no correct sample makes the cut.
    assert kept["images"].flatten().tolist() == [2.0, 4.0, 1.0]
    assert kept["preds"].tolist() == [2, 2, 1] and kept["targets"].tolist() == [1, 0, 0]
    assert kept["confidences"].tolist() == pytest.approx([0.95, 0.7, 0.6], abs=1e-5)


def test_worst_predictions_fills_with_the_least_confident_hits_and_drops_empty_slots() -> None:
    metric = WorstPredictions(k=5, input_shape=(1, 1, 1))
    metric.update(torch.arange(3.0).view(3, 1, 1, 1), _logits([0, 1, 2], [0.9, 0.4, 0.6]), torch.tensor([0, 1, 0]))
    kept = metric.compute()
    # The mistake, then correct predictions from the least confident; 2 of the 5 slots stay empty and are dropped.
    assert kept["images"].flatten().tolist() == [2.0, 1.0, 0.0]


def test_worst_predictions_merge_like_ddp_keeps_the_global_worst() -> None:
    """merge_state applies the same reduction as the DDP sync: the best k of every process's k."""
    rank0, rank1 = WorstPredictions(k=2, input_shape=(1, 1, 1)), WorstPredictions(k=2, input_shape=(1, 1, 1))
    rank0.update(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1), _logits([1, 1], [0.5, 0.8]), torch.tensor([0, 0]))
    rank1.update(torch.tensor([2.0, 3.0]).view(2, 1, 1, 1), _logits([1, 1], [0.9, 0.4]), torch.tensor([0, 0]))
    rank0.merge_state(rank1)
    assert rank0.compute()["images"].flatten().tolist() == [2.0, 1.0]
