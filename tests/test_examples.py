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


def test_dask_cluster_runs_the_executor_image_without_privileges() -> None:
    documents = list(yaml.safe_load_all((EXAMPLES / "kubernetes/dask-cluster.yaml").read_text()))
    kinds = [document["kind"] for document in documents]
    assert kinds == ["Deployment", "Service", "Deployment"]
    scheduler, _, workers = documents
    for deployment in (scheduler, workers):
        pod = deployment["spec"]["template"]["spec"]
        assert "securityContext" not in pod
        (container,) = pod["containers"]
        assert "securityContext" not in container
        assert "buildgraph-executor" in container["image"]
    worker = workers["spec"]["template"]["spec"]["containers"][0]
    assert worker["command"][:2] == ["dask", "worker"]
    env = {variable["name"]: variable["value"] for variable in worker["env"]}
    assert env["BUILDGRAPH_CACHE_DIR"] in [mount["mountPath"] for mount in worker["volumeMounts"]]
    pipeline = yaml.safe_load((EXAMPLES / "gitlab-ci/.gitlab-ci.yml").read_text())
    (script,) = pipeline["build-main-on-cluster"]["script"]
    assert "--executor dask --scheduler" in script and "--cache-to" in script
