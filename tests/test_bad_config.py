"""Mistakes in configs stop tools/train.py before training, with the fix named."""
import subprocess
import sys

import pytest

KD_CONFIG = 'configs/lsknet/lsk_distill_s_t_fpn_1x_dota_le90.py'
LOSS = 'model.roi_head.bbox_head.loss_distill'


def train_output(repo_root, tmp_path, config, *options):
    completed = subprocess.run([
        sys.executable, 'tools/train.py', config, '--work-dir',
        str(tmp_path), '--cfg-options', 'model.backbone.init_cfg=None', *options
    ],
                               cwd=repo_root,
                               capture_output=True,
                               text=True,
                               timeout=300)
    assert completed.returncode != 0
    return completed.stdout + completed.stderr


@pytest.mark.parametrize('options, expected', [
    (['model.backbone.type=LSKNett'],
     "unknown type 'LSKNett' in the config (not in the models registry)"),
    ([f'{LOSS}.type=KnowledgeDistilationKLDivLoss'],
     "unknown type 'KnowledgeDistilationKLDivLoss' in the config"),
    ([f'{LOSS}.T=0'], 'invalid distillation temperature T=0'),
    ([f'{LOSS}.T=-2'], 'invalid distillation temperature T=-2'),
    ([f'{LOSS}.loss_weight=-1.0'], 'invalid loss_weight=-1.0'),
    (['model.teacher_config=configs/lsknet/no_such_teacher.py'],
     'teacher config not found: configs/lsknet/no_such_teacher.py'),
    ([], 'teacher checkpoint not found: '
     'checkpoints/lsk_s_fpn_1x_dota_le90_20230116-99749191.pth'),
    (['model.teacher_ckpt=None'], 'teacher_ckpt is None'),
],
                         ids=[
                             'unknown_backbone', 'misspelt_loss', 'zero_T',
                             'negative_T', 'negative_loss_weight',
                             'missing_teacher_config', 'missing_teacher_ckpt',
                             'teacher_ckpt_none'
                         ])
def test_bad_distillation_config_stops_with_message(repo_root, tmp_path,
                                                    options, expected):
    output = train_output(repo_root, tmp_path, KD_CONFIG, *options)

    assert expected in output
    assert 'Epoch [1]' not in output
