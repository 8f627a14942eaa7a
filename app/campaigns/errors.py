from app.core.errors import NotFound


class CampaignNotFound(NotFound):
    def __init__(self, campaign_id: int) -> None:
        super().__init__(f"Campaign {campaign_id} not found")
