"""Triton Python-backend model (copied as ``model.py`` into ``<name>_onnx/<version>/``): the ONNX embedder.

Used instead of the ``onnxruntime`` backend when ``triton.embedder_backend=python``: for Triton builds that have
only the Python backend (PyPI's ``nvidia-pytriton`` server, which the tests run). It runs the same
``model.onnx`` with the ``onnxruntime`` package, with the same inputs (``input_ids``, ``attention_mask`` INT64
``[batch, sequence]``) and output (``embeddings`` FP32 ``[batch, dim]``) as the production configuration, so
the ensemble and every client are unchanged. Runs inside the Triton server; not imported by embedforge.
"""

import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("EMBEDFORGE_ORT_THREADS", "1"))
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                feed = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy().astype(np.int64)
                        for n in self.inputs}
                (out,) = self.session.run(["embeddings"], feed)
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("embeddings", out.astype(np.float32))]))
            except Exception as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
