"""Send one inference to the sample MLP with tritonclient and print the top classes."""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.http as httpclient


def main() -> None:
    """Call `mlp` on a running agent (see `make demo`)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="127.0.0.1:8000", help="agent address (host:port)")
    args = parser.parse_args()
    client = httpclient.InferenceServerClient(args.url)
    batch = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    result = client.infer("mlp", [tensor])
    probabilities = result.as_numpy("probabilities")
    assert probabilities is not None
    for row, p in enumerate(probabilities):
        top = np.argsort(-p)[:3]
        print(f"sample {row}: " + ", ".join(f"class {i} ({p[i]:.3f})" for i in top))
    config = client.get_model_config("mlp")["edgefleet"]
    print(f"served by {config['runtime']} on {config['device']} ({config['file']})")


if __name__ == "__main__":
    main()
