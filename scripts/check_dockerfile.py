#!/usr/bin/env python3
"""Checks the Dockerfile without a Docker engine.

Replays what `docker build` would do up to compiling:

1. builds the build context from the tracked files, leaving out what .dockerignore lists.
   Docker's matching rules apply: patterns are anchored at the context root, and `**` crosses
   folders. A pattern that matches a folder leaves out everything in it. The last matching
   pattern wins, so `!` brings a path back.
2. runs the manifests stage's RUN command on a copy of that context, and `cargo metadata`
   with the lock file on the result, as the stage's `cargo fetch --locked` needs;
3. runs `cargo check --locked -p rollcall` on the full context, so a source file that the
   build reads but .dockerignore leaves out fails here.

It also checks that the runtime stage runs as a numeric non-root user and that RUST_VERSION
matches the channel in rust-toolchain.toml. The base images themselves are not pulled.

Usage: python3 scripts/check_dockerfile.py [--target-dir DIR]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def instructions(text: str) -> list[tuple[str, str]]:
    """Returns the Dockerfile's instructions as (keyword, arguments), continuations joined."""
    result = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, arguments = current.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        current = ""
    return result


def stages(steps: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Groups instructions by stage name; an unnamed stage is named by its position."""
    named: dict[str, list[tuple[str, str]]] = {}
    name = None
    for keyword, arguments in steps:
        if keyword == "FROM":
            parts = arguments.split()
            lowered = [part.lower() for part in parts]
            name = parts[lowered.index("as") + 1] if "as" in lowered else f"stage{len(named)}"
            named[name] = []
        if name is not None:
            named[name].append((keyword, arguments))
    return named


def ignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """Returns .dockerignore's patterns as (excludes, regex) in file order."""
    rules = []
    for line in text.splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        excludes = not pattern.startswith("!")
        pattern = pattern.lstrip("!").strip().strip("/")
        pattern = os.path.normpath(pattern)
        regex = ""
        index = 0
        while index < len(pattern):
            if pattern.startswith("**/", index):
                regex += "(?:.*/)?"
                index += 3
            elif pattern.startswith("**", index):
                regex += ".*"
                index += 2
            elif pattern[index] == "*":
                regex += "[^/]*"
                index += 1
            elif pattern[index] == "?":
                regex += "[^/]"
                index += 1
            else:
                regex += re.escape(pattern[index])
                index += 1
        rules.append((excludes, re.compile(f"^{regex}$")))
    return rules


def is_ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Applies Docker's rule: a pattern matching the path or one of its folders decides, and
    the last one that matches wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: count + 1]) for count in range(len(parts))]
    ignored = False
    for excludes, regex in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            ignored = excludes
    return ignored


def build_context(destination: Path) -> int:
    rules = ignore_rules((ROOT / ".dockerignore").read_text())
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode().split("\0")
    copied = 0
    for path in filter(None, tracked):
        if is_ignored(path, rules) or not (ROOT / path).is_file():
            continue
        target = destination / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, target)
        copied += 1
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target-dir",
        default=str(ROOT / "target"),
        help="Cargo target folder for the check build; the repository's own by default, so "
        "that compiled dependencies are reused",
    )
    options = parser.parse_args()

    steps = instructions((ROOT / "Dockerfile").read_text())
    named = stages(steps)
    if len(named) < 2:
        fail(f"the Dockerfile has {len(named)} stage(s); expected a multi-stage build")

    channel = re.search(
        r'^channel\s*=\s*"([^"]+)"', (ROOT / "rust-toolchain.toml").read_text(), re.M
    )
    rust_version = next(
        (
            arguments.split("=", 1)[1]
            for keyword, arguments in steps
            if keyword == "ARG" and arguments.startswith("RUST_VERSION=")
        ),
        None,
    )
    if channel is None or rust_version != channel.group(1):
        fail(
            f"Dockerfile ARG RUST_VERSION={rust_version} differs from the channel in "
            f"rust-toolchain.toml ({channel.group(1) if channel else 'missing'}); make them agree"
        )

    runtime = list(named.values())[-1]
    users = [arguments for keyword, arguments in runtime if keyword == "USER"]
    if not users:
        fail("the runtime stage has no USER instruction; it must run as a non-root user")
    uid = users[-1].split(":")[0]
    if not uid.isdigit() or uid == "0":
        fail(
            f"the runtime stage runs as USER {users[-1]!r}; give a numeric user id other than 0, "
            "so Kubernetes can check runAsNonRoot"
        )
    if not any(keyword == "ENTRYPOINT" and "rollcall" in arguments for keyword, arguments in runtime):
        fail("the runtime stage's ENTRYPOINT does not run rollcall")

    manifests = named.get("manifests")
    if manifests is None:
        fail("the Dockerfile has no stage named manifests")
    runs = [arguments for keyword, arguments in manifests if keyword == "RUN"]
    if len(runs) != 1:
        fail(f"the manifests stage has {len(runs)} RUN instructions; this check expects one")

    with tempfile.TemporaryDirectory(prefix="rollcall-docker-") as work:
        context = Path(work) / "context"
        copied = build_context(context)
        print(f"build context: {copied} files after .dockerignore")

        skeleton = Path(work) / "manifests"
        shutil.copytree(context, skeleton)
        subprocess.run(["sh", "-ec", runs[0]], cwd=skeleton, check=True)
        metadata = subprocess.run(
            ["cargo", "metadata", "--locked", "--format-version", "1"],
            cwd=skeleton,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if metadata.returncode != 0:
            fail(
                "the manifests stage leaves a workspace that cargo cannot read, so `cargo fetch "
                f"--locked` would fail in the image build:\n{metadata.stderr}"
            )
        print("manifests stage: cargo reads the workspace with the lock file")

        check = subprocess.run(
            ["cargo", "check", "--locked", "-p", "rollcall", "--target-dir", options.target_dir],
            cwd=context,
            stderr=subprocess.PIPE,
            text=True,
        )
        if check.returncode != 0:
            fail(
                "rollcall does not compile from the Docker build context; a file it needs may "
                f"be listed in .dockerignore:\n{check.stderr[-4000:]}"
            )
        print("builder stage: rollcall compiles from the build context")


if __name__ == "__main__":
    main()
