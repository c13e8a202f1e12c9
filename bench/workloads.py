"""Generate the engine benchmark's five Dockerfiles and their build contexts.

Every Dockerfile starts FROM busybox and needs no network. The data is made from a fixed seed, so
two runs build the same bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

WORDS = (
    "int",
    "char",
    "return",
    "static",
    "const",
    "struct",
    "void",
    "include",
    "define",
    "if",
    "else",
    "while",
    "for",
    "break",
    "case",
    "switch",
    "unsigned",
    "long",
    "size_t",
    "buffer",
    "length",
    "index",
    "value",
    "error",
    "result",
    "parse",
    "node",
    "tree",
    "graph",
    "cache",
    "layer",
    "digest",
    "image",
    "stage",
    "build",
    "copy",
    "run",
)


@dataclass(frozen=True, slots=True)
class Workload:
    number: int  # 1-based, as `--workloads` names it
    name: str
    context: Path
    dockerfile: Path
    about: str  # one line for the table's legend


def make_workloads(root: Path, numbers: tuple[int, ...] = (1, 2, 3, 4, 5)) -> list[Workload]:
    """Write the chosen workloads under ROOT (one directory each) and describe them."""
    makers = {1: _compile, 2: _copy_10k, 3: _write_200mb, 4: _many_steps, 5: _fan_in}
    unknown = sorted(set(numbers) - set(makers))
    if unknown:
        raise ValueError(f"no workload numbered {unknown}; choose from 1-5")
    workloads = []
    for number in numbers:
        name, about, dockerfile, files = makers[number](random.Random(number))
        context = root / f"{number}-{name}"
        context.mkdir(parents=True)
        for relative, data in files.items():
            path = context / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (context / "Dockerfile").write_text(dockerfile)
        workloads.append(Workload(number, name, context, context / "Dockerfile", about))
    return workloads


def _source_text(rng: random.Random, size: int) -> bytes:
    """Text that looks like source code: compresses about 3-4x, like real sources."""
    lines, length = [], 0
    while length < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))) + ";\n"
        lines.append(line)
        length += len(line)
    return "".join(lines).encode()[:size]


def _compile(rng: random.Random) -> tuple[str, str, str, dict[str, bytes]]:
    files = {
        f"src/mod{index:03d}.c": _source_text(rng, rng.randint(1000, 8000)) for index in range(300)
    }
    files["src/Makefile"] = b"all:\n\t@echo pretend\n"
    dockerfile = """\
FROM busybox AS builder
WORKDIR /src
COPY src/ /src/
RUN mkdir -p /out/obj /out/bin \\
 && for f in /src/*.c; do n=${f##*/}; cat "$f" "$f" > "/out/obj/${n%.c}.o"; done \\
 && sha256sum /out/obj/*.o > /out/bin/checksums \\
 && tar -cf /out/bin/libapp.a -C /out/obj . \\
 && head -c 20971520 /dev/urandom > /out/bin/app && chmod 755 /out/bin/app

FROM busybox
COPY --from=builder /out/bin/ /usr/local/bin/
RUN ls -l /usr/local/bin && test -s /usr/local/bin/checksums
CMD ["/usr/local/bin/app"]
"""
    about = "multi-stage: 300 sources -> objects + 20 MB binary, final stage COPY --from"
    return "compile", about, dockerfile, files


def _copy_10k(rng: random.Random) -> tuple[str, str, str, dict[str, bytes]]:
    files = {
        f"tree/pkg{directory:02d}/file{index:03d}.txt": _source_text(rng, rng.randint(100, 3000))
        for directory in range(100)
        for index in range(100)
    }
    dockerfile = """\
FROM busybox
COPY tree/ /app/
RUN find /app -type f | wc -l > /app.count && test "$(cat /app.count)" -eq 10000
"""
    about = "COPY of 10,000 small files (100 dirs, ~15 MB) then a RUN that counts them"
    return "copy-10k", about, dockerfile, files


def _write_200mb(rng: random.Random) -> tuple[str, str, str, dict[str, bytes]]:
    # Random bytes, not zeros: zeros compress ~1000:1 and would make any engine that gzips its
    # layers look far faster than it is on real build outputs (binaries, packed assets), which
    # cost about as much to compress and hash as random data does.
    dockerfile = """\
FROM busybox
RUN mkdir /data && for i in 1 2 3 4; do head -c 52428800 /dev/urandom > /data/part$i.bin; done \\
 && ls -l /data
"""
    about = "one RUN that writes 200 MB of random data (4 x 50 MB files)"
    return "write-200mb", about, dockerfile, {}


def _many_steps(rng: random.Random) -> tuple[str, str, str, dict[str, bytes]]:
    files = {f"config/app{index}.conf": _source_text(rng, 400) for index in range(5)}
    files |= {
        f"bin/{name}": b"#!/bin/sh\necho " + name.encode() + b' "$@"\n'
        for name in ("start", "migrate", "healthcheck")
    }
    files |= {f"static/asset{index:03d}.css": _source_text(rng, 1500) for index in range(200)}
    dockerfile = """\
FROM busybox
ARG VERSION=1.2.3
ENV APP_HOME=/opt/app LANG=C.UTF-8
LABEL org.opencontainers.image.title="many-steps" org.opencontainers.image.version="${VERSION}"
WORKDIR ${APP_HOME}
COPY config/ ./config/
RUN mkdir -p data logs && echo "$VERSION" > VERSION
ENV PATH=${APP_HOME}/bin:$PATH
COPY bin/ ./bin/
RUN chmod 755 bin/* && ls -l bin
RUN for i in $(seq 1 200); do echo "row $i" >> data/table.txt; done
COPY static/ ./static/
RUN find static -type f | wc -l > static.count
WORKDIR ${APP_HOME}/data
RUN sha256sum table.txt > table.sha256
ENV MODE=production
RUN echo "mode=$MODE" > ../mode.conf
EXPOSE 8080
USER app
RUN id > /tmp/whoami
USER root
RUN cat /tmp/whoami
VOLUME /opt/app/logs
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/app/bin/start"]
CMD ["--port", "8080"]
"""
    about = "25 instructions: ARG/ENV/LABEL/WORKDIR/COPY/RUN/USER/EXPOSE/VOLUME/CMD mix"
    return "many-steps", about, dockerfile, files


def _fan_in(rng: random.Random) -> tuple[str, str, str, dict[str, bytes]]:
    files = {
        f"assets/page{index:04d}.html": _source_text(rng, rng.randint(2000, 8000))
        for index in range(1000)
    }
    dockerfile = """\
FROM busybox AS assets
WORKDIR /assets
COPY assets/ ./src/
RUN mkdir dist && for f in src/*; do gzip -c "$f" > "dist/${f##*/}.gz"; done

FROM busybox AS data
RUN mkdir /data && head -c 52428800 /dev/urandom > /data/model.bin \\
 && sha256sum /data/model.bin > /data/model.sha256

FROM busybox
COPY --from=assets /assets/dist/ /srv/assets/
COPY --from=data /data/ /srv/data/
RUN ls -R /srv | wc -l
"""
    about = "two independent builders (1000 gzipped pages; 50 MB data) feeding one final stage"
    return "fan-in", about, dockerfile, files
