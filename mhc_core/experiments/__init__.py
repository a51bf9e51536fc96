"""What the depth-sweep experiments share across backends, apart from the mHC spec.

    lm_config.py    the tiny language model: config, parameter names and shapes, init,
                    learning-rate schedule, mixing-matrix extraction for the Amax metrics
    tasks.py        synthetic token tasks and batch sharding across data-parallel ranks
    checkpoints.py  resumable runs: atomic, hashed safetensors checkpoints + metrics replay

Nothing here is part of the mHC math (that is `mhc_core`'s top level); like the rest of
`mhc_core`, it imports no framework.
"""
