"""What leaves a run: the SavedModel with its signatures, the .tflite variants, and the run's
classifier restored as exported."""
