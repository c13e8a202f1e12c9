"""Media types of OCI and Docker images, layers and configs."""

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
ALL_MANIFESTS = MANIFESTS + INDEXES

GZIP_LAYERS = (OCI_LAYER_GZIP, DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN)
ZSTD_LAYERS = (OCI_LAYER_ZSTD,)
PLAIN_LAYERS = (OCI_LAYER, "application/vnd.docker.image.rootfs.diff.tar")


def compression_of(media_type: str) -> str:
    """'gzip', 'zstd' or 'none' for a layer media type."""
    if media_type in GZIP_LAYERS or media_type.endswith("+gzip") or media_type.endswith(".gzip"):
        return "gzip"
    if media_type in ZSTD_LAYERS or media_type.endswith("+zstd"):
        return "zstd"
    return "none"
