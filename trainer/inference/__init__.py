"""Answers from an export: a SavedModel loaded (class names, thresholds, signatures), batch
prediction and features, labelled images read with their ids."""
