from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from registry import health
from registry.api.signoff import slack_interactions

urlpatterns = [
    path("api/v1/", include(("registry.api.urls", "api"))),
    path("api/v1/", include(("serving.urls", "serving"))),
    path("slack/interactions/", slack_interactions, name="slack-interactions"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", include(("registry.ui.urls", "ui"))),
]

handler400 = "registry.api.errors.handler400"
handler403 = "registry.api.errors.handler403"
handler404 = "registry.api.errors.handler404"
handler500 = "registry.api.errors.handler500"
