"""Evaluations in the admin: read-only, like the rest of training (imported by training/admin.py)."""

from django.contrib import admin

from training.admin import ReadOnlyAdmin
from training.models_evaluation import Evaluation, EvaluationResult, EvaluationSet


@admin.register(EvaluationSet)
class EvaluationSetAdmin(ReadOnlyAdmin):
    list_display = ["name", "organization", "source", "items_count", "references_count", "created_by", "created_at"]
    list_filter = ["source"]
    search_fields = ["name"]


@admin.register(Evaluation)
class EvaluationAdmin(ReadOnlyAdmin):
    list_display = ["id", "evaluation_set", "targets", "state", "processed", "total", "started_by", "created_at"]
    list_filter = ["state"]


@admin.register(EvaluationResult)
class EvaluationResultAdmin(ReadOnlyAdmin):
    list_display = ["evaluation", "item", "target", "status", "quality_score", "agreement", "latency_ms", "cost"]
    list_filter = ["status"]
    list_select_related = ["item"]
