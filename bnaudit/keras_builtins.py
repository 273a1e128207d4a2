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
        "SyncBatchNormalization",
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

#: Layer classes that ``keras.applications`` (Keras 3) and ``tf_keras.applications`` define
#: for their own architectures (InceptionResNetV2, ConvNeXt), under the names their
#: saved configs use: Keras's own code, not the file's.
APPLICATION_LAYER_CLASSES = frozenset({"CustomScaleLayer", "Custom>CustomScaleLayer", "LayerScale", "StochasticDepth"})
KERAS_LAYER_CLASSES = KERAS_LAYER_CLASSES | APPLICATION_LAYER_CLASSES

#: Serialized objects Keras ships that run code from the file, load an external graph or
#: module, or call an operation the file names, when loaded: Lambda (marshalled bytecode),
#: ``__lambda__`` (a serialized Python function), TFSMLayer (a SavedModel), the Torch,
#: JAX and Flax wrappers (a pickled module or a function), and tf-keras's op layers
#: (any TensorFlow symbol by name).
CODE_CARRYING_CLASSES = frozenset(
    {"Lambda", "__lambda__", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer", "TFOpLambda", "SlicingOpLambda"}
)

#: Operator domains of the ONNX standard and of ONNX Runtime's built-in contrib ops; an
#: operator of any other domain runs only with a custom-operator library (native code).
ONNX_STANDARD_DOMAINS = frozenset({"ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft"})


def _regenerate() -> None:  # pragma: no cover - maintenance helper
    import inspect

    import keras
    import tf_keras

    found = {"Functional", "Sequential", "Model", "TFOpLambda", "SlicingOpLambda"}
    for module in (keras.layers, tf_keras.layers, tf_keras.layers.experimental):
        for value in vars(module).values():
            if inspect.isclass(value) and issubclass(value, (keras.layers.Layer, tf_keras.layers.Layer)):
                found.add(value.__name__)
    print("\n".join(sorted(found)))


if __name__ == "__main__":  # pragma: no cover
    _regenerate()
