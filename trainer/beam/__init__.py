"""Apache Beam pipelines for the steps that outgrow one machine (docs/cloud.md, "Dataflow"):
`trainer.prepare --runner=...` (records) and `trainer.predict --runner=...` (predicting).

Apache Beam is an extra (`pip install 'effnet-trainer[beam]'`): only `options` imports without it,
so the commands can define `--runner` and `--beam_options` and refuse a Beam runner in one line
where Beam is missing.
"""
