"""Generate the synthetic monorepos of the monorepo benchmark: services on a shared base target.

`generate` writes a tree every peer can build: base/Dockerfile (FROM busybox) and
services/svcNN/Dockerfile, each a multi-stage build `FROM base` that copies its sources, "compiles"
them with busybox tools and copies the result into a runtime stage. buildgraph reads the tree's
Buildfile.yaml (service targets name the base target with `contexts: {base: "target:base"}`); a
peer's CI script builds base/ with `-t base`, then each service, whose `FROM base` finds that tag.
`generate_wide` writes a graph made only to be planned: TARGETS targets of STEPS steps each.
The data comes from a fixed seed, so two runs write the same bytes.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from workloads import WORDS  # the same made-up source vocabulary

SOURCES_PER_SERVICE = 40
BINARY_MB = 4  # the "linked binary" each service's compile writes

BASE_DOCKERFILE = """\
FROM busybox
ENV APP_ROOT=/opt/app LANG=C.UTF-8
RUN mkdir -p /opt/app/bin /opt/lib \\
 && for i in $(seq 1 200); do echo "shared library $i" > /opt/lib/lib$i.so; done
RUN head -c 2097152 /dev/zero | tr '\\0' 'x' > /opt/lib/runtime.bin \\
 && md5sum /opt/lib/* > /opt/lib.md5
"""

SERVICE_DOCKERFILE = """\
FROM base AS build
WORKDIR /build
COPY src/ ./src/
RUN mkdir -p obj out \\
 && for f in src/*.c; do n=${{f##*/}}; cat "$f" "$f" > "obj/${{n%.c}}.o"; done \\
 && md5sum obj/*.o > out/objects.md5 \\
 && tar -cf out/lib{name}.a obj \\
 && dd if=/dev/urandom of=out/{name} bs=1048576 count={binary_mb} 2>/dev/null \\
 && sha256sum out/* > out/SHA256SUMS
RUN test -s out/SHA256SUMS && wc -l out/objects.md5

FROM base
COPY --from=build /build/out/ /opt/app/bin/
ENV SERVICE={name}
CMD ["/opt/app/bin/{name}"]
"""


@dataclass(frozen=True, slots=True)
class Service:
    name: str  # svcNN: the Buildfile target and the peers' image tag
    context: Path
    dockerfile: Path


@dataclass(frozen=True, slots=True)
class Monorepo:
    root: Path
    buildfile: Path
    base: Service  # built first by the peers' CI script, tagged `base`
    services: tuple[Service, ...]


def generate(root: Path, services: int, *, sources: int = SOURCES_PER_SERVICE) -> Monorepo:
    """Write a monorepo of SERVICES services on one base target under ROOT (made afresh)."""
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(services)
    base = Service("base", root / "base", root / "base" / "Dockerfile")
    _write(base.dockerfile, BASE_DOCKERFILE)
    made = []
    for number in range(services):
        name = f"svc{number:02d}"
        context = root / "services" / name
        dockerfile = context / "Dockerfile"
        _write(dockerfile, SERVICE_DOCKERFILE.format(name=name, binary_mb=BINARY_MB))
        for index in range(sources):
            _write(
                context / "src" / f"mod{index:03d}.c", _source_text(rng, rng.randint(1000, 6000))
            )
        made.append(Service(name, context, dockerfile))
    lines = ["version: 1", "cache: {dir: cache}", "targets:", "  base:", "    context: base"]
    for service in made:
        lines += [
            f"  {service.name}:",
            f"    context: services/{service.name}",
            '    contexts: {base: "target:base"}',
            f'    tags: ["{service.name}"]',
        ]
    buildfile = root / "Buildfile.yaml"
    _write(buildfile, "\n".join(lines) + "\n")
    return Monorepo(root, buildfile, base, tuple(made))


def touch_one(repo: Monorepo, revision: int = 1) -> Path:
    """Change one source file of the first service (a new line at its end); return its path."""
    path = repo.services[0].context / "src" / "mod000.c"
    with path.open("a") as source:
        source.write(f"int revision = {revision};\n")
    return path


def generate_wide(root: Path, targets: int = 1000, steps: int = 10) -> Path:
    """Write TARGETS independent targets of STEPS steps each (FROM, COPY, ENVs, RUNs) and their
    Buildfile.yaml under ROOT; return the Buildfile. Made to be planned, not built."""
    if steps < 3:
        raise ValueError("a wide target needs at least 3 steps: FROM, COPY and one RUN")
    shutil.rmtree(root, ignore_errors=True)
    lines = ["version: 1", "cache: {dir: cache}", "targets:"]
    for number in range(targets):
        name = f"t{number:04d}"
        context = root / "targets" / name
        body = ["FROM busybox", "COPY src/ /src/"]
        for index in range(steps - 2):
            if index % 3 == 2:
                body.append(f"ENV STEP{index}={name}-{index}")
            else:
                body.append(f"RUN echo {name} step {index} > /step{index}.txt")
        _write(context / "Dockerfile", "\n".join(body) + "\n")
        _write(context / "src" / "main.c", f"int main(void) {{ return {number}; }}\n")
        _write(context / "src" / "VERSION", f"{name} 1.0.{number}\n")
        lines += [f"  {name}:", f"    context: targets/{name}"]
    buildfile = root / "Buildfile.yaml"
    _write(buildfile, "\n".join(lines) + "\n")
    return buildfile


def _source_text(rng: random.Random, size: int) -> str:
    """Text that looks like source code (compresses about 3-4x, as real sources do)."""
    lines, length = [], 0
    while length < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))) + ";\n"
        lines.append(line)
        length += len(line)
    return "".join(lines)[:size]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
