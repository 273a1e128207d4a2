"""The maths of bnaudit that needs no TensorFlow: numpy only, tested without TensorFlow.

* :mod:`.moments`: streaming per-channel moments and their exact merge;
* :mod:`.statistics`: what a statistics pass measured per BN layer, and how shards merge;
* :mod:`.statistics_file`: the ``.npz`` file those statistics are saved in;
* :mod:`.cka`: linear CKA between two modes' outputs, summed over batches;
* :mod:`.drift`: data statistics against moving statistics (drift scores);
* :mod:`.tolerances`: element-wise comparison of two runs within a tolerance.

The TensorFlow side (loading models, instrumenting them, running passes) is in
:mod:`bnaudit.runtime`, which feeds these functions numpy arrays.
"""
