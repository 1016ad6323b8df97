from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "registry"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the OpenAPI description of token auth with drf-spectacular.
        import registry.api.schema
        import registry.lookups  # noqa: F401  (``id__any``)
