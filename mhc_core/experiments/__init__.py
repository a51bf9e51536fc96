"""What the depth-sweep experiments share across backends, apart from the mHC spec.

    lm_config.py    the tiny models (token LM, patch ViT, deep MLP; pre / post / no norm):
                    config, parameter names and shapes, init, learning-rate schedule, mixing-matrix extraction for the Amax metrics
    tasks.py        synthetic token tasks and batch sharding across data-parallel ranks
    data.py         real data, offline: scikit-learn's 8x8 digits (ViT patches) and
                    standard-library source bytes (text), fixed held-out splits
    checkpoints.py  resumable runs: atomic, hashed safetensors checkpoints + metrics replay

Nothing here is part of the mHC math (that is `mhc_core`'s top level); like the rest of
`mhc_core`, it imports no framework.
"""
