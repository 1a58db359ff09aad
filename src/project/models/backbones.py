"""Any torchvision (or timm) classification network as a backbone: build it, find its head and first convolution,
load its pretrained weights, and say which input size and normalization those weights expect.

torchvision's networks differ in where their classifier sits (``fc``, ``classifier[-1]``, ``heads.head``, ``head``;
a 1x1 convolution in SqueezeNet) and where their first convolution is; both are found generically here: the head is
the last ``nn.Linear`` (or ``nn.Conv2d``) in module order, the stem the first ``nn.Conv2d``.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import torch
import torchvision
from torch import nn

from project.engine.api import MissingDownload, Preprocessing, UserError

TIMM_PREFIX = "timm/"
#: Built without their auxiliary heads (which only train with a loss of their own).
_AUX_HEADS = ("googlenet", "inception_v3")


def torchvision_names() -> list[str]:
    """Every torchvision classification model (``torchvision.models.list_models(module=torchvision.models)``)."""
    return torchvision.models.list_models(module=torchvision.models)


def check_name(name: str) -> None:
    """A one-line error naming close matches for an unknown backbone."""
    if name.startswith(TIMM_PREFIX):
        timm = _timm()
        names = timm.list_models()
        bare = name.removeprefix(TIMM_PREFIX)
    else:
        names, bare = torchvision_names(), name
    if bare not in names:
        close = difflib.get_close_matches(bare, names, n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()"
        raise UserError(f"--model.backbone: unknown backbone {name!r}{hint}")


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise UserError("--model.backbone timm/...: timm is not installed (pip install -e '.[timm]')") from None
    return timm


def default_weights(name: str) -> Any:
    """torchvision's ``DEFAULT`` weights enum of ``name``."""
    return torchvision.models.get_model_weights(name).DEFAULT


def preferred_preprocessing(name: str) -> Preprocessing:
    """The input size and normalization the backbone's pretrained weights were trained with.

    ``{"image_size": int, "mean": (...), "std": (...)}`` from ``weights.transforms()`` (torchvision) or the
    pretrained config (timm).
    """
    check_name(name)
    if name.startswith(TIMM_PREFIX):
        config = _timm().get_pretrained_cfg(name.removeprefix(TIMM_PREFIX)).to_dict()
        return {"image_size": int(config["input_size"][-1]), "mean": config["mean"], "std": config["std"]}
    transforms = default_weights(name).transforms()
    return {"image_size": int(transforms.crop_size[0]), "mean": tuple(transforms.mean), "std": tuple(transforms.std)}


def build(name: str, num_classes: int, input_shape: tuple[int, int, int], pretrained: bool) -> nn.Module:
    """The network with random weights, a ``num_classes`` head and a first convolution for the input's channels."""
    check_name(name)
    channels, height, _ = input_shape
    if name.startswith(TIMM_PREFIX):
        return _timm().create_model(name.removeprefix(TIMM_PREFIX), num_classes=num_classes, in_chans=channels)
    min_size = default_weights(name).meta.get("min_size", (1, 1))[0]
    if not name.startswith("vit_") and min(input_shape[1:]) < min_size:
        raise ValueError(f"{name} needs inputs of at least {min_size} px, got {input_shape}: set --data.image_size")
    kwargs: dict[str, Any] = {}
    if name in _AUX_HEADS:
        # transform_input maps ImageNet-normalized RGB to what the pretrained weights expect (torchvision's default).
        kwargs.update(aux_logits=False, init_weights=True, transform_input=pretrained and channels == 3)
    if name.startswith("vit_"):
        kwargs["image_size"] = height  # the position embeddings are interpolated to it (load_pretrained)
    network = torchvision.models.get_model(name, weights=None, **kwargs)
    head_name, head = find_head(network)
    _replace(network, head_name, _resized(head, num_classes))
    stem_name, stem = find_stem(network)
    if stem.in_channels != channels:
        _replace(network, stem_name, _with_in_channels(stem, channels))
    return network


def find_head(network: nn.Module) -> tuple[str, nn.Module]:
    """The classifier layer: the last ``nn.Linear`` (or ``nn.Conv2d``, as in SqueezeNet) in the network."""
    if hasattr(network, "get_classifier"):  # timm
        head = network.get_classifier()
        return next(name for name, module in network.named_modules() if module is head), head
    return [(n, m) for n, m in network.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]


def find_stem(network: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first convolution: the one that reads the image's channels."""
    return next((n, m) for n, m in network.named_modules() if isinstance(m, nn.Conv2d))


def backbone_of(network: nn.Module, head_name: str) -> nn.ModuleList:
    """Every module and parameter of ``network`` but its head, as one module (to freeze and unfreeze)."""
    parts: list[nn.Module] = []
    module, path = network, head_name.split(".")
    for step in path:
        parts.extend(child for name, child in module.named_children() if name != step)
        direct = list(module.parameters(recurse=False))  # e.g. ViT's class token
        if direct:
            parts.append(_Parameters(direct))
        module = module.get_submodule(step)
    return nn.ModuleList(parts)


def layer_indices(network: nn.Module, head_name: str) -> dict[str, int]:
    """The depth of every parameter outside the head, from 0 at the input: the layers of layer-wise lr decay.

    timm's own grouping (``group_matcher``) for timm models. For torchvision's, a layer is the path up to the first
    numbered module (``features.3``, ``layer2``, ``encoder.layers.encoder_layer_7``), else the parameter's module.
    """
    names = [name for name, _ in network.named_parameters() if not name.startswith(f"{head_name}.")]
    if hasattr(network, "group_matcher"):
        from timm.models import group_parameters

        groups = group_parameters(network, network.group_matcher(coarse=False))
        key: dict[str, Any] = {name: index for index, members in groups.items() for name in members}
        layers = sorted({key[name] for name in names})
    else:
        key = {name: _layer_of(name) for name in names}
        layers = list(dict.fromkeys(key[name] for name in names))  # in module order: the input first
    depth = {layer: index for index, layer in enumerate(layers)}
    return {name: depth[key[name]] for name in names}


def _layer_of(name: str) -> str:
    parts = name.split(".")
    numbered = next((i for i, part in enumerate(parts[:-1]) if part[-1].isdigit()), None)
    return ".".join(parts[: numbered + 1] if numbered is not None else parts[:-1]) or name


class _Parameters(nn.Module):
    """Parameters held directly by a module on the way to the head, shared (not copied) as a leaf module."""

    def __init__(self, parameters: list[nn.Parameter]) -> None:
        super().__init__()
        for index, parameter in enumerate(parameters):
            self.register_parameter(f"p{index}", parameter)


def pretrained_state(name: str, input_shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """The ``DEFAULT`` ImageNet weights' state dict, from torchvision's cache (a one-line error when absent)."""
    spec = default_weights(name)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    cached = os.path.join(folder, os.path.basename(spec.url))
    try:
        # Built by torchvision's own builder: it repairs old state dicts' keys (DenseNet) as it loads them.
        state = torchvision.models.get_model(name, weights=spec, progress=False).state_dict()
    except (OSError, ValueError) as error:  # URLError is an OSError
        raise MissingDownload(
            f"{name} ImageNet weights are not in torchvision's cache and could not be downloaded ({error}); put the"
            f" file {os.path.basename(spec.url)} into {folder} (as {cached}, from {spec.url}), or pass --model.weights"
            " PATH or none"
        ) from None
    if name.startswith("vit_"):
        from torchvision.models.vision_transformer import interpolate_embeddings

        patch = int(name.split("_")[-1])
        state = interpolate_embeddings(input_shape[1], patch, state)
    return dict(state)


def load_into(network: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``network``: a head of another size is left out, RGB stem kernels summed for gray input."""
    stem_name, stem = find_stem(network)
    key = f"{stem_name}.weight"
    if key in state and state[key].shape[1] != stem.in_channels:
        # Summing the RGB kernels gives what feeding the gray image on all three channels would.
        channels = stem.in_channels
        state[key] = state[key].sum(dim=1, keepdim=True).repeat(1, channels, 1, 1) / channels
    head_name, head = find_head(network)
    own = network.state_dict()
    head_keys = {k for k in own if k.startswith(f"{head_name}.")}
    if any(k in state and state[k].shape != own[k].shape for k in head_keys):
        state = {k: v for k, v in state.items() if k not in head_keys}
    missing, unexpected = network.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.startswith(("AuxLogits.", "aux1.", "aux2."))]
    if unexpected or set(missing) - head_keys:
        raise UserError(f"--model.weights {source}: not a state dict of this network ({unexpected or missing})")


def _resized(head: nn.Module, num_classes: int) -> nn.Module:
    if isinstance(head, nn.Linear):
        return nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    return nn.Conv2d(head.in_channels, num_classes, head.kernel_size, head.stride, head.padding)


def _with_in_channels(conv: nn.Conv2d, channels: int) -> nn.Conv2d:
    return nn.Conv2d(
        channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
    )


def _replace(network: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(network.get_submodule(parent) if parent else network, child, module)
