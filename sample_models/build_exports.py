"""Write the sample models in the formats Keras models travel in: ONNX and SavedModel.

Usage::

    python sample_models/build_exports.py [OUTDIR] [--only NAME ...]

Needs ``tensorflow``, ``tf-keras`` and ``tf2onnx`` (the ``[test]`` extra). Each model of
``build.py`` is rebuilt with tf-keras (same seeds, same weights as ``k2_NAME.h5``) and

* converted with tf2onnx to ``onnx/NAME.onnx`` (opset 17). tf2onnx folds a
  BatchNormalization into the convolution before it by default (its
  ``remove_back_to_back`` optimizer); that pass is switched off here so the BN nodes
  the audit is about stay in the file, as they do in any export made for auditing.
* saved as a tf-keras SavedModel directory ``savedmodel/NAME/`` (``saved_model.pb``,
  ``keras_metadata.pb``, ``variables/``), for the models in ``SAVEDMODEL_SAMPLES``.

``expected_exports.json`` lists the findings bnaudit must report on each; the names
map as ``docs/formats.md`` describes (an ONNX node is named
``<model>/<layer path>/<TF op>`` by tf2onnx, a SavedModel layer keeps its Keras path).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import warnings  # noqa: E402

warnings.filterwarnings("ignore")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from build import SPECS, channel_scale_class, make  # noqa: E402

#: SavedModel directories are ~100 KB each: a few that cover placement, weights,
#: nesting and the baked training flag.
SAVEDMODEL_SAMPLES = (
    "clean_conv_bn_relu",
    "bias_before_bn",
    "bn_training_baked",
    "nested_transfer",
    "bn_no_center_no_scale",
    "dropout_before_bn",
)
OPSET = 17


def to_onnx(model, path: Path) -> None:
    import tensorflow as tf
    import tf2onnx
    from tf2onnx import optimizer

    spec = [tf.TensorSpec((None, *i.shape[1:]), i.dtype, name=i.name.split(":")[0]) for i in model.inputs]
    optimizers = {k: v for k, v in optimizer._get_optimizers().items() if k != "remove_back_to_back"}
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET, output_path=str(path), optimizers=optimizers)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir", nargs="?", default=str(HERE))
    ap.add_argument("--only", nargs="*", help="build only these model names")
    args = ap.parse_args(argv)
    import tf_keras

    channel_scale_class(tf_keras)
    outdir = Path(args.outdir)
    (outdir / "onnx").mkdir(parents=True, exist_ok=True)
    for spec in SPECS:
        if args.only and spec.name not in args.only:
            continue
        model = make(tf_keras, spec)
        to_onnx(model, outdir / "onnx" / f"{spec.name}.onnx")
        print(f"onnx/{spec.name}.onnx", file=sys.stderr)
        if spec.name in SAVEDMODEL_SAMPLES:
            model.save(outdir / "savedmodel" / spec.name, save_format="tf")
            print(f"savedmodel/{spec.name}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
