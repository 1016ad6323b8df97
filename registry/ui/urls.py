from django.urls import path

from registry.ui import views

urlpatterns = [
    path("", views.model_list, name="model-list"),
    path("models/<slug:name>/", views.model_detail, name="model-detail"),
    path("models/<slug:name>/versions/<int:version>/", views.version_detail, name="version-detail"),
    path("models/<slug:name>/versions/<int:version>/status/", views.version_status, name="version-status"),
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/<str:key>/revoke/", views.token_revoke, name="token-revoke"),
]
