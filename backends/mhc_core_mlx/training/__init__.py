"""Training at scale with mHC on MLX: data parallel over `mx.distributed`, block recompute
(`mx.checkpoint`), mixed precision and resumable checkpoints. Each submodule is
independent (`checkpoint` borrows `recompute.key_seed`, the seed that sets a random key):

- `distributed`: the group from `mlx.launch`, batch sharding, gradient averaging.
- `recompute`:   keep each block of layers' input only (mlx.nn.utils.checkpoint).
- `checkpoint`:  atomic safetensors + JSON checkpoints of model, optimizer, RNG, data.
- `precision`:   `cast_except_mixing`: the model in bf16 (or another floating dtype), the mixing
                 parameters float32.
"""
