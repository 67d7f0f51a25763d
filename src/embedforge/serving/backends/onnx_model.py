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
        """One onnxruntime run for all requests the dynamic batcher gathered: each request's rows are padded to
        the longest sequence (mask 0: pooling ignores them), then the outputs are split back per request."""
        feeds, errors = [], {}
        for i, request in enumerate(requests):
            try:
                feeds.append({n: pb_utils.get_input_tensor_by_name(request, n).as_numpy().astype(np.int64)
                              for n in self.inputs})
            except Exception as exc:
                errors[i] = str(exc)
                feeds.append(None)
        good = [f for f in feeds if f is not None]
        out = None
        if good:
            width = max(f[self.inputs[0]].shape[1] for f in good)
            batch = {n: np.concatenate([np.pad(f[n], ((0, 0), (0, width - f[n].shape[1]))) for f in good])
                     for n in self.inputs}
            try:
                (out,) = self.session.run(["embeddings"], batch)
            except Exception as exc:
                errors.update({i: str(exc) for i, f in enumerate(feeds) if f is not None})
        responses, row = [], 0
        for i, f in enumerate(feeds):
            if i in errors:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(errors[i])))
                continue
            n = f[self.inputs[0]].shape[0]
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("embeddings", out[row:row + n].astype(np.float32))]))
            row += n
        return responses
