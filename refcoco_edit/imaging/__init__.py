"""Images and masks on disk and on screen: safe opening with one pixel limit, mask PNGs, overlays
and grids."""
