"""The comparison point for benchmarks/serve.py: a naive per-request FastAPI handler.

Each request runs its own forward pass of the same `Predictor` that `mwml serve` uses (no batching across
requests), the way a first version of an ML endpoint usually looks. Run:
MWML_MODEL=<tagger folder or registry alias> uvicorn naive_server:app --port 8001
"""

import os

from fastapi import FastAPI

from mwml.predict import Predictor

app = FastAPI()
predictor = Predictor.load(os.environ["MWML_MODEL"])


@app.post("/predict")
def predict(body: dict) -> dict:
    return {"predictions": predictor.predict(body["items"])}


@app.get("/health")
def health() -> dict:
    return {"status": "ok"}
