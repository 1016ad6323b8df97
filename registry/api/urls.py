from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from registry.api import exports, reports, retirement, signoff
from registry.api import views as v

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("models/", v.ModelListView.as_view(), name="model-list"),
    path("models/<slug:name>/", v.ModelDetailView.as_view(), name="model-detail"),
    path("models/<slug:name>/policy/", v.ModelPolicyView.as_view(), name="model-policy"),
    path("models/<slug:name>/roles/", v.ModelRolesView.as_view(), name="model-roles"),
    path("models/<slug:name>/aliases/", v.AliasListView.as_view(), name="alias-list"),
    path("models/<slug:name>/aliases/<slug:alias>/", v.AliasDetailView.as_view(), name="alias-detail"),
    path("models/<slug:name>/history/", v.HistoryView.as_view(), name="model-history"),
    path("models/<slug:name>/versions/", v.VersionListView.as_view(), name="version-list"),
    path("models/<slug:name>/uploads/", v.DirectUploadListView.as_view(), name="direct-upload-list"),
    path(
        "models/<slug:name>/uploads/<uuid:upload>/",
        v.DirectUploadDetailView.as_view(),
        name="direct-upload-detail",
    ),
    path(
        "models/<slug:name>/uploads/<uuid:upload>/complete/",
        v.DirectUploadCompleteView.as_view(),
        name="direct-upload-complete",
    ),
    path("models/<slug:name>/versions/<int:version>/", v.VersionDetailView.as_view(), name="version-detail"),
    path(
        "models/<slug:name>/versions/<int:version>/artifact/",
        v.VersionArtifactView.as_view(),
        name="version-artifact",
    ),
    path(
        "models/<slug:name>/versions/<int:version>/lineage/",
        v.VersionLineageView.as_view(),
        name="version-lineage",
    ),
    path(
        "models/<slug:name>/versions/<int:version>/report/",
        reports.VersionReportView.as_view(),
        name="version-report",
    ),
    path(
        "models/<slug:name>/versions/<int:version>/events/",
        v.VersionEventsView.as_view(),
        name="version-events",
    ),
    path(
        "models/<slug:name>/versions/<int:version>/revalidate/",
        v.VersionRevalidateView.as_view(),
        name="version-revalidate",
    ),
    path(
        "models/<slug:name>/versions/<int:version>/approve/",
        signoff.ApproveView.as_view(),
        name="version-approve",
    ),
    path(
        "models/<slug:name>/versions/<int:version>/reject/",
        signoff.RejectView.as_view(),
        name="version-reject",
    ),
    path(
        "models/<slug:name>/versions/<int:version>/retire/",
        retirement.VersionRetireView.as_view(),
        name="version-retire",
    ),
    path(
        "models/<slug:name>/versions/<int:version>/restore/",
        retirement.VersionRestoreView.as_view(),
        name="version-restore",
    ),
    path(
        "retirement/candidates/", retirement.RetirementCandidatesView.as_view(), name="retirement-candidates"
    ),
    path("models/<slug:name>/rollback/", signoff.RollbackView.as_view(), name="model-rollback"),
    path("models/<slug:name>/webhooks/", signoff.WebhookListView.as_view(), name="webhook-list"),
    path(
        "models/<slug:name>/webhooks/<int:hook_id>/",
        signoff.WebhookDetailView.as_view(),
        name="webhook-detail",
    ),
    path(
        "models/<slug:name>/webhooks/<int:hook_id>/ping/",
        signoff.WebhookPingView.as_view(),
        name="webhook-ping",
    ),
    *exports.urlpatterns,
    path("versions/", v.CrossVersionListView.as_view(), name="versions"),
    path("datasets/", v.DatasetListView.as_view(), name="dataset-list"),
    path("datasets/<slug:name>/<int:version>/", v.DatasetDetailView.as_view(), name="dataset-detail"),
]
