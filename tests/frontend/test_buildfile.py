"""Buildfile.yaml: loading, vars, includes, overrides, validation with lines, target selection."""

from __future__ import annotations

import dataclasses
import random
import re
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildgraph.errors import InputError, Location
from buildgraph.frontend.buildfile import (
    CacheSpec,
    ContextRef,
    Project,
    load_project,
    select_targets,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "buildfile"
MONOREPO = DATA / "monorepo"

# (fixture tree, file in it, line, message fragment)
CASES = [
    ("unknown-key", "Buildfile.yaml", 5, "unknown key 'depend_on' (did you mean 'depends_on'?)"),
    ("unknown-top-key", "Buildfile.yaml", 2, "unknown key 'taregts' (did you mean 'targets'?)"),
    ("unknown-cache-key", "Buildfile.yaml", 4, "(did you mean 'remote'?)"),
    ("wrong-type-list", "Buildfile.yaml", 4, "targets.api.tags: expected a list, got a string"),
    ("wrong-type-bool", "Buildfile.yaml", 4, "push: expected true or false, got a string ('yes')"),
    ("wrong-type-target", "Buildfile.yaml", 3, "targets: expected a mapping, got a list"),
    ("wrong-type-arg", "Buildfile.yaml", 5, "args.PY: expected a string, number or boolean"),
    ("unknown-dependency", "Buildfile.yaml", 6, "unknown target 'bsae' (did you mean 'base'?)"),
    ("unknown-context-target", "Buildfile.yaml", 6, "unknown target 'bsae' (did you mean"),
    ("unknown-group-member", "Buildfile.yaml", 3, "unknown target or group 'wbe'"),
    ("include-duplicate", "services/api/Buildfile.yaml", 4, "'api' is defined twice: at "),
    ("missing-context", "Buildfile.yaml", 5, "services/nope does not exist"),
    ("missing-dockerfile", "Buildfile.yaml", 4, "Dockerfile.dev does not exist"),
    ("missing-default-dockerfile", "Buildfile.yaml", 3, "services/api/Dockerfile does not"),
    ("missing-context-dir", "Buildfile.yaml", 5, "context directory"),
    ("bad-cycle", "Buildfile.yaml", 7, "dependency cycle: a -> b -> c -> a"),
    ("bad-cycle-context", "Buildfile.yaml", 3, "dependency cycle: app -> app"),
    ("bad-version", "Buildfile.yaml", 2, "expected 'version: 1'"),
    ("missing-version", "Buildfile.yaml", 1, "missing 'version: 1'"),
    ("empty-file", "Buildfile.yaml", 1, "empty Buildfile"),
    ("unknown-var", "Buildfile.yaml", 6, "unknown var ${REGSTRY} (did you mean 'REGISTRY'?)"),
    ("lone-dollar", "Buildfile.yaml", 5, "write ${NAME} for a var or $$ for a literal '$'"),
    ("var-cycle", "Buildfile.yaml", 3, "cycle: A -> B -> A"),
    ("var-conflict", "b.yaml", 3, "var 'TAG' is declared with another default at "),
    ("include-loop", "sub/Buildfile.yaml", 3, "include loop: "),
    ("include-nomatch", "Buildfile.yaml", 4, "include 'servcies/*/Buildfile.yaml' matches no file"),
    ("include-root-only", "sub.yaml", 3, "'cache' can only be set in the root Buildfile"),
    ("include-missing-context", "services/api/Buildfile.yaml", 4, "services/api/api does not"),
    ("bad-yaml", "Buildfile.yaml", 5, "invalid YAML"),
    ("duplicate-key", "Buildfile.yaml", 5, "duplicate key 'api' (first at line 3)"),
    ("bad-name", "Buildfile.yaml", 3, "invalid target name 'my.app'"),
    ("group-cycle", "Buildfile.yaml", 3, "group cycle: all -> backend -> all"),
    ("group-target-clash", "Buildfile.yaml", 3, "group 'api' has the name of a target"),
    ("bad-cache-mode", "Buildfile.yaml", 3, "cache.mode: expected 'max' or 'min'"),
    ("bad-tag", "Buildfile.yaml", 6, "repository name must be lowercase"),
    ("bad-platform", "Buildfile.yaml", 4, "invalid platform 'amd64'"),
    ("bad-context-scheme", "Buildfile.yaml", 5, "expected 'target:NAME', 'docker-image://REF'"),
    ("bad-secret", "Buildfile.yaml", 5, "expected 'id=NAME,src=PATH'"),
]


@pytest.mark.parametrize(("case", "file", "line", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_buildfile_names_file_and_line(case: str, file: str, line: int, fragment: str) -> None:
    with pytest.raises(InputError) as caught:
        load_project(DATA / case / "Buildfile.yaml")
    assert caught.value.where == Location(DATA / case / file, line)
    assert fragment in caught.value.args[0]
    assert caught.value.exit_code == 2


def test_every_fixture_tree_has_a_case() -> None:
    trees = {path.name for path in DATA.iterdir() if path.is_dir()} - {"monorepo"}
    assert trees == {case for case, *_ in CASES}


def test_duplicate_target_names_both_places() -> None:
    with pytest.raises(InputError) as caught:
        load_project(DATA / "include-duplicate" / "Buildfile.yaml")
    assert f"{DATA / 'include-duplicate' / 'Buildfile.yaml'}:4" in str(caught.value)
    assert f"{DATA / 'include-duplicate' / 'services/api/Buildfile.yaml'}:4" in str(caught.value)


def test_monorepo_loads_with_includes_relative_to_their_file() -> None:
    project = load_project(MONOREPO / "Buildfile.yaml")
    assert project.path == MONOREPO / "Buildfile.yaml"
    assert project.files == (
        MONOREPO / "Buildfile.yaml",
        MONOREPO / "services/api/Buildfile.yaml",
        MONOREPO / "services/web/Buildfile.yaml",
    )
    assert project.vars == (("PY", "3.10"), ("REGISTRY", "localhost:5000/acme"), ("TAG", "dev"))
    assert project.cache == CacheSpec(MONOREPO / "cache", "localhost:5000/acme/cache", "min")
    assert project.insecure_registries == ("localhost:5000",)
    assert project.groups == (
        ("default", ("services",)),
        ("everything", ("base", "services")),
        ("services", ("api", "web")),
    )
    api = project.target("api")
    assert api.context == MONOREPO / "services/api"
    assert api.dockerfile == MONOREPO / "services/api/Dockerfile"
    assert api.target == "runtime"
    assert api.args == (("DEBUG", "false"), ("PY", "3.10"), ("WORKERS", "4"))
    assert api.contexts == (
        ("base", ContextRef("target", "base")),
        ("busybox", ContextRef("image", "busybox:1.36")),
        ("proto", ContextRef("dir", str(MONOREPO / "shared/proto"))),
    )
    assert api.depends_on == ("base",)  # implied by the `target:` context
    assert api.tags == ("localhost:5000/acme/api:dev",)
    assert api.secrets == (("npmrc", str(MONOREPO / "secrets/npmrc")),)
    assert api.where == Location(MONOREPO / "services/api/Buildfile.yaml", 5)
    web = project.target("web")
    assert web.dockerfile == MONOREPO / "services/web/Dockerfile.web"
    assert web.depends_on == ("api", "base")
    assert web.tags == ("localhost:5000/acme/web:dev", "localhost:5000/acme/web:latest")
    assert (web.push, web.outputs, web.platform) == (
        True,
        ("type=docker,dest=web.tar",),
        "linux/arm64/v8",
    )
    assert web.secrets == (("token", str(MONOREPO / "services/web/token.txt")),)


def test_defaults(tmp_path: Path) -> None:
    write(tmp_path, "version: 1\ntargets:\n  app:\n")
    project = load_project(tmp_path / "Buildfile.yaml")
    assert project.cache == CacheSpec(tmp_path / "cache", None, "max")
    assert (project.vars, project.groups, project.insecure_registries) == ((), (), ())
    app = project.target("app")
    assert (app.context, app.dockerfile) == (tmp_path, tmp_path / "Dockerfile")
    assert (app.target, app.platform, app.push) == (None, None, False)
    assert app.args == app.contexts == app.secrets == ()
    assert app.depends_on == app.tags == app.outputs == ()
    assert app.where == Location(tmp_path / "Buildfile.yaml", 3)
    assert select_targets(project, []) == ("app",)


def test_relative_root_path_is_made_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(MONOREPO)
    assert load_project(Path("Buildfile.yaml")).path == MONOREPO / "Buildfile.yaml"


def test_vars_precedence_set_over_env_over_default() -> None:
    path = MONOREPO / "Buildfile.yaml"
    env = {"TAG": "from-env", "REGISTRY": "env.io/acme", "UNDECLARED": "x"}
    project = load_project(path, env=env, overrides=["vars.TAG=from-set"])
    assert dict(project.vars) == {"PY": "3.10", "REGISTRY": "env.io/acme", "TAG": "from-set"}
    assert project.target("base").tags == ("env.io/acme/base:from-set",)
    assert project.cache.remote == "env.io/acme/cache"


def test_var_defaults_expand_other_vars_and_dollar_dollar(tmp_path: Path) -> None:
    write(
        tmp_path,
        """\
        version: 1
        vars: {HOST: "r.io", REPO: "${HOST}/acme", PRICE: "$$5"}
        targets:
          app: {tags: ["${REPO}/app"], args: {COST: "${PRICE}$$"}}
    """,
    )
    project = load_project(tmp_path / "Buildfile.yaml")
    assert project.target("app").tags == ("r.io/acme/app",)
    assert project.target("app").args == (("COST", "$5$"),)
    project = load_project(tmp_path / "Buildfile.yaml", env={"PRICE": "${HOST}"})
    assert project.target("app").args == (("COST", "${HOST}$"),)  # env values are literal


def test_unknown_set_var_is_an_error() -> None:
    with pytest.raises(InputError) as caught:
        load_project(MONOREPO / "Buildfile.yaml", overrides=["vars.TGA=x"])
    assert caught.value.where == Location("--set vars.TGA=x")
    assert "unknown var 'TGA' (did you mean 'TAG'?)" in str(caught.value)


def test_included_file_may_redeclare_what_its_includer_declares(tmp_path: Path) -> None:
    write(tmp_path, "version: 1\nvars: {TAG: root}\ninclude: [sub/*.yaml]\n")
    write(
        tmp_path / "sub",
        'version: 1\nvars: {TAG: sub}\ntargets: {app: {tags: ["x:${TAG}"]}}\n',
        name="a.yaml",
    )
    assert load_project(tmp_path / "Buildfile.yaml").target("app").tags == ("x:root",)


def test_include_diamond_reads_a_file_once_and_skips_itself(tmp_path: Path) -> None:
    write(tmp_path, "version: 1\ninclude: ['**/*.yaml']\n")
    write(tmp_path / "a", "version: 1\ninclude: [../c/*.yaml]\n", name="a.yaml")
    write(tmp_path / "c", "version: 1\ntargets: {c: {}}\n", name="c.yaml")
    project = load_project(tmp_path / "Buildfile.yaml")
    assert project.files == (
        tmp_path / "Buildfile.yaml",
        tmp_path / "a/a.yaml",
        tmp_path / "c/c.yaml",
    )
    assert project.target("c").context == tmp_path / "c"


def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    write(
        tmp_path,
        """\
        version: 1
        targets:
          app: &common {args: {A: "1"}, push: true}
          other:
            <<: *common
            tags: [other]
    """,
    )
    other = load_project(tmp_path / "Buildfile.yaml").target("other")
    assert (other.args, other.push, other.tags) == ((("A", "1"),), True, ("other",))


def test_select_targets_order_groups_and_implied_dependencies() -> None:
    project = load_project(MONOREPO / "Buildfile.yaml")
    assert select_targets(project, []) == ("base", "api", "web")
    assert select_targets(project, ["api"]) == ("base", "api")
    assert select_targets(project, ["base"]) == ("base",)
    assert select_targets(project, ["everything", "web"]) == ("base", "api", "web")
    with pytest.raises(InputError, match=r"unknown target or group 'wbe' \(did you mean 'web'\?\)"):
        select_targets(project, ["wbe"])


def test_without_default_group_every_target_is_selected(tmp_path: Path) -> None:
    write(tmp_path, "version: 1\ntargets: {z: {depends_on: [y]}, y: {}, a: {}}\n")
    assert select_targets(load_project(tmp_path / "Buildfile.yaml"), []) == ("a", "y", "z")


def test_overrides_like_bake() -> None:
    overrides = [
        "api.tags=one",
        "*.push=true",
        "api.tags=two",
        "web.outputs=",
        "a*.args.PY=3.12",
        "api.context=services/web",
        "api.dockerfile=Dockerfile.web",
        "web.platform=linux/amd64",
        "web.target=build",
        "api.target=",
    ]
    project = load_project(MONOREPO / "Buildfile.yaml", overrides=overrides)
    api, web, base = project.target("api"), project.target("web"), project.target("base")
    assert api.tags == ("one", "two")
    assert (api.push, web.push, base.push) == (True, True, True)
    assert dict(api.args)["PY"] == "3.12"
    assert api.context == MONOREPO / "services/web"  # relative to the root Buildfile's directory
    assert api.dockerfile == MONOREPO / "services/web/Dockerfile.web"
    assert api.target is None
    assert (web.outputs, web.platform, web.target) == ((), "linux/amd64", "build")


OVERRIDE_ERRORS = [
    ("api.tags", "expected TARGET.KEY=VALUE"),
    ("api.tag=x", "cannot set 'tag' (did you mean 'tags'?)"),
    ("api.args=x", "use args.NAME=VALUE"),
    ("wbe.push=1", "no target matches 'wbe' (did you mean 'web'?)"),
    ("api.push=maybe", "push: expected true or false"),
    ("api.context=nope", "does not exist"),
    ("api.dockerfile=Nope", "does not exist"),
    ("web.platform=x86", "invalid platform"),
    ("web.tags=UP:per", "must be lowercase"),
]


@pytest.mark.parametrize(("spec", "fragment"), OVERRIDE_ERRORS)
def test_bad_override_is_named(spec: str, fragment: str) -> None:
    with pytest.raises(InputError) as caught:
        load_project(MONOREPO / "Buildfile.yaml", overrides=[spec])
    assert caught.value.where == Location(f"--set {spec}")
    assert fragment in str(caught.value)


def test_env_none_means_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAG", "from-os")
    assert dict(load_project(MONOREPO / "Buildfile.yaml").vars)["TAG"] == "dev"


def test_renaming_a_target_changes_only_names(tmp_path: Path) -> None:
    for name, tree in (("base", tmp_path / "one"), ("core", tmp_path / "two")):
        shutil.copytree(MONOREPO, tree)
        for file in tree.rglob("Buildfile.yaml"):
            text = re.sub(r"^  base:", f"  {name}:", file.read_text(), flags=re.MULTILINE)
            text = text.replace("target:base", f"target:{name}").replace(", base]", f", {name}]")
            file.write_text(text)
    one = load_project(tmp_path / "one/Buildfile.yaml")
    two = load_project(tmp_path / "two/Buildfile.yaml")
    assert dict(two.targets).keys() == dict(one.targets).keys() - {"base"} | {"core"}
    assert key_fields(one.target("base"), tmp_path / "one") == key_fields(
        two.target("core"), tmp_path / "two"
    )
    for name in ("api", "web"):
        renamed = key_fields(two.target(name), tmp_path / "two")
        contexts = tuple(
            (key, ContextRef(ref.kind, "base" if ref.value == "core" else ref.value))
            for key, ref in renamed["contexts"]
        )
        depends_on = tuple(
            sorted("base" if dep == "core" else dep for dep in renamed["depends_on"])
        )
        assert {**renamed, "contexts": contexts, "depends_on": depends_on} == key_fields(
            one.target(name), tmp_path / "one"
        )


TARGETS = {
    "base": {"context": "base", "tags": ["r/base", "r/base:1", "q/base"]},
    "api": {"context": "services/api", "depends_on": ["base"], "args": {"A": "1", "B": "2"}},
    "web": {"dockerfile": "services/web/Dockerfile.web", "contexts": {"b": "target:base"}},
    "tool": {"context": "base", "depends_on": ["web", "api"], "push": True},
}


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(order=st.permutations(sorted(TARGETS)), key_order=st.randoms(use_true_random=False))
def test_reordering_the_buildfile_changes_nothing(
    tmp_path: Path, order: list[str], key_order: random.Random
) -> None:
    def shuffled(value: object) -> object:  # keys of every mapping and items of every list
        if isinstance(value, dict):
            keys = list(value)
            key_order.shuffle(keys)
            return {key: shuffled(value[key]) for key in keys}
        if isinstance(value, list):
            return key_order.sample(value, len(value))
        return value

    base = tmp_path / "tree"
    if not base.exists():
        shutil.copytree(MONOREPO, base)
    documents = [
        {"version": 1, "targets": TARGETS},
        {"targets": {name: TARGETS[name] for name in order}, "version": 1},
    ]
    projects = []
    for index, document in enumerate(documents):
        path = base / f"Buildfile{index}.yaml"
        path.write_text(yaml.safe_dump(shuffled(document) if index else document, sort_keys=False))
        projects.append(load_project(path))
    first, second = (
        dataclasses.replace(p, path=base, files=(), targets=strip_where(p)) for p in projects
    )
    assert first == second
    expected = ("base", "api", "web", "tool")
    assert select_targets(projects[0], []) == select_targets(projects[1], []) == expected
    assert select_targets(projects[1], order) == expected


def strip_where(project: Project) -> tuple:
    return tuple(
        (name, dataclasses.replace(spec, where=Location(""))) for name, spec in project.targets
    )


def key_fields(spec: object, root: Path) -> dict[str, object]:
    """The fields of a TargetSpec that could feed a cache key, paths relative to `root`."""
    fields = {
        f.name: getattr(spec, f.name)
        for f in dataclasses.fields(spec)
        if f.name not in ("name", "where")
    }
    fields["context"] = fields["context"].relative_to(root)
    fields["dockerfile"] = fields["dockerfile"].relative_to(root)
    fields["contexts"] = tuple(
        (key, ContextRef(ref.kind, ref.value.replace(str(root), "")))
        for key, ref in fields["contexts"]
    )
    fields["secrets"] = tuple((key, src.replace(str(root), "")) for key, src in fields["secrets"])
    return fields


def write(directory: Path, text: str, *, name: str = "Buildfile.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text("FROM busybox\n")
    (directory / name).write_text(textwrap.dedent(text))
    return directory / name


def test_keys_are_taken_as_written_and_values_of_args_too(tmp_path: Path) -> None:
    write(tmp_path, "version: 1\ntargets:\n  app: {args: {NO: 1.10, on: yes, 'N': 0x1F}}\n")
    args = load_project(tmp_path / "Buildfile.yaml").target("app").args
    assert args == (("N", "0x1F"), ("NO", "1.10"), ("on", "yes"))  # not YAML 1.1 booleans


def test_recursive_alias_and_missing_file_are_input_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\ntargets:\n  a: &x {args: {L: *x}}\n")
    with pytest.raises(InputError, match="recursive YAML alias") as caught:
        load_project(path)
    assert caught.value.where == Location(path, 3)
    with pytest.raises(InputError, match="cannot read") as caught:
        load_project(tmp_path / "missing.yaml")
    assert caught.value.where == Location(tmp_path / "missing.yaml")


def test_unknown_target_lookup_suggests_a_name() -> None:
    with pytest.raises(InputError, match=r"unknown target 'apj' \(did you mean 'api'\?\)"):
        load_project(MONOREPO / "Buildfile.yaml").target("apj")


def alias_bomb() -> str:
    """~450 bytes that would expand to 9**9 (387 million) strings: "billion laughs"."""
    lines = [
        "version: 1",
        "targets: {app: {}}",
        'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
    ]
    for level in range(1, 9):
        lines.append(f"a{level}: &a{level} [{','.join([f'*a{level - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


# (Buildfile text, line, message fragment): hostile input is one InputError naming its line
HOSTILE = [
    (alias_bomb(), 7, "YAML aliases of this anchor expand to more than 100000 nodes"),
    ('version: 1\ntargets:\n  app: {context: "a\0b"}\n', 3, "special characters"),
    ("version: 1\ntargets:\n  app:\n    args: {N: " + "9" * 5000 + "}\n", 4, "5000 digits"),
    ("version: 1\nx: " + "[" * 5000 + "]" * 5000 + "\n", 2, "nested more than 64 levels"),
    ("version: 1\nx: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", 2, "nested more than 64 levels"),
    ("version: 1\ntargets:\n  app:\n    args: {D: 2024-13-45}\n", 4, "month must be in 1..12"),
    ("version: 1\ntargets:\n  app: {context: " + "d" * 5000 + "}\n", 3, "context directory"),
    ("version: 1\ntargets:\n  app: {dockerfile: " + "d" * 5000 + "}\n", 3, "Dockerfile /"),
]


@pytest.mark.parametrize(("text", "line", "fragment"), HOSTILE, ids=[
    "alias-bomb", "nul-byte", "5000-digits", "5000-nested-lists", "5000-nested-maps", "bad-date",
    "context-name-too-long", "dockerfile-name-too-long",
])  # fmt: skip
def test_hostile_yaml_is_one_input_error(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InputError) as caught:
        load_project(path)
    assert caught.value.where == Location(path, line)
    assert fragment in caught.value.args[0]
    assert "\n" not in str(caught.value)


def test_aliases_within_the_budget_are_expanded(tmp_path: Path) -> None:
    tags = ", ".join(f'"t{index}"' for index in range(90))
    text = f"version: 1\ntags: &t [{tags}]\ntargets:\n" + "".join(
        f"  app{index}: {{tags: *t}}\n" for index in range(1000)
    )  # 90,000 nodes from aliases: under the bound
    (tmp_path / "Buildfile.yaml").write_text(text)
    with pytest.raises(InputError, match="unknown key 'tags'"):  # only after expanding them all
        load_project(tmp_path / "Buildfile.yaml")


def test_a_buildfile_over_4_mib_is_refused_unread(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\n" + "#" * (4 << 20) + "\n")
    with pytest.raises(InputError, match="larger than 4 MiB") as caught:
        load_project(path)
    assert caught.value.where == Location(path)


def test_vars_doubling_each_other_stop_at_1_mib(tmp_path: Path) -> None:
    chain = "".join(f"  V{n}: '${{V{n - 1}}}${{V{n - 1}}}'\n" for n in range(1, 40))
    path = write(
        tmp_path, "version: 1\nvars:\n  V0: x\n" + chain + "targets:\n  app: {tags: ['${V39}']}\n"
    )
    with pytest.raises(InputError, match="vars expand to more than 1 MiB") as caught:
        load_project(path)
    assert caught.value.where is not None and caught.value.where.path == path


def test_a_5000_deep_chain_of_vars_is_one_input_error(tmp_path: Path) -> None:
    chain = "".join(f"  V{n}: '${{V{n - 1}}}'\n" for n in range(1, 5000))
    path = write(
        tmp_path, "version: 1\nvars:\n  V0: x\n" + chain + "targets:\n  app: {tags: ['${V4999}']}\n"
    )
    with pytest.raises(InputError, match="more than 64 deep"):
        load_project(path)
