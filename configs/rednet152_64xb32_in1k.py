# RedNet-152 on ImageNet-1k with the official recipe (top-1 79.12, 33.99 M params, 6.79 GFLOPs); see
# rednet50_64xb32_in1k.py. Only the depth differs.
_base_ = './rednet50_64xb32_in1k.py'

model = dict(backbone=dict(depth=152))
