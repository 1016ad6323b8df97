"""Where a pushed model came from: git sha, branch, CI run URL and author, read from the CI's
environment so that a push from CI records its lineage without any flags.

Precedence (highest first): explicit CLI flags, the `source` in `--metadata`, the CI's variables
(GitHub Actions, GitLab CI, Jenkins), then the local git checkout for sha and branch.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping

SOURCE_FIELDS = ("git_sha", "branch", "ci_run_url", "author")


def source_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """The source fields a known CI exposes; empty when not running in a CI we recognise."""
    if env.get("GITHUB_ACTIONS") == "true" or env.get("GITHUB_SHA"):
        run_url = ""
        if env.get("GITHUB_REPOSITORY") and env.get("GITHUB_RUN_ID"):
            server = env.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
            run_url = f"{server}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
        # On a pull request GITHUB_REF_NAME is "<n>/merge"; GITHUB_HEAD_REF is the branch itself.
        return _present(
            git_sha=env.get("GITHUB_SHA", ""),
            branch=env.get("GITHUB_HEAD_REF") or env.get("GITHUB_REF_NAME", ""),
            ci_run_url=run_url,
            author=env.get("GITHUB_ACTOR", ""),
        )
    if env.get("GITLAB_CI") or env.get("CI_COMMIT_SHA"):
        return _present(
            git_sha=env.get("CI_COMMIT_SHA", ""),
            branch=(
                env.get("CI_COMMIT_BRANCH")
                or env.get("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME")
                or env.get("CI_COMMIT_REF_NAME", "")
            ),
            ci_run_url=env.get("CI_PIPELINE_URL") or env.get("CI_JOB_URL", ""),
            author=env.get("GITLAB_USER_LOGIN") or env.get("GITLAB_USER_EMAIL", ""),
        )
    if env.get("JENKINS_URL"):
        branch = env.get("BRANCH_NAME") or env.get("GIT_BRANCH", "")
        return _present(
            git_sha=env.get("GIT_COMMIT", ""),
            branch=branch.removeprefix("origin/"),
            ci_run_url=env.get("BUILD_URL", ""),
            author=env.get("CHANGE_AUTHOR", ""),
        )
    return {}


def source_from_git(cwd: str | None = None) -> dict[str, str]:
    """sha and branch of the local checkout, for pushes from a laptop; empty outside a repo."""
    sha = _git("rev-parse", "HEAD", cwd=cwd)
    branch = _git("rev-parse", "--abbrev-ref", "HEAD", cwd=cwd)
    return _present(git_sha=sha, branch="" if branch == "HEAD" else branch)


def resolve_source(
    *,
    flags: Mapping[str, str | None],
    from_metadata: Mapping[str, str] | None,
    env: Mapping[str, str],
    use_git: bool = True,
) -> dict[str, str]:
    """Merge the layers; the first that has a field wins, field by field."""
    layers: list[Mapping[str, str | None]] = [flags, from_metadata or {}, source_from_env(env)]
    resolved: dict[str, str] = {}
    for field in SOURCE_FIELDS:
        for layer in layers:
            value = layer.get(field)
            if value:
                resolved[field] = value
                break
    if use_git and not {"git_sha", "branch"} <= resolved.keys():
        for field, value in source_from_git().items():
            resolved.setdefault(field, value)
    # Keep any extra keys the metadata file carried (e.g. "repository").
    for key, value in (from_metadata or {}).items():
        resolved.setdefault(key, value)
    return resolved


def _present(**fields: str) -> dict[str, str]:
    return {k: v for k, v in fields.items() if v}


def _git(*args: str, cwd: str | None) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""
