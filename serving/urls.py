from django.urls import path

from serving import views

urlpatterns = [
    path("models/<slug:name>/predict/", views.PredictView.as_view(), name="model-predict"),
    path("models/<slug:name>/traffic/", views.TrafficUploadView.as_view(), name="model-traffic"),
    path(
        "models/<slug:name>/traffic/labels/", views.TrafficLabelsView.as_view(), name="model-traffic-labels"
    ),
]
