"""What a run is, as data: the frozen Config dataclasses, validated once, and the backbone registry
(one preset per row)."""
