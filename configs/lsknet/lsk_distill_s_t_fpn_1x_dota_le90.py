# LSKNet-T student distilled from a frozen LSKNet-S teacher (Hinton distillation on
# the RoI classification logits), Oriented R-CNN on DOTA-v1.0 (le90), 1x schedule.
# docs/en/knowledge_distillation.md explains every key.
_base_ = ['./lsk_t_fpn_1x_dota_le90.py']

model = dict(
    type='KDOrientedRCNN',
    # The teacher's own config; its SyncBN layers are converted to BN.
    teacher_config='configs/lsknet/lsk_s_fpn_1x_dota_le90.py',
    # Train the teacher with lsk_s_fpn_1x_dota_le90.py first, or download it.
    teacher_ckpt='checkpoints/lsk_s_fpn_1x_dota_le90_20230116-99749191.pth',
    roi_head=dict(
        bbox_head=dict(
            type='RotatedShared2FCBBoxHead',
            loss_distill=dict(
                type='KnowledgeDistillationKLDivLoss', T=2, loss_weight=2.0))))
