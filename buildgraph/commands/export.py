"""What is done with a built image: tags, outputs (oci, docker, local, registry), pushes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from buildgraph.cache.assemble import assemble_image
from buildgraph.cache.export import (
    export_docker_archive,
    export_local,
    export_oci,
    output_compression,
    parse_output,
)
from buildgraph.cache.local import LocalStore, StoredImage
from buildgraph.cache.steps import StepRecord
from buildgraph.commands.compile import ClientFactory
from buildgraph.errors import CacheError, InputError, Location
from buildgraph.frontend.buildfile import TargetSpec
from buildgraph.graph.lower import BuildPlan
from buildgraph.image.oci import Descriptor
from buildgraph.registry.reference import Reference, parse_reference
from buildgraph.solver.remote import RemoteSession


@dataclass(frozen=True, slots=True)
class Exported:
    """What a target's export node did."""

    image: Descriptor
    tags: tuple[str, ...]  # the local tags; the pushed references when not tagged locally
    finished: float  # time.monotonic()
    note: str = ""


def export_target(
    spec: TargetSpec,
    plan: BuildPlan,
    record: StepRecord,
    *,
    store: LocalStore,
    client: ClientFactory,
    epoch: int | None,
    push_all: bool,
    remote: RemoteSession | None,
    compression: str = "gzip",
) -> Exported:
    """The work of a target's export node: image, local tags, outputs, pushes."""
    cache = mount_cache(spec, push_all, remote)
    if cache is not None and remote is not None and record.missing_layers(store):
        return _push_mounted(
            spec,
            plan,
            record,
            cache,
            remote,
            store=store,
            client=client,
            epoch=epoch,
            compression=compression,
        )
    if remote is not None:  # a local tag or output needs the files: fetch what only the remote has
        remote.ensure_layers(record)
    if missing := record.missing_layers(store):
        raise CacheError(
            f"target {spec.name}: {len(missing)} layers (first {missing[0].digest}) are in "
            "neither the local store nor a reachable remote cache; run with its remote cache "
            "or --no-cache"
        )
    image = assemble_image(store, plan.target, record, epoch=epoch)
    tags = []
    for tag in spec.tags:
        ref = parse_reference(tag)
        store.tag(ref.familiar, str(ref), image)
        tags.append(ref.familiar)
    for output in spec.outputs:
        export_output(store, image, tuple(tags), output, client, spec.dockerfile, compression)
    if spec.push or push_all:
        from buildgraph.cache.transfer import push  # needs requests: only when pushing

        for tag in spec.tags:
            stored = StoredImage(tag, str(parse_reference(tag)), image)
            push(client(), store, stored, parse_reference(tag), compression=compression)
    return Exported(image, tuple(tags), time.monotonic())


def mount_cache(spec: TargetSpec, push_all: bool, remote: RemoteSession | None) -> Reference | None:
    """The remote cache repository a target's push can mount layers from instead of
    downloading them: when it is only pushed (no local outputs) and only to the cache's
    registry. None when its export needs the files here."""
    if remote is None or remote.source is None or spec.outputs or not spec.tags:
        return None
    cache = remote.source.repository
    if not (spec.push or push_all) or any(
        parse_reference(tag).registry != cache.registry for tag in spec.tags
    ):
        return None
    return cache


def _push_mounted(
    spec: TargetSpec,
    plan: BuildPlan,
    record: StepRecord,
    cache: Reference,
    remote: RemoteSession,
    *,
    store: LocalStore,
    client: ClientFactory,
    epoch: int | None,
    compression: str = "gzip",
) -> Exported:
    """Push an image whose layers are (partly) only in the remote cache: the registry mounts
    them from the cache repository, as the cache holds them (built layers: uncompressed), and
    nothing is downloaded; a layer it will not mount is downloaded and uploaded. A local tag
    must name blobs the store has, so the image is tagged locally only if all ended up here."""
    from buildgraph.cache.transfer import push  # needs requests: only when pushing

    layers = {layer.descriptor.digest: layer for layer in record.layers}

    def fetch(blob: Descriptor) -> None:  # a refused mount: just this layer comes through here
        remote.ensure_layers(StepRecord((layers[blob.digest],), ()))

    image = assemble_image(store, plan.target, record, epoch=epoch)  # config + manifest only
    refs = [parse_reference(tag) for tag in spec.tags]
    for ref in refs:
        stored = StoredImage(ref.familiar, str(ref), image)
        push(
            client(), store, stored, ref, mount_from=(cache,), fetch=fetch, compression=compression
        )
    if not (missing := record.missing_layers(store)):
        for ref in refs:
            store.tag(ref.familiar, str(ref), image)
        return Exported(image, tuple(ref.familiar for ref in refs), time.monotonic())
    layers_word = "layer" if len(missing) == 1 else "layers"
    note = (
        f"pushed without downloading: {len(missing)} {layers_word} mounted from {cache}; "
        "not tagged locally"
    )
    return Exported(image, tuple(str(ref) for ref in refs), time.monotonic(), note)


def export_output(
    store: LocalStore,
    image: Descriptor,
    tags: tuple[str, ...],
    text: str,
    client: ClientFactory,
    dockerfile: Path,
    compression: str = "gzip",
) -> None:
    """`compression`: --compression, for a registry output that names none itself."""
    spec = parse_output(text)
    name = spec.attr("name") or (tags[0] if tags else "")
    stored = StoredImage(name or "image", name or "image", image)
    if spec.type == "oci":
        export_oci(store, stored, Path(spec.dest), name or "latest", output_compression(spec))
    elif spec.type == "docker":
        export_docker_archive(store, stored, Path(spec.dest), [name] if name else [])
    elif spec.type == "local":
        export_local(store, stored, Path(spec.dest))
    elif spec.type in ("registry", "image"):
        from buildgraph.cache.transfer import push

        if not name:
            raise InputError(
                "--output type=registry needs a name= or a -t tag", Location(dockerfile)
            )
        compression = output_compression(spec, compression)
        push(client(), store, stored, parse_reference(name), compression=compression)
