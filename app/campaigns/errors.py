from app.core.errors import Conflict, Forbidden, NotFound


class CampaignNotFound(NotFound):
    def __init__(self, campaign_id: int) -> None:
        super().__init__(f"Campaign {campaign_id} not found")


class AddressNotVerified(Conflict):
    """Mail goes only to addresses their owners proved they hold."""

    def __init__(self) -> None:
        super().__init__("Verify your email address first: mail goes only to verified addresses")


class OnlyOwnAddress(Forbidden):
    """Free-form mail from a user goes to that user's own address only."""

    def __init__(self) -> None:
        super().__init__("Only admins may mail other addresses: leave `to` out to mail yourself")
