"""The demo: its data, the lifecycle ``make demo`` runs, the fairness policy replay."""
