"""What scores a layout's image (paper 3.3, 4.1): the detector, segmenter and judge protocols
(protocols), the shapes world's analytic stand-ins (analytic, captions), GroundingDINO
(grounding_dino), SAM / SAM-HQ (sam), LayoutSAM-eval's VLM judge (vlm_judge), and the one
registry that names and loads them all (registry)."""
