"""Pure task logic: functions over URIs and a typed config, returning small dicts. No Airflow here."""
