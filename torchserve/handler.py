"""TorchServe handler for Re*Star: JSON reviews in, labels with calibrated probabilities out.

Accepts `{"text": "..."}` (answers one object) or `{"texts": [...]}` (answers a list), and
TorchServe's dynamic batches of such requests; a review may carry its upstream `title` beside `text`
(see `restar.json_requests`). All model logic, text preparation included, is the inference core
(`restar.inference`); this file only speaks TorchServe. A bad request gets a 4xx JSON error naming
the problem and the rest of its batch is answered normally.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ts.torch_handler.base_handler import BaseHandler

from restar.inference import InferenceCore
from restar.json_requests import ParsedRequest, parse_body

logger = logging.getLogger(__name__)

REGISTRY_FILE = "registry.json"


class RestarHandler(BaseHandler):
    """Loads the model once from the archive; one `InferenceCore.predict` call per batch."""

    def initialize(self, context) -> None:
        model_dir = Path(context.system_properties["model_dir"])
        self.core = InferenceCore.from_dir(model_dir)
        self.model_version = json.loads((model_dir / REGISTRY_FILE).read_text())["version"]
        self.initialized = True
        logger.info("Re*Star model version %s loaded", self.model_version)

    def preprocess(self, data: list[dict[str, Any]]) -> list[ParsedRequest]:
        # TorchServe hands each request's body over as "data" or "body", JSON already decoded when valid.
        return [
            parse_body(row.get("data") if row.get("data") is not None else row.get("body")) for row in data
        ]

    def inference(
        self, requests: list[ParsedRequest], *args, **kwargs
    ) -> list[tuple[ParsedRequest, list[dict]]]:
        texts = [text for request in requests for text in request.texts]
        titles = [title for request in requests for title in request.titles]
        rows = self.core.predict(texts, titles).to_dict(orient="records") if texts else []
        answered, start = [], 0
        for request in requests:
            chunk = rows[start : start + len(request.texts)]
            answered.append((request, [{**row, "model_version": self.model_version} for row in chunk]))
            start += len(request.texts)
        return answered

    def postprocess(self, answered: list[tuple[ParsedRequest, list[dict]]]) -> list[Any]:
        out = []
        for index, (request, rows) in enumerate(answered):
            if request.status != 200:
                self.context.set_response_status(code=request.status, phrase=request.error, idx=index)
                out.append({"error": request.error, "status": request.status})
            else:
                out.append(rows if request.many else rows[0])
        return out
