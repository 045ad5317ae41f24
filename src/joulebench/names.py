"""Names that cross modules: what the loop and the pipeline write to MLflow and ``report`` and the
CLI read back, and the energy windows the loop opens and its result reads.

A literal spelled in two modules can drift apart silently (a renamed metric becomes a report
column that says "not measured"); a constant here fails loudly at import. Names only one module
uses stay in that module.
"""

from __future__ import annotations

# Per-epoch metrics (logged with step = epoch).
VAL_ACCURACY = "val_accuracy"
EPOCH_JOULES = "epoch_joules"

# Final metrics of a run.
ACCURACY = "accuracy"
TOP5 = "top5"
DURATION_S = "duration_s"
TRAIN_SECONDS = "train_seconds"
ENERGY_TOTAL_J = "energy_total_j"
ENERGY_TOTAL_NET_J = "energy_total_net_j"
ENERGY_TRAIN_J = "energy_train_j"
ENERGY_TRAIN_NET_J = "energy_train_net_j"
J_PER_TRAIN_SAMPLE = "j_per_train_sample"
INFERENCE_J_PER_IMAGE = "inference_j_per_image"
FLOPS_PER_SAMPLE = "flops_per_sample"
PARAMETERS = "parameters"
WEIGHT_BYTES = "weight_bytes"
FLOP_PER_J = "flop_per_j"
WARMUP_SHARE = "warmup_share"  # of the training energy (of its time where no meter read both)

# Energy window phases: ``train.run`` opens them, ``RunResult`` and the pipeline read them back
# (the per-epoch ``train``, ``eval`` and ``warmup`` windows are the loop's own).
TOTAL_PHASE = "total"  # encloses every other window
IDLE_PHASE = "idle"
COMPRESS_PHASE = "compress"
INFERENCE_PHASE = "inference"

# Run tags.
CONFIG_HASH = "config_hash"  # on measured runs only: a sweep skips a hash that has a FINISHED run
ENERGY_SOURCE = "energy_source"  # overall; ENERGY_SOURCE + ".DEVICE" per device
SHORT_RUN = "short_run"  # value: why the run is too short to measure
COMPUTE_EMULATED = "compute_emulated"  # value: why the hardware emulates the method's precision
GPU_NAME = "gpu_name"
HOST = "host"
# Where Slurm ran a run (the run tags itself), and how Slurm ended it (the sweep tags it).
SLURM_JOB_ID = "slurm.job_id"  # ARRAYJOB_TASK for an array task: the id scontrol and sacct show
SLURM_NODE = "slurm.node"
SLURM_GPUS = "slurm.gpus"
SLURM_STATE = "slurm.state"
SLURM_REASON = "slurm.reason"

# Run params: a method's parameters are logged as ``method.KEY``.
METHOD_PARAM_PREFIX = "method."


def method_param(key: str) -> str:
    """The run param holding method parameter ``key``."""
    return METHOD_PARAM_PREFIX + key
