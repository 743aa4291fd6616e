# Registers LSKNet, KDOrientedRCNN and the distillation loss and head in mmrotate.
custom_imports = dict(imports=['lsknet'], allow_failed_imports=False)

log_config = dict(interval=50, hooks=[dict(type='TextLoggerHook')])
# tools/train.py switches to gloo when no GPU is available.
dist_params = dict(backend='nccl')
log_level = 'INFO'
load_from = None
resume_from = None
workflow = [('train', 1)]
# Keep OpenCV single-threaded inside dataloader workers.
opencv_num_threads = 0
mp_start_method = 'fork'
