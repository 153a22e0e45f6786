#!/usr/bin/env python3
r"""Deploys an export to a Vertex AI endpoint: `effnet-deploy` (trainer.cloud.deploy).

    python scripts/deploy_vertex.py --project=P --region=R --export=gs://B/run/model/export/N \
        --display_name=NAME [--endpoint=ID] [--machine_type=n1-standard-4] [--dry_run]
"""
from trainer.cloud import deploy

if __name__ == "__main__":
    deploy.run_main()
