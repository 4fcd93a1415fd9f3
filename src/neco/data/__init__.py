"""Datasets: segmentation benchmarks (evaluation), image collections (training), synthetic scenes."""
