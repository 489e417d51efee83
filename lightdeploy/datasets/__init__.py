"""Datasets made here: the procedural shapes-on-photographs set and its writers (COCO JSON, PNG masks)."""
