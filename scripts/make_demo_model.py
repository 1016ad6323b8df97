"""Write a tiny ONNX classifier (or a broken one) for the quick start and the smoke test.

python scripts/make_demo_model.py model.onnx            # 4 features -> 2 classes, loads fine
python scripts/make_demo_model.py broken.onnx --broken  # passes upload checks, fails the loads gate
"""

from __future__ import annotations

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper


def build(broken: bool, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    rows = 3 if broken else 4  # a [N,4] x [3,2] MatMul: onnx.checker passes it, onnxruntime refuses it
    weights = helper.make_tensor(
        "W", TensorProto.FLOAT, [rows, 2], rng.normal(size=rows * 2).astype(np.float32)
    )
    bias = helper.make_tensor("B", TensorProto.FLOAT, [2], np.zeros(2, dtype=np.float32))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["logits"]),
            helper.make_node("Add", ["logits", "B"], ["scores"]),
            helper.make_node("Softmax", ["scores"], ["output_0"], axis=-1),
        ],
        "demo",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("output_0", TensorProto.FLOAT, [None, 2])],
        [weights, bias],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelgate-demo"
    )
    model.ir_version = 8
    return model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path")
    parser.add_argument("--broken", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    onnx.save(build(args.broken, args.seed), args.path)
    print(args.path)


if __name__ == "__main__":
    main()
