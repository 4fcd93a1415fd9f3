"""Building blocks the evaluation protocols share: metrics, matching, memory bank, search, clustering, transforms, PAMR, Segmenter."""
