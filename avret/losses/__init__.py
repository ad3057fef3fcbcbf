"""Losses, one file per family: retrieval (SupCon + prototypes), logit KD, relevance regression
(VideoAdviser step 2), MSD's saliency-weighted KD terms, and MI (InfoNCE + adversarial) terms."""
