"""The label set every part of Re*Star shares (see DESIGN.md)."""

LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
ABSTAIN = "abstain"
PROBABILITY_COLUMNS: tuple[str, ...] = ("p_neg", "p_neu", "p_pos")
OUTPUT_COLUMNS: tuple[str, ...] = ("label", "confidence", *PROBABILITY_COLUMNS)
DEFAULT_ABSTAIN_THRESHOLD = 0.65


def rating_to_label(rating: float) -> int:
    """Map a 1-5 star rating to a label id: <=2 negative, 3 neutral, >=4 positive."""
    if rating <= 2:
        return 0
    if rating < 4:
        return 1
    return 2
