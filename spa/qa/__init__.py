"""Extractive question answering in SQuAD v1.1 format: features, post-processing, training.

Reading SQuAD JSON and the official exact-match / F1 metrics live in `spa.data.squad`.
"""

from __future__ import annotations

from spa.qa.features import QAFeatures, prepare_eval_features, prepare_train_features
from spa.qa.postprocess import best_span, postprocess_predictions
from spa.qa.train import (
    QAEvaluation,
    QATrainer,
    QATrainingConfig,
    evaluate_qa,
    predict_logits,
    train_qa,
)

__all__ = [
    "QAEvaluation",
    "QAFeatures",
    "QATrainer",
    "QATrainingConfig",
    "best_span",
    "evaluate_qa",
    "postprocess_predictions",
    "predict_logits",
    "prepare_eval_features",
    "prepare_train_features",
    "train_qa",
]
