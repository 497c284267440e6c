"""Transforms: what happens to a batch of uint8 images on its device.

``preprocess`` (normalisation fitted on train), ``policies`` (RandAugment, TrivialAugment,
AutoAugment, jitter, erasing), ``resample`` (random-resized crop), ``mixing`` (mixup/cutmix),
``cpu_stage`` (the per-image CPU path and shared buffers), ``augment`` (the train steps and
their plan, the eval view, TTA) and ``stage`` (runs a plan on a batch). They import only the
base modules of ``convzoo.data``.
"""
