"""COPY/ADD on real overlayfs: busybox as the bottom lower, a build context or stage lowers."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildgraph.errors import InputError, StepFailed, UnsafeArchiveError
from buildgraph.frontend.ignore import compile_patterns
from buildgraph.worker.copy import CopyJob, copy_in_overlay
from buildgraph.worker.copy_plan import MULTI_SOURCE_ERROR


@pytest.fixture(autouse=True)
def no_mount_leaks(tmp_path: Path, busybox_rootfs: Path) -> Iterator[None]:
    yield
    for table in ("/proc/mounts", "/proc/self/mountinfo"):
        text = Path(table).read_text()
        assert str(tmp_path) not in text
        assert str(busybox_rootfs) not in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".copy-")]


@pytest.fixture
def upper(tmp_path: Path) -> Path:
    path = tmp_path / "upper"
    path.mkdir()
    return path


@pytest.fixture
def context(tmp_path: Path) -> Path:
    root = tmp_path / "context"
    (root / "src" / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a\n")
    (root / "src" / "one").write_text("1\n")
    (root / "src" / "sub" / "two").write_text("2\n")
    os.chmod(root / "src" / "one", 0o751)
    os.chown(root / "a.txt", 1234, 1234)  # the context's owners never reach the image
    return root


@pytest.fixture
def run(busybox_rootfs: Path, upper: Path, context: Path):
    def run(job: CopyJob, lowers: list[Path] | None = None, **options: object) -> None:
        if "source_lowers" not in options:
            options.setdefault("context", context)
        stack = [busybox_rootfs] if lowers is None else lowers
        copy_in_overlay(job, stack, upper, **options)  # type: ignore[arg-type]

    return run


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def owner(path: Path) -> tuple[int, int]:
    info = os.lstat(path)
    return info.st_uid, info.st_gid


def layer(
    tmp_path: Path, name: str, files: dict[str, str], links: dict[str, str] | None = None
) -> Path:
    root = tmp_path / name
    root.mkdir()
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    for path, target in (links or {}).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / path)
    return root


# --- destinations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dest", "expected"),
    [
        ("/b.txt", "b.txt"),  # a new file path
        ("/etc", "etc/a.txt"),  # an existing dir, no slash
        ("/new/", "new/a.txt"),  # a new dir, made because of the slash
        ("/new/deep/file", "new/deep/file"),  # missing parents are made
    ],
)
def test_file_destinations(run, upper: Path, dest: str, expected: str) -> None:
    run(CopyJob(("a.txt",), dest))
    assert (upper / expected).read_text() == "a\n"
    assert owner(upper / expected) == (0, 0)
    assert stat.S_IMODE(os.stat(upper / expected).st_mode) == 0o644


def test_existing_file_is_replaced(run, upper: Path) -> None:
    run(CopyJob(("a.txt",), "/etc/passwd"))
    assert (upper / "etc" / "passwd").read_text() == "a\n"


def test_dir_contents_go_into_dest(run, upper: Path) -> None:
    run(CopyJob(("src",), "/app"))
    assert tree(upper) == ["app", "app/one", "app/sub", "app/sub/two"]
    assert stat.S_IMODE(os.stat(upper / "app" / "one").st_mode) == 0o751
    assert stat.S_IMODE(os.stat(upper / "app").st_mode) == 0o755


@pytest.mark.parametrize("dest", ["/etc", "/etc/.", "/etc/"])
def test_several_sources_into_an_existing_dir_need_no_slash(run, upper: Path, dest: str) -> None:
    run(CopyJob(("a.txt", "src"), dest))
    assert tree(upper) == ["etc", "etc/a.txt", "etc/one", "etc/sub", "etc/sub/two"]


def test_wildcards_that_match_nothing_copy_nothing(run, upper: Path, busybox_rootfs) -> None:
    """BuildKit's AllowEmptyWildcard: no error, and not even the destination dir is made."""
    job = CopyJob(("/etc/nothing*", "/none?"), "/x/", patterns_from_stage=True)
    run(job, source_lowers=[busybox_rootfs])
    assert tree(upper) == []
    run(
        CopyJob(("/etc/nothing*", "/etc/passwd"), "/x/", patterns_from_stage=True),
        source_lowers=[busybox_rootfs],
    )
    assert tree(upper) == ["x", "x/passwd"]


@pytest.mark.parametrize(
    ("source", "dest", "lands"),
    [
        ("/lib/libz.so.1", "/out/", "out/libz.so.1"),  # a relative link, named as written
        ("/bin/sh-link", "/out/", "out/sh-link"),  # an absolute link
        ("/lib/libz.so", "/out/", "out/libz.so"),  # a chain of links
        ("/lib/libz.so.1", "/out/renamed", "out/renamed"),
        ("/lib/libz.so*", "/out/", "out/libz.so.1"),  # a wildcard match that is a link
    ],
)
def test_copy_from_stage_of_a_symlink_is_named_after_its_path(
    run, tmp_path: Path, upper: Path, source: str, dest: str, lands: str
) -> None:
    stage = layer(
        tmp_path,
        "stage",
        {"lib/libz.so.1.2.13": "zlib", "bin/busybox": "bb"},
        {
            "lib/libz.so.1": "libz.so.1.2.13",
            "lib/libz.so": "libz.so.1",
            "bin/sh-link": "/bin/busybox",
        },
    )
    run(CopyJob((source,), dest, patterns_from_stage=True), source_lowers=[stage])
    assert not (upper / lands).is_symlink()
    assert (upper / lands).read_text() in ("zlib", "bb")
    assert (upper / lands).read_text() == ("bb" if "sh" in source else "zlib")


@pytest.mark.parametrize(
    ("links", "dest", "lands"),
    [
        ({"app": "/var/lib/app"}, "/app/", "var/lib/app/a.txt"),  # dangling, absolute
        ({"app": "var/lib/app"}, "/app/", "var/lib/app/a.txt"),  # dangling, relative
        ({"app": "../../var/lib/app"}, "/app/", "var/lib/app/a.txt"),  # ".." stops at the root
        ({"app": "/a2", "a2": "/var/lib/app"}, "/app/x/", "var/lib/app/x/a.txt"),  # chained
        ({"app": "/etc"}, "/app/", "etc/a.txt"),  # to an existing dir
    ],
)
def test_dest_dirs_through_symlinks(
    run, tmp_path: Path, busybox_rootfs: Path, upper: Path, links, dest: str, lands: str
) -> None:
    linked = layer(tmp_path, "linked", {}, links)
    run(CopyJob(("a.txt",), dest), lowers=[linked, busybox_rootfs])
    assert (upper / lands).read_text() == "a\n"
    assert not (upper / "app").exists() or (upper / "app").is_symlink()


def test_workdir_owner_unknown_to_passwd_is_root(run, upper: Path) -> None:
    run(CopyJob((), "/w/", chown="ghost", unknown_owner_is_root=True))
    run(CopyJob((), "/u/", chown="app", unknown_owner_is_root=True))
    run(CopyJob((), "/n/", chown="7", unknown_owner_is_root=True))
    assert [owner(upper / name) for name in ("w", "u", "n")] == [(0, 0), (1000, 1000), (7, 7)]


def test_several_sources_into_dir(run, upper: Path) -> None:
    run(CopyJob(("a.txt", "src"), "/app/"))
    assert tree(upper) == ["app", "app/a.txt", "app/one", "app/sub", "app/sub/two"]


def test_from_scratch(run, upper: Path) -> None:
    run(CopyJob(("src", "a.txt"), "/"), lowers=[])
    assert tree(upper) == ["a.txt", "one", "sub", "sub/two"]


def test_symlinked_dest_dir_resolves_in_the_image(run, upper: Path, tmp_path: Path) -> None:
    image = layer(tmp_path, "image", {"lib/.keep": ""}, {"usr/lib": "/lib", "up": "../../.."})
    run(CopyJob(("a.txt",), "/usr/lib/"), lowers=[image])
    run(CopyJob(("src",), "/up/lib/src"), lowers=[image])
    expected = ["lib", "lib/a.txt", "lib/src", "lib/src/one", "lib/src/sub", "lib/src/sub/two"]
    assert tree(upper) == expected


def test_symlinks_to_the_root_stay_in_the_image(run, upper: Path, tmp_path: Path) -> None:
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("host\n")
    image = layer(tmp_path, "image", {}, {"escape": "/", "rel": "../../../../.."})
    run(CopyJob(("a.txt",), f"/escape{sentinel}"), lowers=[image])
    run(CopyJob(("a.txt",), f"/rel{tmp_path}/other"), lowers=[image])
    assert sentinel.read_text() == "host\n"
    assert not (tmp_path / "other").exists()
    inside = upper / str(sentinel).lstrip("/")
    assert inside.read_text() == "a\n"
    assert (inside.parent / "other").read_text() == "a\n"


# --- context -------------------------------------------------------------------------------


def test_context_symlinks(run, upper: Path, context: Path) -> None:
    os.symlink("a.txt", context / "top")
    os.symlink("../a.txt", context / "src" / "inner")
    run(CopyJob(("top", "src"), "/x/"))
    assert not (upper / "x" / "top").is_symlink()  # a top-level source is followed
    assert (upper / "x" / "top").read_text() == "a\n"
    assert os.readlink(upper / "x" / "inner") == "../a.txt"  # below it, links stay links


def test_dockerignore_inside_a_copied_dir(run, upper: Path, context: Path) -> None:
    (context / "src" / "x.log").write_text("")
    (context / "src" / "keep.log").write_text("")
    (context / "src" / "cache").mkdir()
    (context / "src" / "cache" / "junk").write_text("")
    (context / "src" / "cache" / "keep").write_text("")
    ignore = compile_patterns(["src/*.log", "!src/keep.log", "src/sub", "src/cache", "!**/keep"])
    run(CopyJob(("src",), "/app"), ignore=ignore)
    assert tree(upper) == ["app", "app/cache", "app/cache/keep", "app/keep.log", "app/one"]


# --- owners and modes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chown", "ids"),
    [("app", (1000, 1000)), ("123", (123, 123)), ("app:daemon", (1000, 1)), ("7:8", (7, 8))],
)
def test_chown(run, upper: Path, chown: str, ids: tuple[int, int]) -> None:
    run(CopyJob(("src",), "/made/app", chown=chown))
    for path in ["made", "made/app", "made/app/one", "made/app/sub", "made/app/sub/two"]:
        assert owner(upper / path) == ids, path


def test_chmod_applies_to_copied_files_and_dirs(run, upper: Path) -> None:
    run(CopyJob(("src", "a.txt"), "/app/", chmod="0640"))
    modes = {p: stat.S_IMODE(os.stat(upper / "app" / p).st_mode) for p in ["one", "sub", "a.txt"]}
    assert modes == {"one": 0o640, "sub": 0o640, "a.txt": 0o640}
    assert stat.S_IMODE(os.stat(upper / "app").st_mode) == 0o755  # made by COPY, not copied


# --- other stages --------------------------------------------------------------------------


def test_stage_keeps_owners_and_hardlinks(run, upper: Path, tmp_path: Path) -> None:
    stage = layer(tmp_path, "stage", {"out/a": "x", "out/sub/c": "c"})
    os.link(stage / "out" / "a", stage / "out" / "sub" / "b")
    os.chown(stage / "out" / "a", 55, 66)
    run(CopyJob(("/out",), "/dst"), source_lowers=[stage])
    assert os.stat(upper / "dst" / "a").st_ino == os.stat(upper / "dst" / "sub" / "b").st_ino
    assert owner(upper / "dst" / "sub" / "b") == (55, 66)
    assert not os.path.samefile(upper / "dst" / "a", stage / "out" / "a")


def test_stage_whiteouts_are_not_copied(run, upper: Path, tmp_path: Path) -> None:
    bottom = layer(tmp_path, "bottom", {"out/gone": "", "out/kept": ""})
    top = layer(tmp_path, "top", {"out/new": ""})
    os.mknod(top / "out" / "gone", stat.S_IFCHR, os.makedev(0, 0))
    run(CopyJob(("out",), "/dst"), source_lowers=[top, bottom])
    assert tree(upper) == ["dst", "dst/kept", "dst/new"]
    run(CopyJob(("/",), "/only-top"), source_lowers=[top])
    assert tree(upper / "only-top") == ["out", "out/new"]


def test_stage_patterns(run, upper: Path, busybox_rootfs: Path) -> None:
    job = CopyJob(("/etc/pass*", "/bin/busy*"), "/x/", patterns_from_stage=True)
    run(job, source_lowers=[busybox_rootfs])
    assert tree(upper) == ["x", "x/busybox", "x/passwd"]


# --- ADD and heredocs ----------------------------------------------------------------------


def make_tar(path: Path, mode: str, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def entry(
    name: str, kind: bytes = tarfile.REGTYPE, link: str = "", uid: int = 0
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.uid, info.gid, info.mode = kind, link, uid, uid, 0o600
    return info


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:xz", "w:bz2"])
def test_add_extracts_archives(run, upper: Path, context: Path, mode: str) -> None:
    members = [(entry("d", tarfile.DIRTYPE), b""), (entry("d/f", uid=42), b"data")]
    make_tar(context / "pack.bin", mode, members)
    run(CopyJob(("pack.bin", "a.txt"), "/opt/", add=True))
    assert tree(upper) == ["opt", "opt/a.txt", "opt/d", "opt/d/f"]
    assert owner(upper / "opt" / "d" / "f") == (42, 42)
    assert stat.S_IMODE(os.stat(upper / "opt" / "d" / "f").st_mode) == 0o600


def test_copy_does_not_extract(run, upper: Path, context: Path) -> None:
    make_tar(context / "pack.tar", "w", [(entry("f"), b"x")])
    run(CopyJob(("pack.tar",), "/opt/"))
    assert tree(upper) == ["opt", "opt/pack.tar"]


@pytest.mark.parametrize(
    "members",
    [
        [(entry("../escaped"), b"x")],
        [(entry("up", tarfile.SYMTYPE, "../.."), b""), (entry("up/escaped"), b"x")],
        [
            (entry("d", tarfile.DIRTYPE), b""),
            (entry("d/up", tarfile.SYMTYPE, "/.."), b""),  # "/" is the destination: ".." leaves
            (entry("d/up/escaped"), b"x"),
        ],
    ],
)
def test_add_refuses_malicious_archives(run, upper: Path, context: Path, members) -> None:
    make_tar(context / "evil.tar", "w", members)
    with pytest.raises(UnsafeArchiveError):
        run(CopyJob(("evil.tar",), "/opt/x/", add=True))
    assert not [p for p in upper.rglob("escaped")]
    assert not Path("/escaped").exists()


@pytest.mark.parametrize(
    ("link", "lands"),
    [
        ("sub", "opt/x/sub/f"),  # relative, made by the tar
        ("/sub", "opt/x/sub/f"),  # absolute: from the destination, as BuildKit's chroot does
        ("d/../sub", "opt/x/sub/f"),  # ".." that stays inside
        ("chain", "opt/x/sub/f"),  # a link to a link
    ],
)
def test_add_follows_links_inside_its_destination(
    run, upper: Path, context: Path, link: str, lands: str
) -> None:
    members = [
        (entry("sub", tarfile.DIRTYPE), b""),
        (entry("d", tarfile.DIRTYPE), b""),
        (entry("chain", tarfile.SYMTYPE, "sub"), b""),
        (entry("via", tarfile.SYMTYPE, link), b""),
        (entry("via/f"), b"x"),
    ]
    make_tar(context / "linked.tar", "w", members)
    run(CopyJob(("linked.tar",), "/opt/x/", add=True))
    assert (upper / lands).read_bytes() == b"x"
    assert (upper / "opt/x/via").is_symlink()


@pytest.mark.parametrize(("dest", "path"), [("/etc/motd", "etc/motd"), ("/etc/", "etc/EOF")])
def test_heredoc_file(run, upper: Path, dest: str, path: str) -> None:
    run(CopyJob((), dest, inline=(("EOF", "hello\n"),), chown="app"))
    assert (upper / path).read_text() == "hello\n"
    assert stat.S_IMODE(os.stat(upper / path).st_mode) == 0o644
    assert owner(upper / path) == (1000, 1000)


# --- errors --------------------------------------------------------------------------------


ERRORS = [
    (CopyJob(("a.txt", "src"), "/app"), {}, InputError, MULTI_SOURCE_ERROR),
    (CopyJob(("a.txt",), "/app", inline=(("x", ""),)), {}, InputError, MULTI_SOURCE_ERROR),
    (CopyJob(("a.txt",), "/x", chmod="8"), {}, InputError, "invalid chmod parameter: '8'"),
    (CopyJob(("a.txt",), "/x", chmod="17777"), {}, InputError, "invalid chmod"),
    (CopyJob(("a.txt",), "/x", chown="ghost"), {}, StepFailed, "unable to find user ghost"),
    (CopyJob(("a.txt",), "/x", chown="app:ghosts"), {}, StepFailed, "unable to find group"),
    (CopyJob(("src",), "/etc/passwd"), {}, StepFailed, "cannot copy to non-directory"),
    (CopyJob(("a.txt",), "/etc/passwd/x"), {}, StepFailed, "not a directory"),
    (CopyJob(("missing",), "/x"), {}, InputError, "not found in the build context"),
    (CopyJob(("/nope",), "/x"), {"stage": True}, InputError, "not found in the --from stage"),
    (
        CopyJob(("/etc/*",), "/x", patterns_from_stage=True),
        {"stage": True},
        InputError,
        MULTI_SOURCE_ERROR,
    ),
]


@pytest.mark.parametrize(("job", "options", "error", "message"), ERRORS)
def test_errors(run, busybox_rootfs: Path, job, options, error, message) -> None:
    extra = {"source_lowers": [busybox_rootfs]} if options.get("stage") else {}
    with pytest.raises(error) as caught:
        run(job, **extra)
    assert message in str(caught.value)


def test_file_over_image_dir_is_an_error(run, context: Path) -> None:
    (context / "tree").mkdir()
    (context / "tree" / "bin").write_text("")
    with pytest.raises(StepFailed, match="cannot replace to directory /bin with file"):
        run(CopyJob(("tree",), "/"))
