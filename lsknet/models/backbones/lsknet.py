"""LSKNet backbone for oriented object detection, with a loader for its checkpoints.

The module and parameter names (``patch_embed1.proj``, ``block1.0.attn.proj_1``,
``block1.0.mlp.dwconv.dwconv`` and so on) are those of the released LSKNet
checkpoints, so the ImageNet-pretrained backbones and the DOTA-trained detectors
load without renaming keys.
"""
import logging
import math
import os.path as osp
import warnings
from collections.abc import Mapping
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmcv.runner import BaseModule
from mmcv.runner.checkpoint import _load_checkpoint
from mmrotate.models.builder import ROTATED_BACKBONES
from mmrotate.utils import get_root_logger
from torch import Tensor

from ...utils.checkpoint import load_checkpoint_file

# How many key names an error or log message lists before it only counts the rest.
MAX_LISTED_KEYS = 10


def build_conv_norm(norm_cfg: Optional[dict], num_channels: int) -> nn.Module:
    """Build the norm layer that follows a convolution (``BatchNorm2d`` for None)."""
    if norm_cfg is None:
        return nn.BatchNorm2d(num_channels)
    # build_norm_layer also returns a name such as 'bn1'. It is dropped because the
    # checkpoint keys fix the attribute names (norm, norm1, norm2).
    _, norm = build_norm_layer(norm_cfg, num_channels)
    return norm


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map, applied at each spatial position."""

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` of shape (N, C, H, W) and return the same shape."""
        x = x.permute(0, 2, 3, 1)
        x = super().forward(x)
        return x.permute(0, 3, 1, 2).contiguous()


class OverlapPatchEmbed(nn.Module):
    """Downsampling at the start of a stage: overlapping strided convolution, then norm.

    Args:
        in_channels (int): Channels of the input map.
        embed_dim (int): Channels of the output map.
        kernel_size (int): Convolution kernel size. The padding is ``kernel_size // 2``.
        stride (int): Downsampling factor.
        norm_cfg (dict, optional): Norm layer config. None builds ``BatchNorm2d``.
    """

    def __init__(self, in_channels: int, embed_dim: int, kernel_size: int,
                 stride: int, norm_cfg: Optional[dict]) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            in_channels,
            embed_dim,
            kernel_size=kernel_size,
            stride=stride,
            padding=kernel_size // 2)
        self.norm = build_conv_norm(norm_cfg, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Map (N, in_channels, H, W) to (N, embed_dim, H / stride, W / stride)."""
        return self.norm(self.proj(x))


class DepthwiseConv3x3(nn.Module):
    """Depthwise 3x3 convolution with bias.

    The wrapper exists only so that the checkpoint key is ``mlp.dwconv.dwconv``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(
            channels, channels, kernel_size=3, padding=1, groups=channels)

    def forward(self, x: Tensor) -> Tensor:
        """Filter each channel of (N, C, H, W) and return the same shape."""
        return self.dwconv(x)


class ConvMlp(nn.Module):
    """Feed-forward network of 1x1 convolutions with a depthwise 3x3 convolution inside.

    Args:
        channels (int): Input and output channels.
        hidden_channels (int): Channels between ``fc1`` and ``fc2``.
        drop_rate (float): Dropout probability after the activation and after ``fc2``.
    """

    def __init__(self, channels: int, hidden_channels: int,
                 drop_rate: float) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden_channels, kernel_size=1)
        self.dwconv = DepthwiseConv3x3(hidden_channels)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_channels, channels, kernel_size=1)
        self.drop = nn.Dropout(drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        """Map (N, C, H, W) to (N, C, H, W)."""
        x = self.fc1(x)
        x = self.dwconv(x)
        x = self.act(x)
        x = self.drop(x)
        x = self.fc2(x)
        return self.drop(x)


class LargeSelectiveKernel(nn.Module):
    """Large selective kernel: weights a local and a wide-context branch per pixel.

    A depthwise 5x5 convolution gives the local branch. A depthwise 7x7 convolution
    with dilation 3 on top of it gives the context branch, whose receptive field is
    23x23. A 7x7 convolution over the channel-wise mean and max of both branches
    yields one sigmoid weight map per branch. The weighted sum, projected back to
    ``channels``, multiplies the input.

    Args:
        channels (int): Input and output channels. It must be even, because each
            branch is reduced to ``channels // 2``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        branch_channels = channels // 2
        self.conv0 = nn.Conv2d(
            channels, channels, kernel_size=5, padding=2, groups=channels)
        self.conv_spatial = nn.Conv2d(
            channels,
            channels,
            kernel_size=7,
            padding=9,
            dilation=3,
            groups=channels)
        self.conv1 = nn.Conv2d(channels, branch_channels, kernel_size=1)
        self.conv2 = nn.Conv2d(channels, branch_channels, kernel_size=1)
        self.conv_squeeze = nn.Conv2d(2, 2, kernel_size=7, padding=3)
        self.conv = nn.Conv2d(branch_channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """Map (N, C, H, W) to (N, C, H, W)."""
        local_features = self.conv0(x)
        context_features = self.conv_spatial(local_features)
        local_branch = self.conv1(local_features)
        context_branch = self.conv2(context_features)

        # (N, 2, H, W): channel-wise mean and max over both branches together.
        both_branches = torch.cat([local_branch, context_branch], dim=1)
        mean_map = both_branches.mean(dim=1, keepdim=True)
        max_map = both_branches.amax(dim=1, keepdim=True)
        selection = self.conv_squeeze(torch.cat([mean_map, max_map], dim=1))
        selection = selection.sigmoid()

        selected = (local_branch * selection[:, 0:1] +
                    context_branch * selection[:, 1:2])
        return x * self.conv(selected)


class LSKAttention(nn.Module):
    """1x1 projection, GELU, large selective kernel, 1x1 projection, plus the input.

    Args:
        channels (int): Input and output channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(channels, channels, kernel_size=1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = LargeSelectiveKernel(channels)
        self.proj_2 = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """Map (N, C, H, W) to (N, C, H, W)."""
        shortcut = x
        x = self.proj_1(x)
        x = self.activation(x)
        x = self.spatial_gating_unit(x)
        x = self.proj_2(x)
        return x + shortcut


class LSKBlock(nn.Module):
    """Residual block: norm, LSK attention, then norm and MLP, each with layer scale.

    Args:
        channels (int): Input and output channels.
        mlp_ratio (float): Hidden channels of the MLP divided by ``channels``.
        drop_rate (float): Dropout probability inside the MLP.
        drop_path_rate (float): Stochastic depth probability of both residual branches.
        norm_cfg (dict, optional): Norm layer config. None builds ``BatchNorm2d``.
    """

    # Initial value of the per-channel scales on both residual branches.
    layer_scale_init_value = 1e-2

    def __init__(self, channels: int, mlp_ratio: float, drop_rate: float,
                 drop_path_rate: float, norm_cfg: Optional[dict]) -> None:
        super().__init__()
        self.norm1 = build_conv_norm(norm_cfg, channels)
        self.attn = LSKAttention(channels)
        self.drop_path = DropPath(drop_path_rate)
        self.norm2 = build_conv_norm(norm_cfg, channels)
        self.mlp = ConvMlp(channels, int(channels * mlp_ratio), drop_rate)
        self.layer_scale_1 = nn.Parameter(
            torch.full((channels, ), self.layer_scale_init_value))
        self.layer_scale_2 = nn.Parameter(
            torch.full((channels, ), self.layer_scale_init_value))

    def forward(self, x: Tensor) -> Tensor:
        """Map (N, C, H, W) to (N, C, H, W)."""
        attn_out = self.attn(self.norm1(x))
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * attn_out)
        mlp_out = self.mlp(self.norm2(x))
        return x + self.drop_path(self.layer_scale_2[:, None, None] * mlp_out)


@ROTATED_BACKBONES.register_module()
class LSKNet(BaseModule):
    """LSKNet backbone.

    Implements "Large Selective Kernel Network for Remote Sensing Object Detection"
    (Li et al., ICCV 2023). Each stage downsamples with an overlapping strided
    convolution, runs ``depths[i]`` LSK blocks and ends with a channel LayerNorm.
    LSKNet-T uses ``embed_dims=(32, 64, 160, 256)``, ``depths=(3, 3, 5, 2)``.
    LSKNet-S uses ``embed_dims=(64, 128, 320, 512)``, ``depths=(2, 2, 4, 2)``.
    Both use ``mlp_ratios=(8, 8, 4, 4)``.

    Args:
        embed_dims (Sequence[int]): Channels of each stage, all even.
            Default: (64, 128, 256, 512).
        mlp_ratios (Sequence[float]): MLP hidden channels divided by the stage's
            channels, per stage. Default: (8, 8, 4, 4).
        drop_rate (float): Dropout probability inside the MLPs, in [0, 1).
            Default: 0.0.
        drop_path_rate (float): Stochastic depth probability of the last block, in
            [0, 1). The probability rises linearly from 0 at the first block over
            all blocks of all stages. Default: 0.0.
        depths (Sequence[int]): Number of LSK blocks per stage. Default: (3, 4, 6, 3).
        num_stages (int): Number of stages and of output maps. Default: 4.
        norm_cfg (dict, optional): Config of the norm layers between convolutions,
            for example ``dict(type='SyncBN', requires_grad=True)``. None builds
            ``BatchNorm2d``. The LayerNorm at the end of each stage is fixed.
            Default: None.
        init_cfg (dict or list[dict], optional): ``dict(type='Pretrained',
            checkpoint=PATH)`` loads an ImageNet or detector checkpoint (see
            :meth:`init_weights`). Other configs go to mmcv's initialisers. None
            applies the LSKNet initialisation. Default: None.
        pretrained (str, optional): Deprecated, use ``init_cfg`` instead. A path
            here becomes ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)``.
            Default: None.

    """

    def __init__(self,
                 embed_dims: Sequence[int] = (64, 128, 256, 512),
                 mlp_ratios: Sequence[float] = (8, 8, 4, 4),
                 drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0,
                 depths: Sequence[int] = (3, 4, 6, 3),
                 num_stages: int = 4,
                 norm_cfg: Optional[dict] = None,
                 init_cfg: Optional[dict] = None,
                 pretrained: Optional[str] = None) -> None:
        if init_cfg is not None and pretrained is not None:
            raise ValueError(
                'LSKNet got both init_cfg and the deprecated pretrained argument. '
                'Set only init_cfg=dict(type="Pretrained", checkpoint=PATH)')
        if pretrained is not None:
            if not isinstance(pretrained, str):
                raise TypeError('LSKNet pretrained must be a checkpoint path (str) '
                                f'or None, got {type(pretrained).__name__}')
            warnings.warn(
                'LSKNet: the pretrained argument is deprecated, use '
                'init_cfg=dict(type="Pretrained", checkpoint=PATH) instead',
                DeprecationWarning)
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)

        check_lsknet_arguments(embed_dims, mlp_ratios, depths, num_stages,
                               drop_rate, drop_path_rate)
        self.embed_dims = tuple(embed_dims)
        self.depths = tuple(depths)
        self.num_stages = num_stages

        num_blocks = sum(depths)
        block_drop_path_rates = torch.linspace(0, drop_path_rate,
                                               num_blocks).tolist()
        first_block = 0
        in_channels = 3
        for stage, (channels, depth, mlp_ratio) in enumerate(
                zip(embed_dims, depths, mlp_ratios), start=1):
            patch_embed = OverlapPatchEmbed(
                in_channels,
                channels,
                kernel_size=7 if stage == 1 else 3,
                stride=4 if stage == 1 else 2,
                norm_cfg=norm_cfg)
            blocks = nn.ModuleList([
                LSKBlock(
                    channels,
                    mlp_ratio,
                    drop_rate=drop_rate,
                    drop_path_rate=block_drop_path_rates[first_block + index],
                    norm_cfg=norm_cfg) for index in range(depth)
            ])
            # The checkpoint keys number the stages from 1: patch_embed1, block1, norm1.
            setattr(self, f'patch_embed{stage}', patch_embed)
            setattr(self, f'block{stage}', blocks)
            setattr(self, f'norm{stage}', ChannelLayerNorm(channels, eps=1e-6))
            first_block += depth
            in_channels = channels

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Compute the stage outputs of images ``x`` of shape (N, 3, H, W).

        Returns:
            tuple[Tensor]: ``num_stages`` maps of shape (N, embed_dims[i], H_i, W_i)
            with strides 4, 8, 16, 32.
        """
        outputs = []
        for stage in range(1, self.num_stages + 1):
            x = getattr(self, f'patch_embed{stage}')(x)
            for block in getattr(self, f'block{stage}'):
                x = block(x)
            x = getattr(self, f'norm{stage}')(x)
            outputs.append(x)
        return tuple(outputs)

    def init_weights(self) -> None:
        """Initialise the weights as ``init_cfg`` requests.

        ``init_cfg=None`` draws every convolution from N(0, 2 / fan_out) with
        ``fan_out = kh * kw * out_channels / groups`` and zero bias, and sets every
        LayerNorm to weight 1, bias 0. BatchNorm layers and layer scales keep the
        values they were built with (1, 0 and 0.01).

        ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` loads PATH. The file
        may be a plain state dict or hold one under ``state_dict`` or ``model``.
        A ``module.`` prefix is stripped from every key. Only the keys under
        ``init_cfg['prefix']`` are kept, with the prefix stripped. Without a
        ``prefix`` entry, the prefix is ``backbone.`` when any key carries it, so
        detector checkpoints load too. ImageNet classification head keys
        (``head.*``) and the other parts of a detector are ignored and logged.
        Every other key must match the backbone in name and shape.

        Other ``init_cfg`` types are passed to mmcv's ``BaseModule.init_weights``.

        Raises:
            FileNotFoundError: If a local checkpoint path does not exist.
            RuntimeError: If the checkpoint lacks backbone keys, has unknown keys,
                or has tensors of another shape.
            UnsafeCheckpointError: If a local checkpoint pickles objects other
                than tensors, containers and NumPy values.
        """
        if self.init_cfg is None:
            self._init_from_scratch()
        elif (isinstance(self.init_cfg, dict)
              and self.init_cfg.get('type') == 'Pretrained'):
            self._load_pretrained(self.init_cfg['checkpoint'],
                                  self.init_cfg.get('prefix'))
        else:
            super().init_weights()

    def _init_from_scratch(self) -> None:
        # The original LSKNet code also draws Linear layers from a truncated normal
        # (std 0.02), but this backbone has no Linear layers.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = (module.kernel_size[0] * module.kernel_size[1] *
                           module.out_channels // module.groups)
                nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _load_pretrained(self, checkpoint_path: str,
                         prefix: Optional[str]) -> None:
        logger = get_root_logger()
        checkpoint = read_checkpoint(checkpoint_path, logger)
        state_dict, ignored_keys = select_backbone_state_dict(
            checkpoint, checkpoint_path, prefix)
        if ignored_keys:
            logger.info(
                f'LSKNet: ignored {len(ignored_keys)} entries of {checkpoint_path} '
                f'that are not backbone weights: {format_keys(ignored_keys)}')

        check_state_dict_matches(self, state_dict, checkpoint_path)
        self.load_state_dict(state_dict, strict=True)
        logger.info(f'LSKNet: loaded {len(state_dict)} backbone entries from '
                    f'{checkpoint_path}')


def check_lsknet_arguments(embed_dims: Sequence[int], mlp_ratios: Sequence[float],
                           depths: Sequence[int], num_stages: int,
                           drop_rate: float, drop_path_rate: float) -> None:
    """Raise ValueError naming the first invalid LSKNet constructor argument."""
    if not isinstance(num_stages, int) or num_stages < 1:
        raise ValueError(
            f'LSKNet num_stages must be a positive int, got {num_stages!r}')
    per_stage = dict(embed_dims=embed_dims, depths=depths, mlp_ratios=mlp_ratios)
    for name, values in per_stage.items():
        if len(values) != num_stages:
            raise ValueError(
                f'LSKNet {name} must have one entry per stage (num_stages='
                f'{num_stages}), got {len(values)}: {list(values)}')
    for channels in embed_dims:
        if not isinstance(channels, int) or channels < 2 or channels % 2:
            raise ValueError(
                'LSKNet embed_dims must be even positive ints, because the large '
                f'selective kernel halves each stage width, got {list(embed_dims)}')
    for depth in depths:
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(
                f'LSKNet depths must be positive ints, got {list(depths)}')
    for ratio in mlp_ratios:
        if not ratio > 0:
            raise ValueError(
                f'LSKNet mlp_ratios must be positive, got {list(mlp_ratios)}')
    for name, rate in (('drop_rate', drop_rate),
                       ('drop_path_rate', drop_path_rate)):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f'LSKNet {name} must be in [0, 1), got {rate!r}')


def format_keys(keys: Sequence[str]) -> str:
    """Join the first ``MAX_LISTED_KEYS`` keys with commas and count the rest."""
    listed = ', '.join(keys[:MAX_LISTED_KEYS])
    if len(keys) > MAX_LISTED_KEYS:
        listed += f' and {len(keys) - MAX_LISTED_KEYS} more'
    return listed


def read_checkpoint(checkpoint_path: str, logger: logging.Logger) -> Mapping:
    """Load a checkpoint onto the CPU.

    Local paths go through :func:`lsknet.utils.checkpoint.load_checkpoint_file`,
    which unpickles tensors, containers and NumPy values but no other objects.
    Paths with a scheme (``http://``, ``torchvision://``, ``open-mmlab://`` and
    others) go to mmcv's ``_load_checkpoint``, which unpickles everything.

    Raises:
        FileNotFoundError: If a local ``checkpoint_path`` does not exist.
        TypeError: If the file does not contain a dict.
    """
    if '://' in checkpoint_path:
        checkpoint = _load_checkpoint(
            checkpoint_path, map_location='cpu', logger=logger)
    else:
        local_path = osp.expanduser(checkpoint_path)
        if not osp.isfile(local_path):
            raise FileNotFoundError(
                f'LSKNet pretrained checkpoint not found: {checkpoint_path} '
                f'(resolved to {osp.abspath(local_path)}). Put the ImageNet '
                'backbone weights (lsk_t_backbone.pth.tar or lsk_s_backbone.pth.tar) '
                'at that path, or train from scratch with '
                'model.backbone.init_cfg=None, for example '
                '--cfg-options model.backbone.init_cfg=None')
        checkpoint = load_checkpoint_file(local_path, map_location='cpu')

    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'checkpoint {checkpoint_path} must contain a dict, got '
                        f'{type(checkpoint).__name__}')
    return checkpoint


def select_backbone_state_dict(
        checkpoint: Mapping, checkpoint_path: str,
        prefix: Optional[str]) -> Tuple[Dict[str, Tensor], List[str]]:
    """Extract the backbone state dict from a checkpoint.

    Args:
        checkpoint (Mapping): A state dict, or a dict with one under ``state_dict``
            or ``model``.
        checkpoint_path (str): Where the checkpoint came from, for messages.
        prefix (str, optional): Key prefix of the backbone entries, such as
            ``'backbone.'``. None uses ``'backbone.'`` when any key starts with it
            and takes all keys otherwise.

    Returns:
        tuple: The backbone state dict with prefixes stripped, and the keys that
        were dropped (outside ``prefix``, or ``head.*`` classification weights).
    """
    state_dict = checkpoint
    for entry in ('state_dict', 'model'):
        if isinstance(checkpoint.get(entry), Mapping):
            state_dict = checkpoint[entry]
            break

    # Models wrapped in (Distributed)DataParallel save every key under 'module.'.
    state_dict = {
        key[len('module.'):] if key.startswith('module.') else key: value
        for key, value in state_dict.items()
    }
    if prefix is None and any(key.startswith('backbone.') for key in state_dict):
        prefix = 'backbone.'
    if prefix is not None and not any(key.startswith(prefix) for key in state_dict):
        raise RuntimeError(f'checkpoint {checkpoint_path} has no keys starting '
                           f'with the prefix {prefix!r}')

    backbone_state_dict = {}
    ignored_keys = []
    for key, value in state_dict.items():
        if prefix is not None:
            if not key.startswith(prefix):
                ignored_keys.append(key)
                continue
            key = key[len(prefix):]
        if key.startswith('head.'):
            ignored_keys.append(key)
            continue
        backbone_state_dict[key] = value
    return backbone_state_dict, ignored_keys


def check_state_dict_matches(model: nn.Module, state_dict: Mapping,
                             checkpoint_path: str) -> None:
    """Raise RuntimeError listing the keys and shapes that differ from ``model``."""
    expected = model.state_dict()
    # Older checkpoints lack num_batches_tracked. BatchNorm sets it to 0 when the
    # state dict has no version metadata, as with the plain dict built here.
    missing_keys = [
        key for key in expected
        if key not in state_dict and not key.endswith('num_batches_tracked')
    ]
    unexpected_keys = [key for key in state_dict if key not in expected]
    shape_mismatches = [
        f'{key} (checkpoint {tuple(value.shape)}, model '
        f'{tuple(expected[key].shape)})' for key, value in state_dict.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if not (missing_keys or unexpected_keys or shape_mismatches):
        return

    problems = []
    if missing_keys:
        problems.append(f'missing keys: {format_keys(missing_keys)}')
    if unexpected_keys:
        problems.append(f'unexpected keys: {format_keys(unexpected_keys)}')
    if shape_mismatches:
        problems.append(f'shape mismatches: {format_keys(shape_mismatches)}')
    raise RuntimeError(
        f'checkpoint {checkpoint_path} does not match LSKNet(embed_dims='
        f'{list(model.embed_dims)}, depths={list(model.depths)}). '
        + '. '.join(problems) +
        '. Check that the checkpoint is for the variant in the config.')
