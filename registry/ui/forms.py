"""Forms of the catalog pages."""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.validators import URLValidator

from lifecycle import webhooks
from registry.models import SlackIdentity, VersionStatus

SLACK_MEMBER_ID = re.compile(r"[UW][A-Z0-9]{2,31}")


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


SORT_CHOICES = [
    ("-version", "Newest version first"),
    ("version", "Oldest version first"),
    ("-created", "Newest push first"),
    ("created", "Oldest push first"),
    ("status", "Status"),
    ("-size", "Largest first"),
    ("size", "Smallest first"),
]


class VersionFilterForm(forms.Form):
    """The status filter and order of a model's versions table; anything unknown is ignored, never a 500."""

    status = forms.ChoiceField(choices=[("", "All statuses"), *VersionStatus.choices], required=False)
    sort = forms.ChoiceField(choices=SORT_CHOICES, required=False)


class VersionSearchForm(forms.Form):
    """The search page: every field optional, combined with AND."""

    q = forms.CharField(
        label="Model",
        max_length=100,
        required=False,
        widget=forms.TextInput(attrs={"placeholder": "part of a model name"}),
    )
    status = forms.ChoiceField(choices=[("", "Any status"), *VersionStatus.choices], required=False)
    tag = forms.CharField(max_length=64, required=False)
    alias = forms.SlugField(
        max_length=64, required=False, widget=forms.TextInput(attrs={"placeholder": "champion"})
    )
    dataset = forms.RegexField(
        regex=r"^[-a-zA-Z0-9_]{1,100}(:[0-9]{1,9})?$",
        max_length=112,
        required=False,
        error_messages={"invalid": "a dataset name, or name:version"},
        widget=forms.TextInput(attrs={"placeholder": "holdout or holdout:3"}),
    )
    git_sha = forms.RegexField(
        label="Git sha",
        regex=r"^[0-9a-fA-F]{4,64}$",
        required=False,
        error_messages={"invalid": "4 to 64 hex digits (a prefix is enough)"},
    )
    created_after = forms.DateField(
        label="Pushed from", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    created_before = forms.DateField(
        label="Pushed before", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    sort = forms.ChoiceField(
        choices=[c for c in SORT_CHOICES if c[0] not in {"-version", "version"}], required=False
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        after, before = data.get("created_after"), data.get("created_before")
        if after and before and after >= before:
            self.add_error("created_before", "must be later than the start date")
        return data


class DecisionForm(forms.Form):
    """The optional comment of an Approve or Reject on the version page."""

    comment = forms.CharField(
        max_length=5000,
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "Optional: what you checked, or why not."}),
    )


class RollbackForm(forms.Form):
    comment = forms.CharField(
        max_length=5000,
        required=False,
        widget=forms.TextInput(
            attrs={"placeholder": "Why (optional)", "autocomplete": "off", "aria-label": "Why roll back"}
        ),
    )


# A ping goes to one hook whatever it subscribes to, so it is not offered as a subscription.
WEBHOOK_EVENT_CHOICES = [(event, event) for event in webhooks.EVENTS if event != "ping"]


class WebhookCreateForm(forms.Form):
    url = forms.URLField(
        label="Payload URL",
        max_length=1000,
        assume_scheme="https",
        validators=[URLValidator(schemes=["http", "https"])],
        widget=forms.URLInput(attrs={"placeholder": "https://ci.example.com/hooks/modelgate"}),
    )
    events = forms.MultipleChoiceField(
        choices=WEBHOOK_EVENT_CHOICES,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None checked: every event.",
    )


class SlackIdentityForm(forms.Form):
    """The Slack member id a user clicks Approve as; empty unlinks it."""

    slack_user_id = forms.CharField(
        label="Slack member ID",
        max_length=32,
        required=False,
        help_text="In Slack: your profile → ⋮ (More) → Copy member ID. It looks like U012AB3CD.",
        widget=forms.TextInput(attrs={"placeholder": "U012AB3CD", "autocomplete": "off"}),
    )

    def __init__(self, *args: Any, user: AbstractBaseUser, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user

    def clean_slack_user_id(self) -> str:
        value = self.cleaned_data["slack_user_id"].strip().upper()
        if value and not SLACK_MEMBER_ID.fullmatch(value):
            raise forms.ValidationError(
                "A Slack member ID starts with U or W followed by letters and digits, e.g. U012AB3CD."
            )
        # Unique: one Slack account speaks for one Modelgate user. Whose it is stays unsaid.
        if value and SlackIdentity.objects.filter(slack_user_id=value).exclude(user=self.user).exists():
            raise forms.ValidationError("This Slack member ID is already linked to another Modelgate user.")
        return value
