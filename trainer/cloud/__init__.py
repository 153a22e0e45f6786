"""The Vertex AI launcher as a library: what a job may ask for, its request bodies, one REST client.

Modules, arrows pointing down (none but batch_files imports TensorFlow; google-auth, requests and PyYAML are
imported inside the functions that need them, so `--dry_run` works without credentials):

    submit, deploy,         the commands (flags + a thin main; scripts/*.py wrap submit and deploy)
    batch_predict
    batch_files             a batch prediction's files: the export checked, instances written, output
                            read into trainer.predict's CSV (the one module here that loads TensorFlow)
    tuning, endpoints,      HyperparameterTuningJob from a study file; Model/DeployedModel bodies and
    batch_jobs              the upload; the BatchPredictionJob body
    jobs                    JobSpec, its checks and the CustomJob body (pure)
    machines                machine, accelerator and TPU tables, presets, the prebuilt images
    vertex, packaging       the REST client (sessions, POST/GET, polling); the sdist and its upload
    errors                  CloudError: a request the user must change
"""
