"""The Celery task sender the lifespan opened (core can't name `Jobs`, so it sits here)."""

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from app.jobs.service import Jobs


async def get_jobs(connection: HTTPConnection) -> Jobs:
    jobs: Jobs = connection.app.state.jobs  # set by the lifespan beside `services`
    return jobs


JobsDep = Annotated[Jobs, Depends(get_jobs)]
