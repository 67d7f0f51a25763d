"""The Kubernetes path's own code: ``trainjob`` (multi-node training as a Kubeflow Trainer TrainJob) and
``submit`` (a compiled pipeline to a KFP API server)."""
