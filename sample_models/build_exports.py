"""Write the sample models in the formats Keras models travel in: ONNX and SavedModel.

Usage::

    python sample_models/build_exports.py [OUTDIR] [--only NAME ...]
    python sample_models/build_exports.py --keras3-export OUTDIR [--only NAME ...]

Needs ``tensorflow``, ``tf-keras`` and ``tf2onnx`` (the ``[test]`` extra). Each model of
``build.py`` is rebuilt with tf-keras (same seeds, same weights as ``k2_NAME.h5``) and

* converted with tf2onnx to ``onnx/NAME.onnx`` (opset 17) as docs/formats.md
  recommends for an audit: ``tf2onnx.convert.from_keras(..., optimizers={})``. tf2onnx
  folds a BatchNormalization into the convolution before it by default (its
  ``remove_back_to_back`` optimizer); with no ONNX-level optimizer the BN nodes the
  audit is about stay in the file (bnaudit looks through the Transpose pairs the
  skipped optimizers would have removed).
* saved as a tf-keras SavedModel directory ``savedmodel/NAME/`` (``saved_model.pb``,
  ``keras_metadata.pb``, ``variables/``), for the models in ``SAVEDMODEL_SAMPLES``.

``expected_exports.json`` lists the findings bnaudit must report on each; the names
map as ``docs/formats.md`` describes (an ONNX node is named
``<model>/<layer path>/<TF op>`` by tf2onnx, a SavedModel layer keeps its Keras path).

``--keras3-export OUTDIR`` instead loads every ``NAME.keras`` with Keras 3 and writes
``model.export(OUTDIR/NAME, format="tf_saved_model")``: a SavedModel with no
``keras_metadata.pb``, audited from its serving graph. These are not committed (the
tests write them, ~11 s for all 27); bnaudit must report on each exactly the findings of
``NAME.keras`` on the same layer paths, less ``LOST_IN_EXPORT`` and plus ``ADDED_IN_EXPORT``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import warnings  # noqa: E402

warnings.filterwarnings("ignore")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from build import SPECS, channel_scale_class, format_expected, make  # noqa: E402

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

#: Findings of the Keras original that the converted ONNX file cannot show, and why.
#: Everything else must be reported on the node that carries the Keras layer's name.
LOST_IN_ONNX = {
    ("bias_before_bn", "bn_fc"): "a BN on a rank-2 input is not FusedBatchNorm in TF: tf2onnx writes Mul/Add",
    ("bn_after_softmax", "bn_out"): "rank-2 BN: Mul/Add",
    ("bn_as_final_layer", "bn_out"): "rank-2 BN: Mul/Add",
    ("nested_sequential_block", "mlp_block/mlp_bn"): "rank-2 BN: Mul/Add",
    ("dropout_before_bn", "bn2"): "the inference graph has no Dropout",
    ("dropout_through_flatten", "bn_flat"): "no Dropout in the inference graph (and a rank-2 BN)",
    ("nested_cross_boundary", "block/block_bn"): "no Dropout in the inference graph",
    ("bn_training_baked", "bn1"): "tf2onnx writes the BN in inference mode (training_mode=0)",
    ("frozen_bn", "bn1"): "ONNX has no trainable flag",
    ("bn_unusual_momentum", "bn1"): "tf2onnx does not write momentum (inference only)",
    ("bn_fp16_small_epsilon", "bn1"): "tf2onnx casts the BN's input to float32",
    ("lambda_layer", "rescale_lambda"): "the Lambda becomes standard operators",
    ("custom_layer", "channel_scale"): "the custom layer becomes standard operators",
}


#: Findings of the .keras original that its Keras 3 ``export()`` cannot show, and why:
#: (sample, code, layer) -> reason. The rule is skipped on the export with that reason
#: (``bnaudit.loaders.export_graph.NOT_RECORDED``), except BN109, which still judges epsilon.
LOST_IN_EXPORT = {
    ("dropout_before_bn", "BN101", "bn2"): "Dropout does nothing at inference and leaves no op in the serving graph",
    ("dropout_through_flatten", "BN101", "bn_flat"): "SpatialDropout2D leaves no op in the serving graph",
    ("nested_cross_boundary", "BN101", "block/block_bn"): "Dropout leaves no op in the serving graph",
    ("frozen_bn", "BN108", "bn1"): "the serving graph records no trainable flag",
    ("bn_unusual_momentum", "BN109", "bn1"): "momentum is a training setting: the serving graph holds no trace of it",
    ("lambda_layer", "BN501", "rescale_lambda"): "the Lambda is traced into TensorFlow ops: no Python object is left",
    ("custom_layer", "BN501", "channel_scale"): "the custom layer is traced into TensorFlow ops: no class is left",
}
#: Findings the export shows that its .keras original does not, and why.
ADDED_IN_EXPORT = {
    ("bn_training_baked", "BN106", "bn2"): (
        "Keras 3 carries bn1's training=True to the layers called after it in the same model(x) call (predict() does "
        "not), and export() traces model(x): the serving function computes bn2 from batch moments too"
    ),
}


def keras3_exports(outdir: Path, only=None) -> list[str]:
    """``model.export(outdir/NAME, format="tf_saved_model")`` of every ``NAME.keras`` sample
    (Keras 3; the Lambda and custom-layer samples loaded with ``safe_mode=False``, as they
    are built here); the names written."""
    import keras

    channel_scale_class(keras)
    written = []
    for spec in SPECS:
        if only and spec.name not in only:
            continue
        model = keras.saving.load_model(HERE / f"{spec.name}.keras", safe_mode=False)
        model.export(str(outdir / spec.name), format="tf_saved_model", verbose=False)
        written.append(spec.name)
    return written


def to_onnx(model, path: Path) -> None:
    import tensorflow as tf
    import tf2onnx

    spec = [tf.TensorSpec((None, *i.shape[1:]), i.dtype, name=i.name.split(":")[0]) for i in model.inputs]
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET, output_path=str(path), optimizers={})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir", nargs="?", default=str(HERE))
    ap.add_argument("--only", nargs="*", help="build only these model names")
    ap.add_argument("--keras3-export", metavar="OUTDIR", help="write Keras 3 export() SavedModels of the .keras samples there, nothing else")
    args = ap.parse_args(argv)
    if args.keras3_export:
        keras3_exports(Path(args.keras3_export), args.only)
        return 0
    import tf_keras

    channel_scale_class(tf_keras)
    outdir = Path(args.outdir)
    (outdir / "onnx").mkdir(parents=True, exist_ok=True)
    expected_path = outdir / "expected_exports.json"
    expected = json.loads(expected_path.read_text()) if expected_path.exists() else {}
    for spec in SPECS:
        if args.only and spec.name not in args.only:
            continue
        model = make(tf_keras, spec)
        to_onnx(model, outdir / "onnx" / f"{spec.name}.onnx")
        print(f"onnx/{spec.name}.onnx", file=sys.stderr)
        expected[f"onnx/{spec.name}.onnx"] = [
            {"code": code, "layer": f"{model.name}/{layer}/FusedBatchNormV3"}
            for code, layer in sorted(spec.expected)
            if (spec.name, layer) not in LOST_IN_ONNX
        ]
        if spec.name in SAVEDMODEL_SAMPLES:
            model.save(outdir / "savedmodel" / spec.name, save_format="tf")
            print(f"savedmodel/{spec.name}/", file=sys.stderr)
            expected[f"savedmodel/{spec.name}"] = [{"code": c, "layer": l} for c, l in sorted(spec.expected)]
    expected_path.write_text(format_expected(expected))
    return 0


if __name__ == "__main__":
    sys.exit(main())
