"""ssddet: object detectors that stay accurate when the training boxes are wrong (SSD-Det, OA-MIL).

The Python API (`ssddet.api`, one function per command) is re-exported here: `ssddet.train(...)`,
`ssddet.predict(...)`, `ssddet.refine(...)`, ... Importing it is cheap: each function imports torch & co. when
called."""
__version__ = "0.1.0"

from .api import (  # noqa: E402  (after __version__, which the modules below read)
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
    voc2coco,
    yolo2coco,
)

__all__ = ["audit", "check", "evaluate", "export_onnx", "load_detector", "noise", "plot", "predict", "refine",
           "show", "synth", "train", "voc2coco", "yolo2coco", "__version__"]
