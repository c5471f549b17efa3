"""The comparison point for benchmarks/serve.py: a naive per-request FastAPI + transformers handler.

Each request runs its own forward pass (no batching across requests), the way a first version of an
ML endpoint usually looks. Run: MODEL_DIR=<tagger folder> uvicorn naive_server:app --port 8001
"""

import os

from fastapi import FastAPI

from mwml.models import Tagger

app = FastAPI()
tagger = Tagger.load(os.environ["MODEL_DIR"])


@app.post("/predict")
def predict(body: dict) -> dict:
    items = body["items"]
    tags, probs = tagger.predict([i["title"] for i in items], [i.get("description", "") for i in items])
    return {"predictions": [{"tag": t, "probabilities": dict(zip(tagger.labels.classes, map(float, p)))} for t, p in zip(tags, probs)]}


@app.get("/health")
def health() -> dict:
    return {"status": "ok"}
