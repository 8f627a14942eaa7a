from app.core.errors import Forbidden


class OthersReportForbidden(Forbidden):
    """A user's activity is theirs and the admins' to see."""

    def __init__(self) -> None:
        super().__init__("Only admins may report on another user's activity")
