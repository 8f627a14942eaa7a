from pydantic import Field

from app.core.schemas import APIModel


class SearchHit(APIModel):
    type: str = Field(description="The source: items, articles")
    id: int
    title: str
    snippet: str = Field(
        description="HTML-escaped text around the matches, each match in <mark></mark>"
    )
    score: float = Field(description="Relevance, higher first (comparable within one answer)")


class SearchResults(APIModel):
    query: str
    results: list[SearchHit]
