"""Callbacks of the recipe, which a user may change or add to: EMA/SWA weight averaging, backbone unfreezing."""
