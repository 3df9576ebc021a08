"""Scoring explanations: as soft segmentations (Chefer et al.'s protocol), by
perturbation, and by classification; the resumable run folders they write."""
