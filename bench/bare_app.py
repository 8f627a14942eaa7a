"""The ceiling: the smallest FastAPI app, served by the same uvicorn setup as the service.

Its `GET /health` does no work, so its requests/sec is what this machine, this uvicorn and
FastAPI's routing can do at best; `run.py` divides every endpoint's figure by it.
"""

from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
