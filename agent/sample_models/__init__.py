"""Small deterministic sample models (MLP and CNN) built offline for tests, demos and benchmarks.

`write_sample_models(dir)` writes each network as FP32 ONNX, INT8 ONNX, OpenVINO IR and TFLite
(the last two when their packages are installed), plus fixed inputs, outputs expected from a
pure-numpy reference, and a `samples.json` index (see `agent.sample_models.index`). The runtime
packages are imported only while writing, so importing this package stays cheap.
"""

from agent.sample_models.errors import SampleModelsError
from agent.sample_models.index import (
    INDEX_FILE,
    FileDigest,
    ModelFile,
    SampleIndex,
    SampleModel,
    read_index,
)
from agent.sample_models.writer import Progress, write_sample_models

__all__ = [
    "INDEX_FILE",
    "FileDigest",
    "ModelFile",
    "Progress",
    "SampleIndex",
    "SampleModel",
    "SampleModelsError",
    "read_index",
    "write_sample_models",
]
