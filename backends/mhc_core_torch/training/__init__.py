"""Training at scale with mHC on torch: data parallel (DDP / FSDP2), block recompute,
mixed precision and resumable checkpoints. Each submodule is independent:

- `distributed`: process group from torchrun, DDP / FSDP2 wrapping, batch sharding.
- `recompute`:   keep each block of layers' input only (torch.utils.checkpoint).
- `checkpoint`:  atomic safetensors + JSON checkpoints of model, optimizer, RNG, data.
- `precision`:   `cast_except_mixing`: the model in bf16 (or another floating dtype), the mixing
                 parameters float32.
"""
