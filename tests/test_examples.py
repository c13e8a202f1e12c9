"""examples/: they parse, ask for no privilege, and use the executor image as documented (the
slow tests/test_unprivileged.py runs their jobs in an unprivileged container)."""

from __future__ import annotations

from pathlib import Path

import yaml

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_gitlab_jobs_run_in_the_executor_image_on_any_runner() -> None:
    pipeline = yaml.safe_load((EXAMPLES / "gitlab-ci/.gitlab-ci.yml").read_text())
    assert pipeline["default"]["image"]["entrypoint"] == [""]
    jobs = {
        name: job for name, job in pipeline.items() if isinstance(job, dict) and "script" in job
    }
    assert {"build-affected", "build-main", "release", "release-dockerfile", "warm-cache"} <= set(
        jobs
    )
    for job in [pipeline["default"], *jobs.values()]:
        assert "tags" not in job  # no runner tagged `privileged`: any runner takes them
    assert all("image" not in job for job in jobs.values())  # the default: the executor image
    (kaniko,) = jobs["release-dockerfile"]["script"]
    assert kaniko.split() == [
        "/kaniko/executor",
        *("--context", '"$CI_PROJECT_DIR"', "--dockerfile", '"$CI_PROJECT_DIR/Dockerfile"'),
        *("--destination", '"$CI_REGISTRY_IMAGE:$CI_COMMIT_TAG"'),
        *("--destination", '"$CI_REGISTRY_IMAGE:latest"'),
    ]


def test_kubernetes_job_has_the_default_security_context() -> None:
    claim, job = yaml.safe_load_all((EXAMPLES / "kubernetes/buildgraph-job.yaml").read_text())
    assert claim["kind"] == "PersistentVolumeClaim" and job["kind"] == "Job"
    pod = job["spec"]["template"]["spec"]
    assert "securityContext" not in pod
    for container in pod["containers"] + pod["initContainers"]:
        assert "securityContext" not in container
    assert "buildgraph-executor" in pod["containers"][0]["image"]
