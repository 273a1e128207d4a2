"""Which TensorFlow devices the inference re-runs use, and how they are set up.

Every logical CPU and GPU TensorFlow lists is a device to compare: on a machine without
a GPU, ``BNAUDIT_LOGICAL_CPUS=2`` (see :func:`bnaudit.runtime.import_tensorflow`) splits
the CPU into two real logical devices, so the cross-device code runs for real. The first
CPU is always the reference; a missing GPU is said, never simulated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..loaders import LoadError

NO_GPU = "no GPU found"


@dataclass
class DevicePlan:
    """The reference device, the devices compared with it, and what the plan left out."""

    reference: str
    compared: list[str]
    gpus: list[str] = field(default_factory=list)
    #: TensorFloat-32 matmuls/convolutions on the GPUs (None: no GPU, so not applicable).
    tf32: bool | None = None

    @property
    def all(self) -> list[str]:
        """Every device that runs the inputs, reference first."""
        return [self.reference, *self.compared]

    @property
    def gpu_status(self) -> str:
        if not self.gpus:
            return NO_GPU
        return f"{len(self.gpus)} GPU{'s' if len(self.gpus) != 1 else ''} found (TF32 {'on' if self.tf32 else 'off'})"


def short_name(device_name: str) -> str:
    """``/device:CPU:1`` or ``/job:localhost/.../device:GPU:0`` -> ``CPU:1`` / ``GPU:0``."""
    return device_name.rsplit("device:", 1)[-1].upper()


def select_devices(available: list[str], wanted: str | None) -> tuple[str, list[str]]:
    """Pick the reference CPU and the devices to compare with it.

    ``available`` are short names in TensorFlow's order; ``wanted`` is ``--devices``
    (comma-separated short names, or None/"all" for every device). The first CPU is the
    reference and always runs, so ``--devices GPU:0`` compares GPU:0 with CPU:0.
    """
    cpus = [d for d in available if d.startswith("CPU:")]
    if not cpus:
        raise LoadError("TensorFlow lists no CPU device", "check the TensorFlow installation")
    reference = cpus[0]
    if not wanted or wanted.strip().lower() == "all":
        return reference, [d for d in available if d != reference]
    chosen: list[str] = []
    for raw in wanted.split(","):
        name = raw.strip().upper().removeprefix("/").removeprefix("DEVICE:")
        if not name:
            continue
        if name not in available:
            raise LoadError(
                f"--devices names {raw.strip()!r}, which TensorFlow does not list",
                f"choose from {', '.join(available)}" + ("" if any(d.startswith("GPU:") for d in available) else f"; {NO_GPU}"),
            )
        if name != reference and name not in chosen:
            chosen.append(name)
    return reference, chosen


def plan_devices(tf, wanted: str | None, allow_tf32: bool) -> DevicePlan:
    """List TensorFlow's logical devices, choose them, and switch TF32 off unless allowed.

    TF32 (Ampere and later) rounds matmul and convolution inputs to 10 mantissa bits, so
    a GPU with it on differs from the CPU by ~1e-3 relative: far beyond float32
    tolerances, and not what a float32 deployment means. It is a process-wide switch.
    """
    available = [short_name(d.name) for d in tf.config.list_logical_devices() if d.device_type in ("CPU", "GPU")]
    reference, compared = select_devices(available, wanted)
    gpus = [d for d in available if d.startswith("GPU:")]
    tf32 = None
    if gpus:
        tf.config.experimental.enable_tensor_float_32_execution(bool(allow_tf32))
        tf32 = bool(allow_tf32)
    return DevicePlan(reference=reference, compared=compared, gpus=gpus, tf32=tf32)
