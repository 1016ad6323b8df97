import gc
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

# Import every view module now (the URL resolver does), then move all those long-lived objects out of
# the garbage collector's sight: otherwise each full collection walks them again, a ~120 ms pause on
# about one request in seventy (bench/catalog_scale.py: p99 of the model page 190 -> 107 ms).
from django.urls import get_resolver  # noqa: E402

get_resolver().url_patterns  # noqa: B018
gc.collect()
gc.freeze()
