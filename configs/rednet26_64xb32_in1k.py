# RedNet-26 on ImageNet-1k with the official recipe (top-1 75.96, 9.23 M params, 1.73 GFLOPs); see
# rednet50_64xb32_in1k.py. Only the depth differs.
_base_ = './rednet50_64xb32_in1k.py'

model = dict(backbone=dict(depth=26))
