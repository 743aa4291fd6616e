# LSKNet-S + Oriented R-CNN on DOTA-v1.0 (le90), 1x schedule, 8 GPUs x 1 image.
# Same detector as LSKNet-T; only the backbone, the batch and the lr differ.
_base_ = ['./lsk_t_fpn_1x_dota_le90.py']

model = dict(
    backbone=dict(
        embed_dims=[64, 128, 320, 512],
        depths=[2, 2, 4, 2],
        init_cfg=dict(
            type='Pretrained',
            checkpoint='data/pretrained/lsk_s_backbone.pth.tar')),
    neck=dict(in_channels=[64, 128, 320, 512]))

data = dict(samples_per_gpu=1, workers_per_gpu=1)
# lr 1e-4 is for 8 GPUs x 1 image; scale it linearly with the total batch size,
# or pass --auto-scale-lr to tools/train.py.
auto_scale_lr = dict(enable=False, base_batch_size=8)
optimizer = dict(lr=0.0001)
