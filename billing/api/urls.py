from django.urls import path

from billing.api import views

urlpatterns = [
    path("stats", views.CostStatsView.as_view(), name="costs-stats"),
    path("breakdown", views.BreakdownView.as_view(), name="costs-breakdown"),
    path("usage/<int:user_id>", views.UserUsageView.as_view(), name="costs-usage"),
    path("budget", views.BudgetView.as_view(), name="costs-budget"),
    path("forecast", views.ForecastView.as_view(), name="costs-forecast"),
    path("export", views.ExportView.as_view(), name="costs-export"),
]
