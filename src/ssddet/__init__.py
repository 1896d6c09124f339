"""ssddet: object detectors that stay accurate when the training boxes are wrong (SSD-Det, OA-MIL).

The Python API (`ssddet.api`, one function per command) is re-exported here: `ssddet.train(...)`,
`ssddet.predict(...)`, `ssddet.refine(...)`, ... Importing it is cheap: each function imports torch & co. when
called."""
from ._version import __version__
from .api import (
    audit,
    check,
    evaluate,
    export_onnx,
    load_detector,
    noise,
    plot,
    predict,
    refine,
    show,
    synth,
    train,
    train_config,
    voc2coco,
    yolo2coco,
)

__all__ = ["audit", "check", "evaluate", "export_onnx", "load_detector", "noise", "plot", "predict", "refine",
           "show", "synth", "train", "train_config", "voc2coco", "yolo2coco", "__version__"]
