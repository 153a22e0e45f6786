"""The Vertex AI launcher as a library: what a job may ask for, its request bodies, one REST client.

Modules, arrows pointing down (none imports TensorFlow; google-auth, requests and PyYAML are
imported inside the functions that need them, so `--dry_run` works without credentials):

    submit, deploy          the two commands (flags + a thin main; scripts/*.py wrap them)
    tuning, endpoints       HyperparameterTuningJob from a study file; Model/DeployedModel bodies
    jobs                    JobSpec, its checks and the CustomJob body (pure)
    machines                machine, accelerator and TPU tables, presets, the prebuilt images
    vertex, packaging       the REST client (sessions, POST/GET, polling); the sdist and its upload
    errors                  CloudError: a request the user must change
"""
