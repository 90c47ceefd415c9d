"""The training lifecycle: one module per DVC stage, wired only by dvc.yaml, knobs in params.yaml.

Each stage module has a pure core function (data in, data out) and a ``main()`` that reads
params.yaml (through :mod:`training.params`), does the file I/O and exits non-zero on a domain
error. Stages and the files between them (all under ``data/pipeline/``, ``models/``,
``metrics/``, ``plots/``; DVC-tracked outputs):

harvest   decision log (SQL, time window) + seed workloads -> harvest/rows.parquet,
          harvest/quarantine.jsonl, metrics/harvest.json
label     rows.parquet -> label/labelled.parquet, metrics/label.json
split     labelled.parquet -> split/{train,validation,test}.parquet, metrics/split.json
train     train + validation -> models/classifier/merged/ (HF dir, LoRA folded in),
          models/classifier/adapter/, metrics/train.json
calibrate merged + validation -> models/calibrated/ (merged + router_model.json:
          temperature, fitted thresholds, version), metrics/calibrate.json
evaluate  calibrated + test -> metrics/classifier.json, metrics/gate.json, plots/*.png
register  calibrated + metrics -> MLflow (sqlite:///mlruns/mlflow.db), registration.json

Row columns (parquet), added stage by stage:

* harvest: ``row_id`` (str, unique, stable: the workload record id or ``log:<request_id>``),
  ``source`` (routerbench | mmlu | gsm8k | mt_bench | banking77 | clinc150 | log),
  ``category`` (eval_name / subject / intent / "log"), ``text`` (normalised classifier text,
  PII-scrubbed), ``text_hash`` (sha256 hex of ``text``), ``domain`` (finance | legal | medical
  | null), ``outcomes`` (JSON object tier -> true/false/null: was that tier's recorded answer
  correct), ``scores`` (JSON object tier -> float/null, graded data such as MT-Bench),
  ``costs`` (JSON object tier -> USD/null), ``created_at`` (ISO-8601 UTC or null),
  ``feedback`` (str or null, from the decision log)
* label: ``label`` (simple | medium | critical | null), ``label_source`` (outcomes | judge |
  rule), ``labeller_version`` (str), ``label_note`` (str or null)
* split: ``group`` (str: rows sharing it are duplicates or paraphrases and share a fold),
  ``fold`` (train | validation | test), ``slice`` (JSON list of tail-slice names the row is in),
  ``weight`` (float: 1 / relative inclusion rate, so oversampled tails can be down-weighted)
"""
