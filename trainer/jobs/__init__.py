"""The whole job behind `python -m trainer.task`: train, then on the chief export, plot and report."""
