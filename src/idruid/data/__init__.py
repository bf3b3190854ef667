"""Datasets: one reader per source (the synthetic shapes world, LayoutSAM, COCO-MIG)."""
