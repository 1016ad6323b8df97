from django.urls import path

from registry.ui import reports, search, views

urlpatterns = [
    path("", views.model_list, name="model-list"),
    path("inbox/", views.inbox, name="inbox"),
    path("search/", search.version_search_page, name="version-search"),
    path("inbox/count/", views.inbox_count, name="inbox-count"),
    path("retirement/", views.retirement_page, name="retirement"),
    path("models/<slug:name>/versions/<int:version>/keep/", views.version_keep, name="version-keep"),
    path("models/<slug:name>/", views.model_detail, name="model-detail"),
    path("models/<slug:name>/rollback/", views.model_rollback, name="model-rollback"),
    path("models/<slug:name>/webhooks/", views.webhook_create, name="webhook-create"),
    path("models/<slug:name>/webhooks/<int:hook_id>/delete/", views.webhook_delete, name="webhook-delete"),
    path("models/<slug:name>/webhooks/<int:hook_id>/ping/", views.webhook_ping, name="webhook-ping"),
    path("models/<slug:name>/versions/<int:version>/", views.version_detail, name="version-detail"),
    path(
        "models/<slug:name>/versions/<int:version>/report/",
        reports.version_report_page,
        name="version-report",
    ),
    path("models/<slug:name>/versions/<int:version>/status/", views.version_status, name="version-status"),
    path("models/<slug:name>/versions/<int:version>/approve/", views.version_approve, name="version-approve"),
    path("models/<slug:name>/versions/<int:version>/reject/", views.version_reject, name="version-reject"),
    path("datasets/<slug:name>/<int:version>/", views.dataset_detail, name="dataset-detail"),
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/slack/", views.slack_identity, name="slack-identity"),
    path("tokens/<str:key>/revoke/", views.token_revoke, name="token-revoke"),
]
