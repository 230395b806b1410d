"""Stage `respond`: the model's raw outputs become the response — the outputs asked for, in the configured
shapes, as top-k classes where asked, written into shared memory where placed."""

from __future__ import annotations

from ..types import MESSAGE_TENSOR, InferenceResponse, InferError
from .call import Call


class RespondStage:
    name = "respond"

    def __call__(self, call: Call) -> None:
        if call.response is not None:  # answered already (a response-cache hit)
            return
        model = call.model
        results = call.results
        request = call.request
        if results is None:
            raise InferError.internal("the pipeline reached 'respond' without results (is 'schedule' missing?)")
        if request.message is not None:
            response = InferenceResponse(model.name, model.version_str, {}, request.id)
            response.message = results[MESSAGE_TENSOR][0]
            call.response = response
            return
        admitted = call.admitted
        outputs = model.shape_outputs(results, admitted.names, call.job.rows)  # type: ignore[union-attr]
        if admitted.classes:
            model.classify(outputs, admitted.classes)
        response = InferenceResponse(model.name, model.version_str, outputs, request.id)
        if admitted.lease is not None:
            response.shared_outputs = admitted.lease.finish(outputs)
        call.response = response
