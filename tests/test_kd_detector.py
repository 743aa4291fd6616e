"""KDOrientedRCNN on a real DOTA patch: alignment, frozen teacher, loading errors."""
import copy

import pytest
import torch

import lsknet  # noqa: F401 (registers the modules)
from kd_helpers import (STUDENT_CONFIG, TEACHER_CONFIG, build, dota_patch_batch,
                        kd_model_cfg, plain_model_cfg)


@pytest.fixture(scope='module')
def batch(dota_patch_root):
    return dota_patch_batch(dota_patch_root)


@pytest.fixture(scope='module')
def student_weights_ckpt(tmp_path_factory):
    """A plain LSKNet-T detector and its weights saved as an mmcv checkpoint."""
    plain = build(plain_model_cfg(), seed=1)
    path = tmp_path_factory.mktemp('ckpt') / 'lsk_t.pth'
    torch.save({'state_dict': plain.state_dict(), 'meta': {}}, path)
    return plain, str(path)


def random_teacher_kd(**overrides):
    """A KD detector whose LSKNet-T teacher keeps its random initial weights."""
    return build(
        kd_model_cfg(plain_model_cfg(), None, allow_random_teacher=True,
                     **overrides))


def test_identical_teacher_gives_zero_distill_loss(batch, student_weights_ckpt):
    plain, ckpt = student_weights_ckpt
    kd = build(kd_model_cfg(plain_model_cfg(), ckpt))
    kd.load_state_dict(plain.state_dict())
    # Eval mode makes BatchNorm, dropout and drop-path act alike in both models.
    kd.eval()

    losses = kd.forward_train(**batch)

    assert losses['loss_distill'].item() < 1e-6
    assert losses['loss_cls'].item() > 0


def test_different_teacher_gives_positive_distill_loss(batch,
                                                       student_weights_ckpt):
    _, ckpt = student_weights_ckpt
    kd = build(kd_model_cfg(plain_model_cfg(), ckpt), seed=2)
    kd.eval()

    losses = kd.forward_train(**batch)

    assert losses['loss_distill'].item() > 1e-3
    assert torch.isfinite(losses['loss_distill'])


def test_teacher_sees_the_student_sampled_rois(batch, monkeypatch):
    kd = random_teacher_kd()
    student_rois, teacher_rois = [], []
    student_bbox_forward = kd.roi_head._bbox_forward
    teacher_bbox_forward = kd.teacher.roi_head._bbox_forward

    def record_student(x, rois):
        student_rois.append(rois.clone())
        return student_bbox_forward(x, rois)

    def record_teacher(x, rois):
        teacher_rois.append(rois.clone())
        return teacher_bbox_forward(x, rois)

    def fail(*args, **kwargs):
        raise AssertionError('the teacher RPN must not run during training')

    monkeypatch.setattr(kd.roi_head, '_bbox_forward', record_student)
    monkeypatch.setattr(kd.teacher.roi_head, '_bbox_forward', record_teacher)
    monkeypatch.setattr(kd.teacher.rpn_head, 'forward_train', fail)
    monkeypatch.setattr(kd.teacher.rpn_head, 'simple_test_rpn', fail)

    kd.forward_train(**batch)

    assert len(student_rois) == 1
    assert len(teacher_rois) == 1
    assert student_rois[0].shape == (128, 6)
    assert torch.equal(student_rois[0], teacher_rois[0])


def test_teacher_logits_carry_no_autograd_state(batch):
    kd = random_teacher_kd()
    teacher_feats = kd.extract_teacher_feat(batch['img'])
    rois = torch.tensor([[0, 100., 100., 40., 20., 0.3]])

    logits = kd.teacher_cls_score(teacher_feats, rois)

    assert all(not feat.requires_grad for feat in teacher_feats)
    assert not logits.requires_grad
    assert logits.shape == (1, 16)
    assert logits.dtype == torch.float32


def test_teacher_unchanged_after_three_steps(batch):
    kd = random_teacher_kd()
    kd.train()
    teacher_before = copy.deepcopy(kd.teacher.state_dict())
    student_before = copy.deepcopy(kd.state_dict())
    optimizer = torch.optim.SGD(kd.parameters(), lr=0.01, momentum=0.9)

    for _ in range(3):
        losses = kd.forward_train(**batch)
        loss, _ = kd._parse_losses(losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    assert not kd.teacher.training
    assert all(not module.training for module in kd.teacher.modules())
    assert all(not p.requires_grad for p in kd.teacher.parameters())
    for name, value in kd.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name]), name
    assert kd.teacher.backbone.patch_embed1.norm.num_batches_tracked.item() == 0
    changed = [
        name for name, value in kd.state_dict().items()
        if value.dtype.is_floating_point
        and not torch.equal(value, student_before[name])
    ]
    assert any(name.startswith('backbone.') for name in changed)
    assert any(name.startswith('roi_head.bbox_head.') for name in changed)


def test_teacher_absent_from_state_dict_and_parameters():
    kd = random_teacher_kd()
    plain = build(plain_model_cfg())

    assert list(kd.state_dict()) == list(plain.state_dict())
    assert not any('teacher' in name for name, _ in kd.named_parameters())
    assert not any('teacher' in name for name, _ in kd.named_modules())
    teacher_ids = {id(p) for p in kd.teacher.parameters()}
    assert not teacher_ids & {id(p) for p in kd.parameters()}


def test_teacher_moves_with_detector():
    kd = random_teacher_kd()

    kd.double()

    assert next(kd.parameters()).dtype == torch.float64
    assert next(kd.teacher.parameters()).dtype == torch.float64
    kd.float()
    assert next(kd.teacher.parameters()).dtype == torch.float32


def test_train_mode_keeps_teacher_in_eval():
    kd = random_teacher_kd()

    kd.train()

    assert kd.training
    assert kd.backbone.training
    assert not kd.teacher.training


def test_inference_is_the_student(batch):
    kd = random_teacher_kd()
    plain = build(plain_model_cfg())
    plain.load_state_dict(kd.state_dict())
    kd.eval()
    plain.eval()

    with torch.no_grad():
        kd_results = kd.simple_test(batch['img'], batch['img_metas'])
        plain_results = plain.simple_test(batch['img'], batch['img_metas'])

    assert len(kd_results[0]) == 15
    for kd_boxes, plain_boxes in zip(kd_results[0], plain_results[0]):
        assert kd_boxes.shape == plain_boxes.shape
        assert (kd_boxes == plain_boxes).all()


def test_teacher_syncbn_converted_to_bn():
    kd = build(
        kd_model_cfg(TEACHER_CONFIG, None, allow_random_teacher=True))

    norm_types = {type(m).__name__ for m in kd.teacher.modules()}

    assert not any('SyncBatchNorm' in name for name in norm_types)
    assert kd.teacher.backbone.patch_embed1.proj.out_channels == 64


def test_missing_teacher_checkpoint_raises():
    with pytest.raises(FileNotFoundError,
                       match='teacher checkpoint not found: /no/such/lsk_s.pth'):
        build(kd_model_cfg(plain_model_cfg(), '/no/such/lsk_s.pth'))


def test_unreadable_teacher_checkpoint_raises(tmp_path):
    broken = tmp_path / 'broken.pth'
    broken.write_bytes(b'not a checkpoint')

    with pytest.raises(RuntimeError, match=f'failed to read checkpoint {broken}'):
        build(kd_model_cfg(plain_model_cfg(), str(broken)))


def test_teacher_checkpoint_with_missing_keys_raises(tmp_path,
                                                     student_weights_ckpt):
    plain, _ = student_weights_ckpt
    state_dict = plain.state_dict()
    del state_dict['roi_head.bbox_head.fc_cls.weight']
    path = tmp_path / 'missing.pth'
    torch.save({'state_dict': state_dict}, path)

    with pytest.raises(RuntimeError) as error:
        build(kd_model_cfg(plain_model_cfg(), str(path)))

    assert '1 missing keys (roi_head.bbox_head.fc_cls.weight)' in str(error.value)
    assert str(path) in str(error.value)


def test_teacher_checkpoint_with_unexpected_keys_raises(tmp_path,
                                                        student_weights_ckpt):
    plain, _ = student_weights_ckpt
    state_dict = plain.state_dict()
    state_dict['extra_head.weight'] = torch.zeros(3)
    path = tmp_path / 'unexpected.pth'
    torch.save({'state_dict': state_dict}, path)

    with pytest.raises(RuntimeError, match=r'1 unexpected keys \(extra_head.weight\)'):
        build(kd_model_cfg(plain_model_cfg(), str(path)))


def test_teacher_of_other_architecture_raises(tmp_path):
    lsk_s = build(plain_model_cfg(TEACHER_CONFIG))
    path = tmp_path / 'lsk_s.pth'
    torch.save({'state_dict': lsk_s.state_dict()}, path)

    # An LSKNet-S checkpoint with an LSKNet-T teacher config.
    with pytest.raises(RuntimeError, match='shape mismatches'):
        build(kd_model_cfg(plain_model_cfg(), str(path)))


def test_teacher_class_count_mismatch_raises():
    teacher_cfg = plain_model_cfg()
    teacher_cfg.roi_head.bbox_head.num_classes = 10

    with pytest.raises(ValueError,
                       match='teacher predicts 10 classes but the student 15'):
        build(kd_model_cfg(teacher_cfg, None, allow_random_teacher=True))


def test_teacher_ckpt_none_requires_opt_in():
    with pytest.raises(ValueError, match='teacher_ckpt is None'):
        build(kd_model_cfg(plain_model_cfg(), None))


def test_missing_teacher_config_raises():
    with pytest.raises(FileNotFoundError,
                       match='teacher config not found: configs/no_such.py'):
        build(kd_model_cfg('configs/no_such.py', None, allow_random_teacher=True))


def test_relative_teacher_config_resolves_against_config_dir(tmp_path,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    kd = build(
        kd_model_cfg(
            'lsk_t_fpn_1x_dota_le90.py',
            None,
            allow_random_teacher=True,
            teacher_config_dir=STUDENT_CONFIG.rsplit('/', 1)[0]))

    assert kd.teacher.backbone.patch_embed1.proj.out_channels == 32


def test_student_without_loss_distill_raises():
    model_cfg = kd_model_cfg(plain_model_cfg(), None, allow_random_teacher=True)
    del model_cfg.roi_head.bbox_head['loss_distill']

    with pytest.raises(ValueError, match='nothing to distil'):
        build(model_cfg)


def test_kd_teacher_config_rejected():
    teacher_cfg = kd_model_cfg(plain_model_cfg(), None)

    with pytest.raises(ValueError, match='teacher config describes a KDOrientedRCNN'):
        build(kd_model_cfg(dict(model=teacher_cfg), None,
                           allow_random_teacher=True))


def test_ema_teacher_checkpoint_loads_ema_weights(tmp_path, caplog,
                                                  student_weights_ckpt):
    plain, _ = student_weights_ckpt
    state_dict = plain.state_dict()
    ema_values = {}
    for name, value in plain.state_dict().items():
        if value.dtype.is_floating_point:
            ema_values[name] = value + 0.5
            state_dict['ema_' + name.replace('.', '_')] = ema_values[name]
    path = tmp_path / 'ema.pth'
    torch.save({'state_dict': state_dict}, path)

    kd = build(kd_model_cfg(plain_model_cfg(), str(path)))

    teacher_state = kd.teacher.state_dict()
    for name, value in ema_values.items():
        assert torch.equal(teacher_state[name], value), name
