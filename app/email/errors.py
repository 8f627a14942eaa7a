"""The outbox's failures. They stay inside the worker: the send task turns them into a retry,
or into a JobError its owner reads."""


class DeliveryError(Exception):
    """SMTP refused or failed. Permanent (5xx) failures are not retried."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class ClaimLost(Exception):
    """Another sender took the row over (our lease ran out): this one must not finish."""
