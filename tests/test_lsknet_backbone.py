"""Tests of the LSKNet backbone: checkpoint layout, outputs, options, weight loading."""
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import require_shared_path

import lsknet  # noqa: F401 (registers LSKNet)
from lsknet.models.backbones import LSKNet
from lsknet.utils.checkpoint import UnsafeCheckpointError

LSK_T_ARCH = dict(
    embed_dims=[32, 64, 160, 256], depths=[3, 3, 5, 2], mlp_ratios=[8, 8, 4, 4])
LSK_S_ARCH = dict(
    embed_dims=[64, 128, 320, 512], depths=[2, 2, 4, 2], mlp_ratios=[8, 8, 4, 4])
# Same layout as the numerical fixture, and fast to build and run.
TINY_ARCH = dict(
    embed_dims=[8, 16, 24, 32], depths=[1, 1, 2, 1], mlp_ratios=[8, 8, 4, 4])


@pytest.fixture(scope='module')
def specs_root() -> str:
    """Folder with the state-dict listings of the released LSKNet checkpoints."""
    return require_shared_path('..', 'specs')


def read_state_dict_listing(path: str) -> dict:
    """Parse lines of ``name<TAB>(shape)<TAB>dtype`` into {name: (shape, dtype)}."""
    listing = {}
    with open(path, encoding='utf-8') as listing_file:
        for line in listing_file:
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            name, shape_text, dtype_name = line.split('\t')
            shape = tuple(
                int(size) for size in shape_text.strip('()').split(',')
                if size.strip())
            listing[name] = (shape, getattr(torch, dtype_name))
    return listing


def describe_state_dict(model: nn.Module) -> dict:
    return {
        name: (tuple(tensor.shape), tensor.dtype)
        for name, tensor in model.state_dict().items()
    }


def fill_with_random_values(model: nn.Module, seed: int) -> dict:
    """Fill ``model``'s state dict with seeded random values and return a copy."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = model.state_dict()
    for name, tensor in state_dict.items():
        if tensor.dtype == torch.int64:
            tensor.copy_(torch.randint(1, 1000, tensor.shape, generator=generator))
        else:
            tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return {name: tensor.clone() for name, tensor in state_dict.items()}


def assert_state_dict_equal(model: nn.Module, expected: dict) -> None:
    actual = model.state_dict()
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


@pytest.mark.parametrize(
    'variant, arch, num_parameters',
    [('lsk_t', LSK_T_ARCH, 3_990_190), ('lsk_s', LSK_S_ARCH, 13_840_892)])
def test_state_dict_matches_release(specs_root, variant, arch, num_parameters):
    listing = read_state_dict_listing(
        f'{specs_root}/{variant}_backbone_state_dict.txt')
    model = LSKNet(**arch)

    described = describe_state_dict(model)
    assert sorted(set(described) - set(listing)) == []
    assert sorted(set(listing) - set(described)) == []
    for name, (shape, dtype) in listing.items():
        assert described[name] == (shape, dtype), name
    assert sum(param.numel() for param in model.parameters()) == num_parameters


def test_tiny_reference_outputs(tiny_reference_path):
    reference = torch.load(tiny_reference_path, weights_only=True)
    arch = reference['arch']
    model = LSKNet(
        embed_dims=arch['embed_dims'],
        depths=arch['depths'],
        mlp_ratios=arch['mlp_ratios'])
    model.load_state_dict(reference['state_dict'], strict=True)
    model.eval()

    with torch.no_grad():
        outputs = model(reference['input'])

    assert len(outputs) == 4
    batch_size, _, height, width = reference['input'].shape
    for stage, (output, expected) in enumerate(zip(outputs, reference['outputs'])):
        stride = 4 * 2**stage
        assert output.shape == (batch_size, arch['embed_dims'][stage],
                                height // stride, width // stride)
        torch.testing.assert_close(output, expected, atol=1e-5, rtol=0)


def test_lsk_t_output_strides_and_channels():
    model = LSKNet(**LSK_T_ARCH).eval()
    with torch.no_grad():
        outputs = model(torch.rand(1, 3, 64, 64))

    assert [tuple(output.shape) for output in outputs] == [
        (1, 32, 16, 16), (1, 64, 8, 8), (1, 160, 4, 4), (1, 256, 2, 2)]


def test_output_sizes_round_up():
    model = LSKNet(**TINY_ARCH).eval()
    with torch.no_grad():
        outputs = model(torch.rand(1, 3, 70, 50))

    # ceil(70 / stride) and ceil(50 / stride) for strides 4, 8, 16, 32.
    assert [tuple(output.shape[2:]) for output in outputs] == [
        (18, 13), (9, 7), (5, 4), (3, 2)]


def test_three_stages_return_three_maps():
    model = LSKNet(
        embed_dims=[8, 16, 24], depths=[1, 1, 1], mlp_ratios=[4, 4, 4],
        num_stages=3).eval()
    with torch.no_grad():
        outputs = model(torch.rand(1, 3, 32, 32))

    assert [tuple(output.shape) for output in outputs] == [
        (1, 8, 8, 8), (1, 16, 4, 4), (1, 24, 2, 2)]
    assert not hasattr(model, 'patch_embed4')


def test_sync_bn_keeps_state_dict_names():
    batch_norm_model = LSKNet(**LSK_T_ARCH)
    sync_bn_model = LSKNet(
        **LSK_T_ARCH, norm_cfg=dict(type='SyncBN', requires_grad=True))

    sync_bn_layers = [
        module for module in sync_bn_model.modules()
        if isinstance(module, nn.SyncBatchNorm)
    ]
    # One norm per patch embedding and two per block.
    assert len(sync_bn_layers) == 4 + 2 * sum(LSK_T_ARCH['depths'])
    assert not any(
        type(module) is nn.BatchNorm2d for module in sync_bn_model.modules())
    assert isinstance(sync_bn_model.block2[1].norm1, nn.SyncBatchNorm)
    assert describe_state_dict(sync_bn_model) == describe_state_dict(
        batch_norm_model)


def test_norm_cfg_requires_grad_false_freezes_norms():
    model = LSKNet(**TINY_ARCH, norm_cfg=dict(type='BN', requires_grad=False))

    assert model.patch_embed1.norm.weight.requires_grad is False
    assert model.block3[1].norm2.bias.requires_grad is False
    # The stage-end LayerNorm does not follow norm_cfg.
    assert model.norm3.weight.requires_grad is True


def test_init_weights_from_scratch():
    torch.manual_seed(0)
    model = LSKNet(**LSK_T_ARCH)
    model.init_weights()

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            assert torch.count_nonzero(module.bias) == 0, name
            if module.weight.numel() >= 1000:
                fan_out = (module.kernel_size[0] * module.kernel_size[1] *
                           module.out_channels // module.groups)
                expected_std = math.sqrt(2.0 / fan_out)
                assert module.weight.std().item() == pytest.approx(
                    expected_std, rel=0.15), name
                assert abs(module.weight.mean().item()) < 0.15 * expected_std, name
        elif isinstance(module, nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
    assert torch.equal(model.block4[1].layer_scale_2, torch.full((256, ), 0.01))
    assert torch.equal(model.block1[0].norm1.weight, torch.ones(32))


def test_other_init_cfg_goes_to_mmcv():
    model = LSKNet(
        **TINY_ARCH,
        init_cfg=dict(type='Constant', layer='Conv2d', val=0.5, bias=0.25))
    model.init_weights()

    assert torch.all(model.block2[0].mlp.fc1.weight == 0.5)
    assert torch.all(model.patch_embed1.proj.bias == 0.25)


@pytest.mark.parametrize('layout', [
    'plain', 'state_dict', 'model', 'module_prefix', 'detector',
    'head_and_state_dict'
])
def test_pretrained_checkpoint_loads(tmp_path, layout):
    source = LSKNet(**TINY_ARCH)
    weights = fill_with_random_values(source, seed=1)
    if layout == 'plain':
        checkpoint = dict(weights)
    elif layout == 'state_dict':
        checkpoint = {'state_dict': weights, 'epoch': 300}
    elif layout == 'model':
        checkpoint = {'model': weights}
    elif layout == 'module_prefix':
        checkpoint = {f'module.{name}': value for name, value in weights.items()}
    elif layout == 'detector':
        checkpoint = {
            'state_dict': {
                **{f'backbone.{name}': value for name, value in weights.items()},
                'neck.lateral_convs.0.conv.weight': torch.ones(4, 8, 1, 1),
            },
            'meta': {'epoch': 12, 'CLASSES': ('plane', 'ship')},
        }
    else:
        checkpoint = {
            'state_dict': {
                **weights, 'head.weight': torch.ones(1000, 32),
                'head.bias': torch.zeros(1000)
            }
        }
    checkpoint_path = tmp_path / 'lsk_tiny.pth'
    torch.save(checkpoint, checkpoint_path)

    model = LSKNet(
        **TINY_ARCH,
        init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint_path)))
    model.init_weights()

    assert_state_dict_equal(model, weights)


def test_pretrained_prefix_selects_submodule(tmp_path):
    weights = fill_with_random_values(LSKNet(**TINY_ARCH), seed=9)
    other_weights = fill_with_random_values(LSKNet(**TINY_ARCH), seed=10)
    checkpoint = {
        **{f'student.backbone.{name}': value for name, value in weights.items()},
        **{f'teacher.backbone.{name}': value
           for name, value in other_weights.items()},
    }
    checkpoint_path = tmp_path / 'distilled.pth'
    torch.save({'state_dict': checkpoint}, checkpoint_path)
    model = LSKNet(
        **TINY_ARCH,
        init_cfg=dict(
            type='Pretrained',
            checkpoint=str(checkpoint_path),
            prefix='student.backbone.'))
    model.init_weights()

    assert_state_dict_equal(model, weights)


def test_pretrained_unknown_prefix_rejected(tmp_path):
    weights = fill_with_random_values(LSKNet(**TINY_ARCH), seed=11)
    checkpoint_path = tmp_path / 'plain.pth'
    torch.save(weights, checkpoint_path)
    model = LSKNet(
        **TINY_ARCH,
        init_cfg=dict(
            type='Pretrained', checkpoint=str(checkpoint_path), prefix='student.'))

    with pytest.raises(RuntimeError,
                       match=r"no keys starting with the prefix 'student\.'"):
        model.init_weights()


def test_pretrained_head_keys_are_logged(tmp_path, caplog):
    weights = fill_with_random_values(LSKNet(**TINY_ARCH), seed=2)
    checkpoint_path = tmp_path / 'imagenet.pth.tar'
    torch.save({
        'state_dict': {
            **weights, 'head.weight': torch.ones(1000, 32),
            'head.bias': torch.zeros(1000)
        }
    }, checkpoint_path)
    model = LSKNet(
        **TINY_ARCH,
        init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint_path)))

    caplog.set_level(logging.INFO, logger='mmrotate')
    model.init_weights()

    ignored_messages = [
        record.getMessage() for record in caplog.records
        if record.name == 'mmrotate' and 'ignored' in record.getMessage()
    ]
    assert len(ignored_messages) == 1
    assert 'head.weight, head.bias' in ignored_messages[0]
    assert str(checkpoint_path) in ignored_messages[0]
    assert_state_dict_equal(model, weights)


def test_pretrained_with_numpy_meta_loads(tmp_path):
    weights = fill_with_random_values(LSKNet(**TINY_ARCH), seed=3)
    checkpoint_path = tmp_path / 'with_meta.pth'
    # torch.load(weights_only=True) rejects numpy arrays, which mmcv's meta may hold.
    torch.save({'state_dict': weights, 'meta': {'best_score': np.float64(0.8),
                                                'scale': np.ones(3)}},
               checkpoint_path)
    model = LSKNet(
        **TINY_ARCH,
        init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint_path)))
    model.init_weights()

    assert_state_dict_equal(model, weights)


class PickledObject:
    """A class that a checkpoint must not be allowed to instantiate."""


def test_pretrained_with_arbitrary_object_rejected(tmp_path):
    weights = fill_with_random_values(LSKNet(**TINY_ARCH), seed=8)
    checkpoint_path = tmp_path / 'unsafe.pth'
    torch.save({'state_dict': weights, 'meta': PickledObject()}, checkpoint_path)
    model = LSKNet(
        **TINY_ARCH,
        init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint_path)))

    with pytest.raises(UnsafeCheckpointError, match='PickledObject'):
        model.init_weights()


def test_pretrained_missing_file_names_path_and_fix(tmp_path):
    checkpoint_path = str(tmp_path / 'missing' / 'lsk_t_backbone.pth.tar')
    model = LSKNet(
        **TINY_ARCH, init_cfg=dict(type='Pretrained', checkpoint=checkpoint_path))

    with pytest.raises(FileNotFoundError) as error:
        model.init_weights()

    assert checkpoint_path in str(error.value)
    assert 'init_cfg=None' in str(error.value)


def test_pretrained_missing_key_is_named(tmp_path):
    weights = fill_with_random_values(LSKNet(**TINY_ARCH), seed=4)
    del weights['block2.0.attn.proj_1.weight']
    checkpoint_path = tmp_path / 'incomplete.pth'
    torch.save({'state_dict': weights}, checkpoint_path)
    model = LSKNet(
        **TINY_ARCH,
        init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint_path)))

    with pytest.raises(RuntimeError,
                       match=r'missing keys: block2\.0\.attn\.proj_1\.weight'):
        model.init_weights()


def test_pretrained_unexpected_key_is_named(tmp_path):
    weights = fill_with_random_values(LSKNet(**TINY_ARCH), seed=5)
    weights['block1.0.attn.extra.weight'] = torch.ones(3)
    checkpoint_path = tmp_path / 'extra.pth'
    torch.save(weights, checkpoint_path)
    model = LSKNet(
        **TINY_ARCH,
        init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint_path)))

    with pytest.raises(RuntimeError,
                       match=r'unexpected keys: block1\.0\.attn\.extra\.weight'):
        model.init_weights()


def test_pretrained_other_variant_reports_shapes(tmp_path):
    weights = fill_with_random_values(LSKNet(**TINY_ARCH), seed=6)
    checkpoint_path = tmp_path / 'tiny.pth'
    torch.save(weights, checkpoint_path)
    wider_arch = dict(TINY_ARCH, embed_dims=[16, 16, 24, 32])
    model = LSKNet(
        **wider_arch,
        init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint_path)))

    with pytest.raises(RuntimeError) as error:
        model.init_weights()

    message = str(error.value)
    assert 'shape mismatches: patch_embed1.proj.weight' in message
    assert '(checkpoint (8, 3, 7, 7), model (16, 3, 7, 7))' in message


def test_pretrained_without_num_batches_tracked_loads(tmp_path):
    weights = fill_with_random_values(LSKNet(**TINY_ARCH), seed=7)
    without_counters = {
        name: value
        for name, value in weights.items()
        if not name.endswith('num_batches_tracked')
    }
    checkpoint_path = tmp_path / 'old_bn.pth'
    torch.save(without_counters, checkpoint_path)
    model = LSKNet(
        **TINY_ARCH,
        init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint_path)))
    model.init_weights()

    assert torch.equal(model.block3[1].mlp.fc2.weight,
                       weights['block3.1.mlp.fc2.weight'])
    assert model.block3[1].norm1.num_batches_tracked.item() == 0


def test_deprecated_pretrained_becomes_init_cfg():
    with pytest.warns(DeprecationWarning, match='init_cfg'):
        model = LSKNet(**TINY_ARCH, pretrained='data/pretrained/lsk.pth')

    assert model.init_cfg == dict(
        type='Pretrained', checkpoint='data/pretrained/lsk.pth')


def test_pretrained_and_init_cfg_together_rejected():
    with pytest.raises(ValueError, match='both init_cfg and .*pretrained'):
        LSKNet(
            **TINY_ARCH,
            pretrained='a.pth',
            init_cfg=dict(type='Pretrained', checkpoint='b.pth'))


def test_drop_path_rates_rise_linearly():
    model = LSKNet(**LSK_T_ARCH, drop_rate=0.1, drop_path_rate=0.1)

    rates = [
        block.drop_path.drop_prob for stage in range(1, 5)
        for block in getattr(model, f'block{stage}')
    ]
    expected = [0.1 * index / 12 for index in range(13)]
    assert rates == pytest.approx(expected)
    assert model.block4[1].drop_path.drop_prob == pytest.approx(0.1)
    assert model.block2[0].mlp.drop.p == pytest.approx(0.1)


def test_drop_path_is_identity_in_eval_mode():
    model = LSKNet(**TINY_ARCH, drop_path_rate=0.5).eval()
    inputs = torch.rand(1, 3, 32, 32)

    with torch.no_grad():
        first = model(inputs)
        second = model(inputs)

    for first_map, second_map in zip(first, second):
        assert torch.equal(first_map, second_map)


@pytest.mark.parametrize('arguments, message', [
    (dict(embed_dims=[8, 16, 24]), 'embed_dims must have one entry per stage'),
    (dict(depths=[1, 1, 1, 1, 1]), 'depths must have one entry per stage'),
    (dict(mlp_ratios=[4, 4]), 'mlp_ratios must have one entry per stage'),
    (dict(num_stages=0), 'num_stages must be a positive int'),
    (dict(embed_dims=[8, 15, 24, 32]), 'embed_dims must be even positive ints'),
    (dict(depths=[1, 0, 1, 1]), 'depths must be positive ints'),
    (dict(mlp_ratios=[8, 8, 0, 4]), 'mlp_ratios must be positive'),
    (dict(drop_rate=1.0), r'drop_rate must be in \[0, 1\), got 1.0'),
    (dict(drop_path_rate=-0.1), r'drop_path_rate must be in \[0, 1\)'),
])
def test_invalid_arguments_raise(arguments, message):
    with pytest.raises(ValueError, match=message):
        LSKNet(**dict(TINY_ARCH, **arguments))


def test_build_through_registry():
    from mmrotate.models import build_backbone

    model = build_backbone(
        dict(type='LSKNet', **TINY_ARCH, drop_path_rate=0.1))

    assert type(model) is LSKNet
    assert model.embed_dims == (8, 16, 24, 32)
    assert model.block4[0].drop_path.drop_prob == pytest.approx(0.1)
