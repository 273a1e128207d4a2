"""Which Keras wrote a model file, and what that means for how its BatchNormalization runs.

Three behaviours differ by writer and matter to the rules:

* a frozen BN (``trainable=False``) during training: Keras 3 and tf.keras under
  TensorFlow >= 2.0 run it in inference mode (moving statistics, not updated);
  standalone Keras 2 (every version; keras PR #9965 proposing the change was closed)
  and tf.keras under TensorFlow 1.x still normalize it with the batch's statistics
  (and do not update the moving ones). tf.keras 2.0-2.1 ``keras.applications`` built
  V1 BN layers, which keep the TensorFlow 1.x behaviour (tensorflow PR #36700).
* a BN call saved with ``training=True`` (BN106): Keras 2 (tf.keras, tf-keras,
  standalone) keeps it under ``model(x)`` and ``model.predict`` alike; a Keras 3 file
  loaded by Keras 3 keeps it under ``model(x)`` while ``model.predict`` normalizes with
  the moving statistics (measured with Keras 3.15 and tf-keras 2.21).
* which runtime re-runs the file: tf-keras for Keras-2 files (``bnaudit.runtime``).

The file tells the writer through ``keras_version`` (``.h5``) or ``metadata.json``
(``.keras``): tf.keras marks its versions ``-tf`` up to TensorFlow 2.2 (``2.2.4-tf``
shipped with TensorFlow 1.13-1.15 and 2.0-2.1, so it cannot tell which), versions from
2.4 on are tf.keras / tf-keras on TensorFlow 2, and a plain version below 2.4 is
standalone multi-backend Keras.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: How a frozen BN normalizes while the model trains.
INFERENCE_MODE = "inference"
BATCH_STATISTICS = "batch"
UNKNOWN = "unknown"

FROZEN_BN_MEANING = {
    INFERENCE_MODE: "runs it in inference mode while training (moving statistics, not updated)",
    BATCH_STATISTICS: "still normalizes it with the batch's statistics while training (moving statistics not updated), "
    "so what the neighbours learn against is not what inference computes",
}


@dataclass(frozen=True)
class Writer:
    """The Keras that wrote a file, as far as the file tells."""

    #: Human name with version: "Keras 3.15.0", "standalone Keras 2.2.4", "tf.keras 2.2.4-tf".
    name: str
    #: "keras3", "keras2" (tf.keras / tf-keras / standalone) or "" when the file does not say.
    family: str
    #: How it runs a frozen BN while training: INFERENCE_MODE, BATCH_STATISTICS or UNKNOWN.
    frozen_bn: str

    def frozen_bn_behaviour(self) -> str:
        """One sentence for BN108: what this writer does with a frozen BN, or both cases."""
        if self.frozen_bn in FROZEN_BN_MEANING:
            return f"{self.name} {FROZEN_BN_MEANING[self.frozen_bn]}"
        return (
            f"the file ({self.name}) does not tell which runtime trains it: Keras 3 and tf.keras under TensorFlow >= 2.0 "
            f"{FROZEN_BN_MEANING[INFERENCE_MODE]}; standalone Keras and tf.keras under TensorFlow 1.x (and the V1 BN "
            f"layers of tf.keras 2.0-2.1 applications) {FROZEN_BN_MEANING[BATCH_STATISTICS]}"
        )

    def baked_training_behaviour(self) -> str:
        """What a BN call saved with ``training=True`` does at inference under this writer (BN106)."""
        if self.family == "keras3":
            return "under model(x) in Keras 3; model.predict of the loaded model uses the moving statistics"
        if self.family == "keras2":
            return "under model(x) and model.predict alike in Keras 2"
        return "under model(x) and model.predict in Keras 2, under model(x) in Keras 3"


_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def writer_of(file_format: str, keras_version: str) -> Writer:
    """The writer of a file from its format (``keras``, ``h5-keras3``, ``h5-keras2``) and version string."""
    version = (keras_version or "").strip()
    match = _VERSION.match(version)
    if file_format in ("keras", "h5-keras3") or (match and int(match.group(1)) >= 3):
        return Writer(f"Keras {version or '3'}", "keras3", INFERENCE_MODE)
    if not match:
        return Writer("unknown Keras version", "keras2" if file_format == "h5-keras2" else "", UNKNOWN)
    parts = tuple(int(p or 0) for p in match.groups())
    if version.endswith("-tf"):
        if parts < (2, 2, 4):
            return Writer(f"tf.keras {version} (TensorFlow 1.x)", "keras2", BATCH_STATISTICS)
        if parts == (2, 2, 4):
            return Writer(f"tf.keras {version} (TensorFlow 1.13-1.15 or 2.0-2.1)", "keras2", UNKNOWN)
        return Writer(f"tf.keras {version} (TensorFlow 2)", "keras2", INFERENCE_MODE)
    if parts < (2, 4, 0):
        return Writer(f"standalone Keras {version}", "keras2", BATCH_STATISTICS)
    return Writer(f"Keras {version} (tf.keras / tf-keras on TensorFlow 2)", "keras2", INFERENCE_MODE)
