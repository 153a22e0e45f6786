#!/usr/bin/env python3
r"""Submits a training run to Vertex AI: `effnet-submit` (trainer.cloud.submit), run from this checkout.

    python scripts/submit_job.py --preset=gpu --project=P --region=us-central1 \
        --staging_bucket=gs://B (--image_uri=IMAGE | --package) [--dry_run] -- TRAINER_ARGS...

--package builds the sdist of the checkout this script sits in (docs/cloud.md).
"""
import os

from trainer.cloud import submit

if __name__ == "__main__":
    submit.run_main(source_dir=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
