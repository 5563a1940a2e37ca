# RedNet-38 on ImageNet-1k with the official recipe (top-1 77.48, 12.39 M params, 2.22 GFLOPs); see
# rednet50_64xb32_in1k.py. Only the depth differs.
_base_ = './rednet50_64xb32_in1k.py'

model = dict(backbone=dict(depth=38))
