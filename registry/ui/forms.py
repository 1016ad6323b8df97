"""Forms of the catalog pages."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from registry.models import VersionStatus


class TokenCreateForm(forms.Form):
    name = forms.CharField(
        max_length=100,
        help_text="What it is for, e.g. the CI job that uses it.",
        widget=forms.TextInput(attrs={"placeholder": "ci-pipeline", "autocomplete": "off"}),
    )
    days = forms.IntegerField(min_value=1, max_value=3650, required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Empty means the server's TOKEN_TTL_DAYS (0 there: tokens never expire); say which it is.
        default = settings.TOKEN_TTL_DAYS
        days = self.fields["days"]
        days.widget.attrs["placeholder"] = str(default) if default else "never"
        days.help_text = (
            f"Days until it expires. Empty: {default} days."
            if default
            else "Days until it expires. Empty: never."
        )


class VersionFilterForm(forms.Form):
    """The status filter of a model's versions table; an unknown status is ignored, never a 500."""

    status = forms.ChoiceField(choices=[("", "All statuses"), *VersionStatus.choices], required=False)
