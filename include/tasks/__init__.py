"""The task logic of each DAG family (train, rollout, monitor, retire), with no Airflow import:
functions over URIs and a typed config that read and write the lake, MLflow and the prediction
log, and return small dicts. Beside the families, what they share: the gate result (``gates``),
the candidate's blessing (``blessing``), the business value model (``business``) and the PSI
(``psi``)."""
