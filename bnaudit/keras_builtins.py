"""Class names of the layers Keras ships (Keras 3 and tf-keras 2), for BN501.

A class outside this set is custom code: loading the model would import and run it.
The list is data, regenerated with ``python -m bnaudit.keras_builtins`` where Keras and
tf-keras are installed; the static path never imports Keras to compute it.
"""

from __future__ import annotations

KERAS_LAYER_CLASSES = frozenset(
    {
        "AbstractRNNCell",
        "Activation",
        "ActivityRegularization",
        "AdaptiveAveragePooling1D",
        "AdaptiveAveragePooling2D",
        "AdaptiveAveragePooling3D",
        "AdaptiveMaxPooling1D",
        "AdaptiveMaxPooling2D",
        "AdaptiveMaxPooling3D",
        "Add",
        "AdditiveAttention",
        "AlphaDropout",
        "Attention",
        "AugMix",
        "AutoContrast",
        "Average",
        "AveragePooling1D",
        "AveragePooling2D",
        "AveragePooling3D",
        "BatchNormalization",
        "Bidirectional",
        "CategoryEncoding",
        "CenterCrop",
        "Concatenate",
        "ContrastLimitedAdaptiveHistogramEqualization",
        "Conv1D",
        "Conv1DTranspose",
        "Conv2D",
        "Conv2DTranspose",
        "Conv3D",
        "Conv3DTranspose",
        "ConvLSTM1D",
        "ConvLSTM2D",
        "ConvLSTM3D",
        "Cropping1D",
        "Cropping2D",
        "Cropping3D",
        "CutMix",
        "Dense",
        "DenseFeatures",
        "DepthwiseConv1D",
        "DepthwiseConv2D",
        "Discretization",
        "Dot",
        "Dropout",
        "ELU",
        "EinsumDense",
        "Embedding",
        "Equalization",
        "Flatten",
        "FlaxLayer",
        "Functional",
        "GRU",
        "GRUCell",
        "GaussianDropout",
        "GaussianNoise",
        "GlobalAveragePooling1D",
        "GlobalAveragePooling2D",
        "GlobalAveragePooling3D",
        "GlobalMaxPooling1D",
        "GlobalMaxPooling2D",
        "GlobalMaxPooling3D",
        "GroupNormalization",
        "GroupedQueryAttention",
        "HashedCrossing",
        "Hashing",
        "Identity",
        "InputLayer",
        "IntegerLookup",
        "JaxLayer",
        "LSTM",
        "LSTMCell",
        "Lambda",
        "Layer",
        "LayerNormalization",
        "LeakyReLU",
        "LocallyConnected1D",
        "LocallyConnected2D",
        "Masking",
        "MaxNumBoundingBoxes",
        "MaxPooling1D",
        "MaxPooling2D",
        "MaxPooling3D",
        "Maximum",
        "MelSpectrogram",
        "Minimum",
        "MixUp",
        "Model",
        "MultiHeadAttention",
        "Multiply",
        "Normalization",
        "PReLU",
        "Permute",
        "Pipeline",
        "RMSNormalization",
        "RNN",
        "RandAugment",
        "RandomBrightness",
        "RandomColorDegeneration",
        "RandomColorJitter",
        "RandomContrast",
        "RandomCrop",
        "RandomElasticTransform",
        "RandomErasing",
        "RandomFlip",
        "RandomGaussianBlur",
        "RandomGrayscale",
        "RandomHeight",
        "RandomHue",
        "RandomInvert",
        "RandomPerspective",
        "RandomPosterization",
        "RandomRotation",
        "RandomSaturation",
        "RandomSharpness",
        "RandomShear",
        "RandomTranslation",
        "RandomWidth",
        "RandomZoom",
        "ReLU",
        "RepeatVector",
        "Rescaling",
        "Reshape",
        "Resizing",
        "ReversibleEmbedding",
        "STFTSpectrogram",
        "SeparableConv1D",
        "SeparableConv2D",
        "Sequential",
        "SimpleRNN",
        "SimpleRNNCell",
        "SlicingOpLambda",
        "Softmax",
        "Solarization",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "SpectralNormalization",
        "StackedRNNCells",
        "StringLookup",
        "Subtract",
        "TFOpLambda",
        "TFSMLayer",
        "TextVectorization",
        "ThresholdedReLU",
        "TimeDistributed",
        "TorchModuleWrapper",
        "UnitNormalization",
        "UpSampling1D",
        "UpSampling2D",
        "UpSampling3D",
        "Wrapper",
        "ZeroPadding1D",
        "ZeroPadding2D",
        "ZeroPadding3D",
    }
)

#: Layers Keras ships that run arbitrary code or load an external graph when loaded.
CODE_CARRYING_CLASSES = frozenset({"Lambda", "TFSMLayer"})


#: Operator domains of the ONNX standard and of ONNX Runtime's built-in contrib ops.
ONNX_STANDARD_DOMAINS = frozenset({"ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft"})


def why_unsafe(class_name: str, module: str, registered_name: str) -> str:
    """Why loading this layer would run code from outside Keras ("" when it would not).

    BN501 flags exactly what the runtime refuses to load (unless ``--unsafe-load``).
    Layers read from ONNX carry ``module="onnx:<domain>"``: an operator outside the
    standard domains runs only with a custom-operator library (native code)."""
    if module.startswith("onnx:"):
        domain = module[len("onnx:"):]
        if domain in ONNX_STANDARD_DOMAINS:
            return ""
        return f"operator {class_name!r} of domain {domain!r} runs only with a custom-operator library (native code)"
    if class_name in CODE_CARRYING_CLASSES:
        return f"{class_name} layers carry code or an external graph"
    if class_name not in KERAS_LAYER_CLASSES:
        return f"{class_name!r} is not a Keras built-in layer"
    if module and not module.startswith("keras"):
        return f"{class_name!r} comes from module {module!r}, not Keras"
    if registered_name and registered_name != class_name:
        return f"{class_name!r} is registered as custom object {registered_name!r}"
    return ""


def _regenerate() -> None:  # pragma: no cover - maintenance helper
    import inspect

    import keras
    import tf_keras

    found = {"Functional", "Sequential", "Model", "TFOpLambda", "SlicingOpLambda"}
    for module in (keras.layers, tf_keras.layers):
        for value in vars(module).values():
            if inspect.isclass(value) and issubclass(value, (keras.layers.Layer, tf_keras.layers.Layer)):
                found.add(value.__name__)
    print("\n".join(sorted(found)))


if __name__ == "__main__":  # pragma: no cover
    _regenerate()
