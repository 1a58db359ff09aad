"""ResNet-18 transfer learning: ``--model resnet``, the short name of :class:`~project.models.transfer.Transfer`
with ``backbone: resnet18``."""

from __future__ import annotations

from project.models.transfer import Transfer


class ResNet(Transfer):
    """torchvision ResNet-18 (or any ``backbone``) with a new ``num_classes`` head; see :class:`Transfer`.

    Kept as its own class so that ``--model resnet`` runs, checkpoints and exports keep their name.
    """
