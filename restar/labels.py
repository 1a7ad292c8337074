"""The label set every part of Re*Star shares (see DESIGN.md)."""

LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
ABSTAIN = "abstain"
PROBABILITY_COLUMNS: tuple[str, ...] = ("p_neg", "p_neu", "p_pos")
# What every prediction carries, with its type (MLflow and Spark type names): `truncated` is true when
# the review is longer than the model reads and only its beginning was scored.
OUTPUT_TYPES: dict[str, str] = {
    "label": "string",
    "confidence": "double",
    **{name: "double" for name in PROBABILITY_COLUMNS},
    "truncated": "boolean",
}
OUTPUT_COLUMNS: tuple[str, ...] = tuple(OUTPUT_TYPES)
DEFAULT_ABSTAIN_THRESHOLD = 0.65


def rating_to_label(rating: float) -> int:
    """Map a 1-5 star rating to a label id: <=2 negative, 3 neutral, >=4 positive."""
    if rating <= 2:
        return 0
    if rating < 4:
        return 1
    return 2
