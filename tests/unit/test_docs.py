"""The README and docs/ hold together: every relative link and anchor resolves, nothing in the repository
points at a file outside it, and every whole config file they show passes `gateway config check`."""

from __future__ import annotations

import re
import subprocess
import unicodedata
from functools import cache
from pathlib import Path

import pytest

from handler.api.openapi import openapi_path
from handler.api.route_table import ROUTES

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown page outside fenced code blocks (a `#` in a code block is no heading)."""
    lines, fence = [], ""
    for line in text.splitlines():
        opened = FENCE.match(line)
        if fence:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = ""
        elif opened:
            fence = opened.group(1)
        else:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = INLINE_CODE.sub(lambda m: m.group(0).strip("`"), heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    text = "".join(c for c in text.lower() if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return text.replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(page.read_text()):
        found.update(HTML_ANCHOR.findall(line))
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def links(page: Path) -> list[str]:
    return [target for line in prose_lines(page.read_text()) for target in LINK.findall(INLINE_CODE.sub("", line))]


def test_the_pages_are_found() -> None:
    names = {page.relative_to(ROOT).as_posix() for page in PAGES}
    assert {"README.md", "docs/interface.md", "docs/architecture.md", "docs/performance.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=[page.relative_to(ROOT).as_posix() for page in PAGES])
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(f"{target}: no such file in the repository")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading '{anchor}' in {resolved.relative_to(ROOT)}")
    assert not broken, broken


def test_the_link_checker_sees_what_github_renders() -> None:
    assert slug("Try it locally (Docker)") == "try-it-locally-docker"
    assert slug("Command line: `gateway`") == "command-line-gateway"
    assert slug("Costs, the ledger and the dashboard") == "costs-the-ledger-and-the-dashboard"
    text = "# Real\n```sh\n# not a heading [x](nowhere.md)\n```\n`[y](nowhere.md)` [z](a.md#b)\n"
    assert prose_lines(text) == ["# Real", "`[y](nowhere.md)` [z](a.md#b)"]
    assert LINK.findall(INLINE_CODE.sub("", prose_lines(text)[1])) == ["a.md#b"]


ROUTE_CELL = re.compile(r"^\| ((?:`(?:GET|POST|PATCH|DELETE)`, )*`(?:GET|POST|PATCH|DELETE) /[^`]*`) \|")


def test_the_interface_reference_lists_every_route_the_gateway_serves() -> None:
    """The user's copy of the interface names exactly the route table's routes (`handler/api/route_table.py`)."""
    listed = set()
    for line in (ROOT / "docs" / "interface.md").read_text().splitlines():
        cell = ROUTE_CELL.match(line)
        if cell:
            *methods, last = re.findall(r"`([^`]+)`", cell.group(1))
            method, path = last.split(" ", 1)
            listed |= {(m, path.split("?")[0]) for m in [*methods, method]}
    assert listed == {(spec.method, openapi_path(spec.path)) for spec in ROUTES}


# Assembled here so that this file does not name them itself.
OUTSIDE = [re.compile(re.escape(name)) for name in ("INTERFACE" + ".md", "STYLE" + ".md", "../" + "shared")]
OUTSIDE.append(re.compile(r"(?<![\w.~-])/" + "work/"))


def repository_files() -> list[Path]:
    """Every file git would commit (tracked, and new ones not ignored); outside a git checkout, every file but
    hidden folders (`.venv`, `.tools`, `.git`) and caches."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        return [
            path
            for path in ROOT.rglob("*")
            if path.is_file()
            and not any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(ROOT).parts[:-1])
        ]
    return [ROOT / name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def test_nothing_refers_to_files_outside_the_repository() -> None:
    files = repository_files()
    assert ROOT / "README.md" in files
    found = []
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # binary fixtures
        for number, line in enumerate(text.splitlines(), 1):
            if any(pattern.search(line) for pattern in OUTSIDE):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not found, found


REPOSITORY_PATH = re.compile(
    r"(?<![\w/.-])((?:handler|adapters|tests|events|infra|docs)/[a-z0-9_/.-]*\.(?:py|md|yaml|json|sh))\b"
)


def named_paths(text: str) -> set[str]:
    return {match.group(1) for match in REPOSITORY_PATH.finditer(text)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_file_a_page_names_exists(page: Path) -> None:
    """A path written in prose or a command (`pytest tests/unit/...`), not only in links, names a real file
    (placeholders are upper case: `events/FILE.json`)."""
    missing = sorted(path for path in named_paths(page.read_text()) if not (ROOT / path).exists())
    assert missing == []


def test_the_path_finder_sees_paths_in_commands_and_prose() -> None:
    text = "run `.venv/bin/pytest tests/unit/handler/api/test_route_table.py -q`; see handler/ports.py."
    assert named_paths(text) == {"tests/unit/handler/api/test_route_table.py", "handler/ports.py"}


def shell_commands(page: Path) -> list[str]:
    """The commands of a page's `sh` blocks, a command continued with `\\` joined into one line."""
    commands: list[str] = []
    for block in re.findall(r"```(?:sh|bash|shell)\n(.*?)```", page.read_text(), flags=re.S):
        commands += block.replace("\\\n", " ").splitlines()
    return commands


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_every_curl_sending_json_says_so(page: Path) -> None:
    """The gateway reads a body as JSON only when `content-type` says it is (curl's `-d` sends a form's type)."""
    for command in shell_commands(page):
        if re.search(r"\bcurl\b", command) and re.search(r"\s(-d|--data(-raw|-binary)?)\s", command):
            assert re.search(r"content-type: application/json", command, flags=re.I), command


def complete_configs() -> list[tuple[str, str]]:
    """The YAML blocks of the pages that are whole config files (a top-level `providers:` and `models:`), each with
    where it is (`docs/configuration.md:12`)."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for block in re.finditer(r"^```yaml\n(.*?)^```$", text, flags=re.S | re.M):
            body = block.group(1)
            if re.search(r"^providers:", body, re.M) and re.search(r"^models:", body, re.M):
                line = text.count("\n", 0, block.start()) + 1
                found.append((f"{page.relative_to(ROOT).as_posix()}:{line}", body))
    return found


def test_the_pages_show_whole_configs() -> None:
    pages = {where.split(":")[0] for where, _ in complete_configs()}
    assert {"README.md", "docs/configuration.md"} <= pages


@pytest.mark.parametrize(("where", "body"), complete_configs(), ids=[where for where, _ in complete_configs()])
def test_every_whole_config_a_page_shows_passes_config_check(
    where: str, body: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gateway config check`, which the pages advertise, passes on their own examples (a fallback to a model the
    file did not define failed it)."""
    from handler.entry.cli import main

    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "config.yaml"
    config.write_text(body)
    assert main(["config", "check", "--config", str(config)]) == 0, capsys.readouterr().err


def test_the_options_table_names_every_provider_type_that_takes_each_option() -> None:
    """Each provider option of the table ("| `option` | `type`, ... provider |") is taken by the types it names and by
    no other: `responses_api` and `responses_store` were documented for `openai` and `azure` alone, and taken by
    `mistral` and `deepseek` too (review)."""
    from adapters.providers.registry import REGISTRY

    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = re.findall(r"^\| ((?:`\w+`(?:, )?)+) \| ((?:`\w+`(?:, )?)+) provider", text, re.M)
    checked = set()
    for options, types in rows:
        for option in re.findall(r"`(\w+)`", options):
            taking = {name for name, adapter in REGISTRY.items() if option in adapter.provider_options}
            assert set(re.findall(r"`(\w+)`", types)) == taking, option
            checked.add(option)
    assert {"responses_api", "responses_store", "headers", "profile", "auth", "stream_usage"} <= checked


def test_the_bedrock_vpc_endpoint_example_sends_each_deployment_to_its_endpoint() -> None:
    """`base_url` on a `bedrock` provider or deployment (a VPC endpoint) was taken but documented for `anthropic` and
    `gemini` only (review). The example the options table links to routes as its page says: the provider's endpoint
    for its region, a deployment's own for its, each signed for its region."""
    import yaml

    from adapters.providers.registry import REGISTRY
    from handler.config import parse_config
    from handler.pipeline.gateway import build_adapters
    from handler.pipeline.routing import RouteControls, Router

    text = (ROOT / "docs" / "configuration.md").read_text()
    assert "[example](#bedrock-through-a-vpc-endpoint)" in re.search(r"^\| `base_url` \|.*$", text, re.M)[0]
    section = text.split("### Bedrock through a VPC endpoint", 1)[1]
    config = parse_config(yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0]), set(REGISTRY))
    router = Router(config, build_adapters(config, REGISTRY, {}), "eu-central-1")
    plan = router.plan("claude-haiku-4-5", RouteControls(), lambda model: True)
    targets = {attempt.target.region: attempt.target.base_url for attempt in plan}
    assert targets == {
        "eu-central-1": "https://vpce-0a1b2c3d4e5f67890-abcd1234.bedrock-runtime.eu-central-1.vpce.amazonaws.com",
        "us-east-1": "https://vpce-0f9e8d7c6b5a43210-wxyz9876.bedrock-runtime.us-east-1.vpce.amazonaws.com",
    }


def test_configuration_names_the_provider_types_that_take_headers() -> None:
    """The options table and the prose under "Providers" disagreed (five types against two); both follow the
    adapters' own `provider_options`."""
    from adapters.providers.registry import REGISTRY

    taking = {name for name, adapter in REGISTRY.items() if "headers" in adapter.provider_options}
    text = (ROOT / "docs" / "configuration.md").read_text()
    row = re.search(r"^\| `headers` \| (.*?) provider \|", text, re.M)
    paragraph = next(p for p in text.split("\n\n") if "may send headers of its own" in p)
    prose = paragraph.split("may send headers of its own")[0]
    assert row
    assert set(re.findall(r"`(\w+)`", row.group(1))) == taking
    assert set(re.findall(r"`(\w+)`", prose)) == taking


def interface_error_codes() -> set[str]:
    """The codes of docs/interface.md's error table (`| status | `code`, ... | when |` rows)."""
    codes: set[str] = set()
    for line in (ROOT / "docs" / "interface.md").read_text().splitlines():
        row = re.match(r"^\| (\d{3}) \| (.*?) \|", line)
        if row:
            codes |= set(re.findall(r"`([a-z_]+)`", row.group(2)))
    return codes


def codes_answered() -> dict[str, str]:
    """Every error code a client can be answered, each with where it is: the error classes' default codes and every
    `code="..."` given to one (499 `client_closed_request` is the ledger's and the metrics' alone: no client reads
    it)."""
    import inspect

    import handler.errors as errors

    found: dict[str, str] = {}
    for name, cls in inspect.getmembers(errors, inspect.isclass):
        code = getattr(cls, "default_code", None)
        if isinstance(code, str) and issubclass(cls, errors.GatewayError):
            found.setdefault(code, f"handler/errors.py:{name}")
    for path in sorted([*(ROOT / "handler").rglob("*.py"), *(ROOT / "adapters").rglob("*.py")]):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for code in re.findall(r"\bcode=\"([a-z_]+)\"", line):
                found.setdefault(code, f"{path.relative_to(ROOT)}:{number}")
    found.pop("client_closed_request", None)
    return found


def test_every_error_code_a_client_can_get_is_in_the_interface_error_table() -> None:
    """The README says every error is in the interface reference, and a client branches on `error.code`:
    `sign_in_link_expired` and `stream_interrupted` were answered and listed nowhere (found by review)."""
    listed = interface_error_codes()
    assert {code: where for code, where in codes_answered().items() if code not in listed} == {}


def test_every_answer_header_the_gateway_sets_is_documented() -> None:
    """`request-id`, set on answers in Anthropic's shape, was named on no page (found by review)."""
    pages = "\n".join(page.read_text() for page in PAGES)
    set_by_code: set[str] = set()
    for path in (ROOT / "handler").rglob("*.py"):
        text = path.read_text()
        set_by_code |= set(re.findall(r"headers\[\"([a-z-]+)\"\] =", text))
        set_by_code |= set(re.findall(r"headers\.append\(\(\"([a-z-]+)\"", text))
    assert "request-id" in set_by_code
    assert sorted(name for name in set_by_code if f"`{name}" not in pages) == []


def test_the_bedrock_inference_profiles_table_is_the_adapters() -> None:
    """docs/configuration.md's table of geographies says what the router checks and chooses: each prefix's source
    regions and the regions a deployment without one may be sent to (`INFERENCE_GEOGRAPHIES`)."""
    from adapters.providers.bedrock.adapter import INFERENCE_GEOGRAPHIES

    text = (ROOT / "docs" / "configuration.md").read_text()
    section = text.split("### Bedrock inference profiles", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([\w-]+)\.` \| (.*?) \| (.*?) \|$", section, re.M)
    region = re.compile(r"\b[a-z]{2}(?:-[a-z]+)+-\d+\b")
    said = {prefix: (region.findall(sources), region.findall(defaults)) for prefix, sources, defaults in rows}
    assert said == {
        prefix: (list(geography.sources), list(geography.defaults))
        for prefix, geography in INFERENCE_GEOGRAPHIES.items()
    }


def test_the_conformance_corpus_figures_the_pages_give_are_the_corpus() -> None:
    """docs/conformance.md and docs/testing.md give the corpus's size: said 71 requests and 497 bodies where the
    corpus held 79 (65 and 14) and 553."""
    from tests.conformance.corpus import CASES, CHAT_CASES, MESSAGES_CASES, MODELS

    text = (ROOT / "docs" / "conformance.md").read_text()
    found = re.search(
        r"(\d+) client requests, (\d+) Chat Completions bodies.*?(\d+) Messages API\s+bodies.*?that is (\d+) upstream",
        text,
        re.S,
    )
    assert found, "the corpus paragraph of docs/conformance.md moved"
    said = tuple(int(group) for group in found.groups())
    assert said == (len(CASES), len(CHAT_CASES), len(MESSAGES_CASES), len(CASES) * len(MODELS))
    assert f"{len(CASES)} client requests through all" in (ROOT / "docs" / "testing.md").read_text()


def test_the_gateways_own_region_by_default_is_given_as_it_shows_it() -> None:
    """docs/interface.md gave it as `us-east-1`, which is where it is placed; `/health`, `/v1/route` and `route
    explain` show `global`, as configuration.md says (review docrev)."""
    from handler.pipeline.gateway import shown_region

    said = re.search(
        r"The gateway's own region: `AWS_REGION`, else `GATEWAY_REGION`, else `([^`]+)`",
        (ROOT / "docs" / "interface.md").read_text(),
    )
    assert said is not None and said.group(1) == shown_region({})


@pytest.mark.parametrize("name", ["interface.md", "store.md", "deploying.md"])
def test_where_the_lambda_deadline_is_stated_api_gateways_is_named(name: str) -> None:
    """The buffered function's deadline is capped at API Gateway's too (`app.api_gateway_ms_left`); the pages that
    stated the cap gave the invocation's remaining time alone. Found by review (mergerev35)."""
    text = " ".join((ROOT / "docs" / name).read_text().split())
    at = text.find("invocation's remaining time less 1.5 s")
    assert at != -1
    while at != -1:
        assert "API Gateway" in text[max(0, at - 300) : at + 400], text[max(0, at - 300) : at + 400]
        at = text.find("invocation's remaining time less 1.5 s", at + 1)
