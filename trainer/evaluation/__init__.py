"""Figures from predictions: metrics, multi-label metrics, temperature calibration, the split report
through an export, plots and TensorBoard summaries."""
