"""The ceiling: the smallest FastAPI app, served by the same uvicorn setup as the service.

Its `GET /health` does no work, so its requests/sec is what this machine, this uvicorn and
FastAPI's routing can do at best; `run.py` divides every endpoint's figure by it.

    python bench/bare_app.py --host 127.0.0.1 --port 8001

It is started like this, not with the `uvicorn` command, so that it gets exactly the options
`app api` passes to `uvicorn.run` (app/cli.py, `_run_api`). The `uvicorn` command's defaults
differ (proxy headers on, its own logging config), and each difference moves the ceiling.
"""

import argparse

import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    # Keep in step with app/cli.py `_run_api` (one process, as `app api --workers 1`). `http`
    # and `loop` are left on "auto" there too: httptools and uvloop, both installed.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        workers=1,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
