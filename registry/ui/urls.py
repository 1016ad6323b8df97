from django.urls import path

from registry.ui import views

urlpatterns = [
    path("", views.model_list, name="model-list"),
]
