"""TorchServe handler for Re*Star: JSON reviews in, labels with calibrated probabilities out.

Accepts `{"text": "..."}` (answers one object) or `{"texts": [...]}` (answers a list), and
TorchServe's dynamic batches of such requests; a review may carry its upstream `title` beside `text`
(see `restar.serving.json_requests`). All model logic, text preparation included, is the inference core
(`restar.model.inference`); this file only speaks TorchServe.

Every request of a batch is answered on its own: a bad request gets a 4xx JSON error naming the
problem, and neither it nor a failing forward pass can cost the other requests of its batch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any

from ts.torch_handler.base_handler import BaseHandler

from restar.model.inference import InferenceCore
from restar.serving.json_requests import ParsedRequest, parse_body

logger = logging.getLogger(__name__)

REGISTRY_FILE = "registry.json"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class RestarHandler(BaseHandler):
    """Loads the model once from the archive; one `InferenceCore.predict` call per batch."""

    def initialize(self, context) -> None:
        # The worker reads this for every request: bodies then arrive as the client's bytes, and one
        # strict parser (restar.serving.json_requests) judges them all, whatever their Content-Type says.
        os.environ["TS_DECODE_INPUT_REQUEST"] = "false"
        model_dir = Path(context.system_properties["model_dir"])
        settings = (context.model_yaml_config or {}).get("handler") or {}
        self.core = InferenceCore.from_dir(model_dir, batch_size=int(settings.get("forward_batch_size", 32)))
        self.model_version = json.loads((model_dir / REGISTRY_FILE).read_text())["version"]
        self.initialized = True
        logger.info("Re*Star model version %s loaded", self.model_version)

    def handle(self, data: list[dict[str, Any]], context) -> list[str]:
        """TorchServe's entry point for a batch; BaseHandler's would treat the whole batch as
        explanations when its first request is one, and fail the whole batch on one exception."""
        start = time.perf_counter()
        self.context = context
        requests = [self.parse(index, row) for index, row in enumerate(data)]
        answers = self.postprocess(self.inference(requests))
        context.metrics.add_time("HandlerTime", round((time.perf_counter() - start) * 1000, 2), None, "ms")
        return answers

    def parse(self, index: int, row: dict[str, Any]) -> ParsedRequest:
        """One request of the batch; its path and content type come in as request headers."""
        if str(self.context.get_request_header(index, "explain")).lower() == "true":
            return ParsedRequest(status=404, error="explanations are not served; POST to /predictions/restar")
        # TorchServe hands the body over as "data" or "body"; a form body arrives as neither.
        body = row.get("data") if row.get("data") is not None else row.get("body")
        content_type = str(self.context.get_request_header(index, "Content-Type") or "")
        if body is None and content_type.lower().startswith(FORM_TYPES):
            return ParsedRequest(
                status=415, error=f"{content_type} is not accepted: send JSON, Content-Type: application/json"
            )
        return parse_body(b"" if body is None else body)

    def inference(self, requests: list[ParsedRequest], *args, **kwargs) -> list[tuple[ParsedRequest, list]]:
        """Each valid request with its output rows; one forward pass for the batch, and request by
        request only when that pass fails, so the request that broke it is the only one to fail."""
        valid = [request for request in requests if request.status == 200]
        try:
            rows = self.predict(valid)
        except Exception:
            logger.exception("batch of %d requests failed; answering them one by one", len(valid))
            rows = [row for request in valid for row in self.predict_alone(request)]
        answered, start = [], 0
        for request in requests:
            count = len(request.texts) if request.status == 200 else 0
            answered.append((request, rows[start : start + count]))
            start += count
        return answered

    def predict(self, requests: list[ParsedRequest]) -> list[dict[str, Any]]:
        """Output rows for the texts of `requests`, in order, JSON-ready (NaN becomes null)."""
        texts = [text for request in requests for text in request.texts]
        if not texts:
            return []
        titles = [title for request in requests for title in request.titles]
        frame = self.core.predict(texts, titles)
        columns = list(frame.columns)
        return [
            {
                **{
                    name: None if isinstance(value, float) and math.isnan(value) else value
                    for name, value in zip(columns, values, strict=True)
                },
                "model_version": self.model_version,
            }
            for values in frame.itertuples(index=False, name=None)
        ]

    def predict_alone(self, request: ParsedRequest) -> list[dict[str, Any]]:
        try:
            return self.predict([request])
        except Exception as exc:
            logger.exception("request failed alone")
            request.status, request.error = 500, f"prediction failed: {type(exc).__name__}"
            return []

    def postprocess(self, answered: list[tuple[ParsedRequest, list]]) -> list[str]:
        out = []
        for index, (request, rows) in enumerate(answered):
            self.context.set_response_content_type(index, "application/json")
            if request.status != 200:
                phrase = HTTPStatus(request.status).phrase
                self.context.set_response_status(code=request.status, phrase=phrase, idx=index)
                body: Any = {"error": request.error, "status": request.status}
            else:
                body = rows if request.many else rows[0]
            out.append(json.dumps(body, allow_nan=False))
        return out
