# RedNet-101 on ImageNet-1k with the official recipe (top-1 78.92, 25.65 M params, 4.74 GFLOPs); see
# rednet50_64xb32_in1k.py. Only the depth differs.
_base_ = './rednet50_64xb32_in1k.py'

model = dict(backbone=dict(depth=101))
