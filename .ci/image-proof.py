"""CI: the production image, built and started without a Docker engine (none can run here).

Reads the Dockerfile and does what `docker build` and `docker run` would, in an empty directory standing in
for the image's file system:
  1. checks what needs no build: every base image pinned by digest, the last stage running as a non-root user
     and having a HEALTHCHECK;
  2. lays out the build stage's COPY lines from the build context, honouring .dockerignore, and runs its RUN
     lines (only python and pip commands are run on this machine: anything else stops the proof), with the
     image's absolute paths (/app, /opt, /tmp, /var, /run, /srv) moved under that directory;
  3. builds the runtime stage from the build stage's result by its COPY --from lines only, so whatever the
     Dockerfile does not carry over is missing here too;
  4. gives each process docker-compose.yml's environment for its service (${...} filled from .env.example, as
     an operator following README has it; the secrets written to the /run/secrets files its *_FILE variables
     name, each of which must be one of the service's compose secrets; Redis and PostgreSQL pointed at this
     machine's) and runs compose's migrate command against a fresh PostgreSQL database;
  5. starts the image's CMD (uvicorn) as the image's USER (a uid without write access to /app or the venv;
     with compose's read_only, none to /var/lib/corral either), runs the image's HEALTHCHECK and compose's web
     health check if it has one, and fetches /healthz, /login/, /admin/login/ and /api/v1/docs/ as a browser
     behind the TLS proxy would (the first of ALLOWED_HOSTS as Host, X-Forwarded-Proto: https): each must be
     a 200, and so must every static file they reference (and the files those stylesheets reference);
  6. starts compose's worker and beat commands and requires their compose health checks to pass (the beat
     check is first shown to fail before beat has run, so it is not a check that cannot fail).

    .venv/bin/python .ci/image-proof.py [--context DIR] [--keep]

Environment: PROOF_DATABASE (default corral_image_proof; dropped and created afresh), PROOF_POSTGRES
(postgres://postgres@127.0.0.1:5432), PROOF_REDIS_URL (redis://127.0.0.1:6379/13; flushed first).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin, urlsplit

import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
REQUEST_HOST = ""  # the first of ALLOWED_HOSTS, as the TLS proxy passes it on
PAGES = ["/healthz", "/login/", "/admin/login/", "/api/v1/docs/"]
# Top-level directories of the image that are moved under the stand-in root; the rest (/usr, /bin, /etc)
# is the base image's, and this machine's Python stands in for it.
IMAGE_DIRS = ("app", "opt", "tmp", "var", "run", "srv")
IMAGE_PATH = re.compile(r"(?<![\w.$/-])/(?:%s)(?=/|\b)(?:/[^\s:'\"=;&|)]*)?" % "|".join(IMAGE_DIRS))
RUNNABLE = {"python", "python3", "pip", "pip3"}


class ProofFailed(Exception):
    pass


def say(message: str) -> None:
    print(message, flush=True)


# --- the Dockerfile -----------------------------------------------------------------------------------------

@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, continuation lines joined, comments dropped."""
    logical: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        logical.append((start, buffer + stripped))
        buffer = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            base = expand(words[0], global_args)
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else str(len(stages))
            stages.append(Stage(base, name))
        elif not stages:
            if keyword != "ARG":
                raise ProofFailed(f"Dockerfile line {number}: {keyword} before FROM")
            key, _, value = args.partition("=")
            global_args[key] = value.strip('"')
        else:
            stages[-1].instructions.append(Instruction(keyword, args, number))
    if not stages:
        raise ProofFailed("the Dockerfile has no FROM")
    return global_args, stages


def expand(text: str, env: dict[str, str]) -> str:
    """Dockerfile variable substitution: $NAME and ${NAME} (unset names become empty, as Docker does)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), text)


def env_pairs(args: str) -> list[tuple[str, str]]:
    words = shlex.split(args)
    if words and "=" not in words[0]:  # the legacy form: ENV NAME value with spaces
        return [(words[0], " ".join(words[1:]))]
    return [tuple(word.split("=", 1)) for word in words]  # type: ignore[misc]


def exec_form(args: str) -> list[str]:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return ["/bin/sh", "-c", args]
    if not isinstance(value, list):
        raise ProofFailed(f"cannot read {args!r}")
    return value


# --- .dockerignore ------------------------------------------------------------------------------------------

def ignore_rules(context: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore's patterns as (exclude?, regex), in order; the last one that matches decides."""
    path = context / ".dockerignore"
    rules = []
    for raw in path.read_text().splitlines() if path.exists() else []:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = str(PurePosixPath(line.lstrip("!").strip().lstrip("/")))
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
        rules.append((not negate, re.compile(regex + r"\Z")))
    return rules


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """A path is left out when it, or a directory it is in, is matched by the last rule that matches."""
    parts = relative.split("/")
    excluded = False
    for exclude, regex in rules:
        if any(regex.match("/".join(parts[:depth])) for depth in range(1, len(parts) + 1)):
            excluded = exclude
    return excluded


# --- the stand-in image ---------------------------------------------------------------------------------------

class Image:
    """The image's file system under ``root``, its environment, and the commands run in it."""

    def __init__(self, root: Path, base_bin: Path) -> None:
        self.root = root
        self.base_path = f"{base_bin}:/usr/bin:/bin"
        self.env: dict[str, str] = {"PATH": self.base_path}
        self.workdir = "/"
        self.user = "root"
        self.healthcheck: list[str] | None = None
        self.cmd: list[str] | None = None
        self.entrypoint: list[str] = []
        self.skipped_runs: list[str] = []

    def prepare_runtime(self, *, read_only: bool) -> None:
        """What the runtime stage's skipped RUN lines do to the file system that matters to the application:
        the directories made with `install -d`, owned by the image's user; /tmp writable by all (compose's
        tmpfs). With compose's read_only, those directories lose their write bits as a read-only mount would."""
        uid, _, gid = self.user.partition(":")
        for command in self.skipped_runs:
            for part in re.split(r"&&|;", command):
                words = shlex.split(part)
                if words[:1] != ["install"] or "-d" not in words:
                    continue
                mode = words[words.index("-m") + 1] if "-m" in words else "0755"
                targets = [w for i, w in enumerate(words[1:], 1)
                           if w.startswith("/") and words[i - 1] not in {"-o", "-g", "-m"}]
                for target in targets:
                    path = self.host(target)
                    path.mkdir(parents=True, exist_ok=True)
                    path.chmod(int(mode, 8) & ~0o222 if read_only else int(mode, 8))
                    if os.geteuid() == 0 and uid.isdigit():
                        os.chown(path, int(uid), int(gid or uid))
                    say(f"  as the skipped RUN does: install -d {target} (mode {mode}, owner {self.user})"
                        + (", without write permission: compose runs the containers read_only" if read_only else ""))
        tmp = self.host("/tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        tmp.chmod(0o1777)

    def as_user(self, argv: list[str]) -> list[str]:
        """argv run as the image's USER (a numeric uid[:gid]), as docker run would, when this proof runs as root."""
        uid, _, gid = self.user.partition(":")
        if os.geteuid() != 0 or not uid.isdigit():
            return argv
        return ["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups", "--", *argv]

    def host(self, image_path: str) -> Path:
        path = PurePosixPath(self.workdir) / image_path
        return self.root / str(path).lstrip("/")

    def translate(self, text: str) -> str:
        return IMAGE_PATH.sub(lambda m: str(self.root) + m.group(0), text)

    def set_env(self, args: str) -> None:
        for key, value in env_pairs(args):  # image paths moved first: expanded values are this machine's
            self.env[key] = expand(self.translate(value), self.env)

    def process_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {"HOME": str(self.root / "var/lib/corral"), "LANG": "C.UTF-8", **self.env, **(extra or {})}
        # pip's configuration of this machine (its local wheel directories), as the image would have its own.
        env.update({key: value for key, value in os.environ.items() if key.startswith("PIP_") and key not in env})
        return env


def copy_into(image: Image, sources: list[Path], destination: str, rules, context: Path) -> int:
    """COPY semantics: a directory's contents go into the destination directory; a file becomes the
    destination, or goes into it when it ends with / or several sources are given."""
    target = image.host(destination)
    into_dir = destination.endswith("/") or len(sources) > 1
    copied = 0
    for source in sources:
        if not source.exists():
            raise ProofFailed(f"COPY source {source.relative_to(context)} does not exist in the build context")
        relative = source.relative_to(context).as_posix()
        if ignored(relative, rules):
            raise ProofFailed(f"COPY source {relative} is excluded by .dockerignore")
        if source.is_dir():
            for path in sorted(source.rglob("*")):
                rel = path.relative_to(context).as_posix()
                if path.is_dir() or ignored(rel, rules):
                    continue
                out = target / path.relative_to(source)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, out)
                copied += 1
        else:
            out = target / source.name if into_dir or target.is_dir() else target
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, out)
            copied += 1
    return copied


def check_runnable(command: str, number: int) -> None:
    """Only python and pip are run on this machine; anything else (apt-get, useradd) cannot be reproduced."""
    for part in re.split(r"&&|\|\||;", command):
        words = shlex.split(part)
        while words and re.match(r"^\w+=", words[0]):
            words.pop(0)  # VAR=value before the command
        if words and words[0] not in RUNNABLE:
            raise ProofFailed(f"Dockerfile line {number}: the build stage runs {words[0]!r}, which this proof "
                              "cannot reproduce without a container (only python and pip commands)")


def run_stage(stage: Stage, image: Image, context: Path, rules, built: dict[str, Path], *, final: bool) -> None:
    for ins in stage.instructions:
        if ins.keyword == "ENV":
            image.set_env(ins.args)
        elif ins.keyword == "ARG":
            key, _, value = ins.args.partition("=")
            image.env.setdefault(key, value)
        elif ins.keyword == "WORKDIR":
            image.workdir = str(PurePosixPath(image.workdir) / expand(ins.args, image.env))
            image.host(".").mkdir(parents=True, exist_ok=True)
        elif ins.keyword == "USER":
            image.user = ins.args
        elif ins.keyword == "COPY":
            words = shlex.split(ins.args)
            flags = {w.split("=", 1)[0]: w.split("=", 1)[-1] for w in words if w.startswith("--")}
            paths = [w for w in words if not w.startswith("--")]
            *sources, destination = paths
            if "--from" in flags:
                origin = built.get(flags["--from"])
                if origin is None:
                    raise ProofFailed(f"Dockerfile line {ins.line}: COPY --from={flags['--from']}: no such stage")
                for source in sources:
                    src = origin / source.lstrip("/")
                    if not src.exists():
                        raise ProofFailed(f"Dockerfile line {ins.line}: {source} is not in stage {flags['--from']}")
                    dst = image.host(destination)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    (shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True) if src.is_dir()
                     else shutil.copy2(src, dst))
                say(f"  line {ins.line}: COPY --from={flags['--from']} {' '.join(sources)} {destination}")
            else:
                resolved = [context / source for source in sources]
                count = copy_into(image, resolved, destination, rules, context)
                say(f"  line {ins.line}: COPY {' '.join(sources)} {destination} ({count} files)")
        elif ins.keyword == "RUN":
            command = ins.args  # the shell expands its variables, not Docker
            try:
                check_runnable(command, ins.line)
            except ProofFailed:
                if not final:
                    raise
                # The runtime stage's own set-up (its user, its directories) needs a container; what the
                # application needs must come from the build stage, so leaving these out hides nothing.
                say(f"  line {ins.line}: RUN skipped (needs a container): {command[:90]}")
                image.skipped_runs.append(command)
                continue
            started = time.monotonic()
            say(f"  line {ins.line}: RUN {ins.args[:110]}{'...' if len(ins.args) > 110 else ''}")
            result = subprocess.run(["/bin/sh", "-c", image.translate(command)], cwd=image.host("."),
                                    env=image.process_env(), capture_output=True, text=True)
            noise = re.compile(r"is ignored: it is neither a file nor a directory")
            output = "\n".join(line for line in (result.stdout + result.stderr).splitlines() if not noise.search(line))
            if result.returncode != 0:
                raise ProofFailed(f"Dockerfile line {ins.line}: RUN failed ({result.returncode}):\n{output[-3000:]}")
            say(f"    ok in {time.monotonic() - started:.1f} s")
        elif ins.keyword == "HEALTHCHECK":
            if ins.args.upper().startswith("NONE"):
                image.healthcheck = None
            else:
                image.healthcheck = exec_form(ins.args.split("CMD", 1)[1].strip())
        elif ins.keyword == "CMD":
            image.cmd = exec_form(ins.args)
        elif ins.keyword == "ENTRYPOINT":
            image.entrypoint = exec_form(ins.args)
        elif ins.keyword in {"EXPOSE", "LABEL", "STOPSIGNAL", "SHELL", "VOLUME"}:
            pass
        else:
            raise ProofFailed(f"Dockerfile line {ins.line}: {ins.keyword} is not understood by this proof")


# --- processes ------------------------------------------------------------------------------------------------

class Processes:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], image: Image, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")
        process = subprocess.Popen(image.as_user([image.translate(arg) for arg in argv]), cwd=image.host("."), env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.running[name] = process
        return process

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def alive(self, name: str) -> None:
        process = self.running[name]
        if process.poll() is not None:
            raise ProofFailed(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")

    def stop(self, name: str) -> None:
        process = self.running[name]
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            raise ProofFailed(f"{name} did not stop within 20 s of SIGTERM") from None

    def stop_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.running.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def run_check(argv: list[str], image: Image, env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    try:
        result = subprocess.run(image.as_user([image.translate(arg) for arg in argv]), cwd=image.host("."), env=env,
                                capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s"
    return result.returncode, (result.stdout + result.stderr).strip()


def compose_test(test: list[str] | str) -> list[str]:
    """A compose healthcheck's test as argv (CMD / CMD-SHELL), with compose's $$ escape undone."""
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    kind, *rest = test
    rest = [part.replace("$$", "$") for part in rest]
    if kind == "CMD":
        return rest
    if kind == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(rest)]
    raise ProofFailed(f"cannot run compose health check {test!r}")


def compose_env(service: dict, dotenv: dict[str, str]) -> dict[str, str]:
    """A service's environment as compose would set it: ${NAME}, ${NAME:-default} and ${NAME:?error} from the
    .env file (here .env.example), $$ as $."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2) or "", match.group(3) or ""
        value = dotenv.get(name)
        if operator.endswith("?") and not value:
            raise ProofFailed(f"compose needs {name}: {argument}")
        if operator.endswith("-") and not value:
            return argument
        return value or ""

    return {key: re.sub(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}", substitute, "" if value is None else str(value))
            .replace("$$", "$") for key, value in raw.items()}


def compose_command(service: dict, image: Image) -> list[str]:
    command = service.get("command", image.cmd)
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if any("${" in part for part in argv):
        raise ProofFailed(f"compose command {argv!r} uses interpolation this proof does not do")
    return argv


def wait_until(what: str, check, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last[0]:
            return last
        time.sleep(every)
    raise ProofFailed(f"{what} did not happen within {timeout:.0f} s: {last[1] if last else ''}")


# --- HTTP -----------------------------------------------------------------------------------------------------

class References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and ((tag == "link" and name == "href") or (tag in {"script", "img"} and name == "src")):
                self.urls.append(value)


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request("GET", path, headers={"Host": REQUEST_HOST, "X-Forwarded-Proto": "https",
                                                 "Accept": "text/html,*/*"})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def check_metrics(port: int, token: str) -> str:
    """/metrics refuses a scrape without the token and, with it, counts the pages just fetched."""
    if get(port, "/metrics")[0] != 401:
        raise ProofFailed("GET /metrics without the token did not answer 401")
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request("GET", "/metrics", headers={"Host": REQUEST_HOST, "X-Forwarded-Proto": "https",
                                                       "Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        status, body = response.status, response.read().decode()
    finally:
        connection.close()
    counted = [line for line in body.splitlines() if line.startswith('corral_http_requests_total{')
               and 'route="/login/"' in line and 'status="200"' in line]
    if status != 200 or not counted:
        raise ProofFailed(f"GET /metrics with the token: {status}, no request counter for /login/:\n{body[:1500]}")
    return f"/metrics 200 with the token (401 without): {counted[0]}"


def check_pages(port: int) -> list[str]:
    report = []
    for page in PAGES:
        status, headers, body = get(port, page)
        if status != 200:
            raise ProofFailed(f"GET {page}: {status}, not 200:\n{body[:1500].decode('utf-8', 'replace')}")
        if page == "/healthz":
            report.append(f"{page} 200 {body.decode()[:160]}")
            continue
        parser = References()
        parser.feed(body.decode("utf-8", "replace"))
        static = [u for u in parser.urls if urlsplit(urljoin(page, u)).path.startswith("/static/")]
        if not static:
            raise ProofFailed(f"GET {page}: the page references no static file: {parser.urls}")
        checked = check_static(port, [urljoin(page, u) for u in static])
        report.append(f"{page} 200, {len(checked)} static files 200: {', '.join(sorted(checked))[:300]}")
    return report


def check_static(port: int, urls: list[str]) -> set[str]:
    seen: set[str] = set()
    queue = list(urls)
    while queue:
        url = urlsplit(queue.pop()).path
        if url in seen:
            continue
        seen.add(url)
        status, headers, body = get(port, url)
        if status != 200 or not body:
            raise ProofFailed(f"GET {url}: {status} ({len(body)} bytes), not a 200 with content")
        if url.endswith(".css"):  # what a stylesheet loads in turn (fonts, images), as the manifest rewrote it
            for ref in re.findall(r"url\(\s*['\"]?([^'\")]+)['\"]?\s*\)", body.decode("utf-8", "replace")):
                if not ref.startswith(("data:", "http:", "https:", "#")):
                    queue.append(urljoin(url, ref))
    return seen


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the proof ------------------------------------------------------------------------------------------------

@contextmanager
def fresh_database(server: str, name: str) -> Iterator[str]:
    url = urlsplit(server)
    args = ["-h", url.hostname or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres"]
    subprocess.run(["dropdb", "--if-exists", *args, name], check=True, capture_output=True)
    subprocess.run(["createdb", *args, name], check=True, capture_output=True)
    try:
        yield f"{server.rstrip('/')}/{name}"
    finally:
        subprocess.run(["dropdb", "--if-exists", "--force", *args, name], capture_output=True)


def base_interpreter(directory: Path) -> Path:
    """A directory holding only `python`, standing in for the base image's /usr/local/bin: commands such as
    uvicorn must come from the image's venv, not from whatever this machine has installed. Debian's
    Python 3.11 when there is one (any user can run it, which the image's unprivileged user must)."""
    directory.mkdir(parents=True)
    real = "/usr/bin/python3.11"
    if not Path(real).exists():
        real = subprocess.run(["python3.11", "-c", "import sys; print(sys.executable)"], capture_output=True,
                              text=True, check=True).stdout.strip()
    for name in ("python", "python3", "python3.11"):
        wrapper = directory / name
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(real)} "$@"\n')
        wrapper.chmod(0o755)
    return directory


def prove(context: Path, work: Path) -> None:
    timings: dict[str, float] = {}
    phase_started = time.monotonic()
    global_args, stages = parse_dockerfile((context / "Dockerfile").read_text())
    names = {stage.name for stage in stages}

    say("== 1. static checks of the Dockerfile ==")
    for stage in stages:
        if stage.base in names:
            continue
        if not re.search(r"@sha256:[0-9a-f]{64}$", stage.base):
            raise ProofFailed(f"stage {stage.name}: base image {stage.base} is not pinned by digest")
        say(f"  stage {stage.name}: FROM {stage.base}")
    final = stages[-1]
    users = [ins.args for ins in final.instructions if ins.keyword == "USER"]
    if not users or users[-1].split(":")[0] in {"root", "0"}:
        raise ProofFailed(f"the runtime stage runs as root (USER: {users[-1] if users else 'none'})")
    if not any(ins.keyword == "HEALTHCHECK" for ins in final.instructions):
        raise ProofFailed("the runtime stage has no HEALTHCHECK")
    say(f"  runtime stage {final.name}: USER {users[-1]}, HEALTHCHECK present")

    say("== 2. the build stages, laid out from the build context ==")
    rules = ignore_rules(context)
    root = work / "image"
    root.mkdir()
    base_bin = base_interpreter(work / "base-bin")
    built: dict[str, Path] = {}
    image = Image(root, base_bin)
    for index, stage in enumerate(stages):
        if index > 0:
            # The next stage starts empty: the previous one's file system moves aside (same absolute paths
            # while it exists, so its venv still works), and only COPY --from brings anything over.
            kept = work / f"stage-{stages[index - 1].name}"
            root.rename(kept)
            built[stages[index - 1].name] = kept
            root.mkdir()
            image = Image(root, base_bin)
        if stage.base in built:
            raise ProofFailed(f"stage {stage.name} is FROM another stage: not supported by this proof")
        say(f" stage {stage.name}")
        run_stage(stage, image, context, rules, built, final=index == len(stages) - 1)
    if image.cmd is None:
        raise ProofFailed("the image has no CMD")
    compose = yaml.safe_load((context / "docker-compose.yml").read_text())["services"]
    services = ("migrate", "web", "worker", "beat")
    for required in services:
        if required not in compose:
            raise ProofFailed(f"docker-compose.yml has no {required} service")
    work.chmod(0o755)  # the image's user must reach its files, as in a container
    image.prepare_runtime(read_only=all(compose[name].get("read_only") for name in services))
    say(f"  the runtime's processes run as USER {image.user}"
        + ("" if os.geteuid() == 0 else " (not here: this proof is not running as root)"))
    timings["build"] = time.monotonic() - phase_started

    server = os.environ.get("PROOF_POSTGRES", "postgres://postgres@127.0.0.1:5432")
    redis_url = os.environ.get("PROOF_REDIS_URL", "redis://127.0.0.1:6379/13")
    redis.Redis.from_url(redis_url).flushdb()
    processes = Processes(work)
    with fresh_database(server, os.environ.get("PROOF_DATABASE", "corral_image_proof")) as database_url:
        # What compose would pass each service, its ${...} filled from .env.example as README's operator does,
        # less the two addresses that are compose's own service names (redis:6379) and the published port.
        dotenv = dict(line.split("=", 1) for line in (context / ".env.example").read_text().splitlines()
                      if "=" in line and not line.lstrip().startswith("#"))
        secret_values = {"SECRET_KEY": secrets.token_urlsafe(64), "DATABASE_URL": database_url,
                         "REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url, "EMAIL_HOST_PASSWORD": "",
                         "METRICS_TOKEN": secrets.token_urlsafe(32)}
        port = free_port()
        envs = {}
        for name in services:
            service_env = compose_env(compose[name], dotenv)
            mounted = {item if isinstance(item, str) else item["source"] for item in compose[name].get("secrets", [])}
            for key, path in list(service_env.items()):
                if not key.endswith("_FILE"):
                    continue
                setting = key.removesuffix("_FILE")
                secret = PurePosixPath(path)
                if secret.parent != PurePosixPath("/run/secrets") or secret.name not in mounted:
                    raise ProofFailed(f"compose {name}: {key}={path} is not one of its secrets {sorted(mounted)}")
                if setting not in secret_values:
                    raise ProofFailed(f"compose {name}: this proof has no value for the secret {setting}")
                target = image.host(path)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(secret_values[setting] + "\n")
            for setting in ("REDIS_URL", "CELERY_BROKER_URL"):
                if setting in service_env:
                    service_env[setting] = redis_url
            service_env = {key: image.translate(value) for key, value in service_env.items()}
            envs[name] = image.process_env({**service_env, "UVICORN_PORT": str(port),
                                             "HOSTNAME": socket.gethostname()})
        for setting in ("CORRAL_ENV", "SECRET_KEY_FILE", "DATABASE_URL_FILE", "ALLOWED_HOSTS"):
            if setting not in envs["web"]:
                raise ProofFailed(f"compose's web service sets no {setting}")
        global REQUEST_HOST
        REQUEST_HOST = envs["web"]["ALLOWED_HOSTS"].split(",")[0].strip().lstrip(".")
        say(f"  compose's environment with .env.example: CORRAL_ENV={envs['web']['CORRAL_ENV']}, "
            f"ALLOWED_HOSTS={envs['web']['ALLOWED_HOSTS']}, secrets as "
            + ", ".join(sorted(k for k in envs["web"] if k.endswith("_FILE"))))
        try:
            phase_started = time.monotonic()
            say("== 3. migrate (docker-compose.yml's migrate command), production settings ==")
            argv = compose_command(compose["migrate"], image)
            code, output = run_check(argv, image, envs["migrate"], timeout=900)
            if code != 0:
                raise ProofFailed(f"{' '.join(argv)} failed ({code}):\n{output[-3000:]}")
            say(f"  {' '.join(argv)}: ok, {output.count('Applying')} migrations applied")
            timings["migrate"] = time.monotonic() - phase_started

            phase_started = time.monotonic()
            say(f"== 4. web: the image's CMD on port {port} ==")
            argv = image.entrypoint + image.cmd
            say(f"  {' '.join(argv)}")
            processes.start("web", argv, image, envs["web"])

            def listening() -> tuple[bool, str]:
                processes.alive("web")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return True, ""
                except OSError as exc:
                    return False, str(exc)

            wait_until("web listening", listening, 60, 0.3)
            checks = [("image HEALTHCHECK", image.healthcheck)]
            if "healthcheck" in compose["web"]:
                checks.append(("compose web healthcheck", compose_test(compose["web"]["healthcheck"]["test"])))
            for name, argv in checks:
                if argv is None:
                    raise ProofFailed(f"{name}: none")
                code, output = run_check(argv, image, envs["web"])
                if code != 0:
                    raise ProofFailed(f"{name} {argv} failed ({code}): {output[-1500:]}")
                say(f"  {name} {' '.join(argv)}: ok")
            for line in check_pages(port):
                say(f"  {line}")
            say(f"  {check_metrics(port, secret_values['METRICS_TOKEN'])}")
            timings["web"] = time.monotonic() - phase_started

            phase_started = time.monotonic()
            say("== 5. worker and beat (docker-compose.yml's commands and health checks) ==")
            beat_test = compose_test(compose["beat"]["healthcheck"]["test"])
            code, output = run_check(beat_test, image, envs["beat"])
            if code == 0:
                raise ProofFailed(f"the beat health check passes before beat ever ran: {output}")
            say(f"  beat health check before beat ran: fails, as it must ({output.splitlines()[-1]})")
            for name in ("worker", "beat"):
                argv = compose_command(compose[name], image)
                say(f"  {name}: {' '.join(argv)}")
                processes.start(name, argv, image, envs[name])
            test = compose_test(compose["worker"]["healthcheck"]["test"])

            def worker_healthy() -> tuple[bool, str]:
                processes.alive("worker")
                code, output = run_check(test, image, envs["worker"])
                return code == 0, output

            _, output = wait_until("worker healthy", worker_healthy, 90, 2)
            say(f"  worker health check {' '.join(test)[:100]}: ok ({output.splitlines()[-1][:100]})")

            # Running beat writes last_run_at 3 minutes after its first task (celery's sync_every) and when
            # it stops: once it has sent a task, a SIGTERM (as docker stop sends) has it write at once.
            def beat_sent() -> tuple[bool, str]:
                processes.alive("beat")
                return "Sending due task" in processes.log_tail("beat", 200), "no task sent yet"

            wait_until("beat sending a task", beat_sent, 60, 1)
            processes.stop("beat")
            code, output = run_check(beat_test, image, envs["beat"])
            if code != 0:
                raise ProofFailed(f"beat health check after beat ran: {output}")
            say(f"  beat sent its first task; after it stopped, its health check: ok ({output.splitlines()[-1]})")
            timings["worker+beat"] = time.monotonic() - phase_started
        except ProofFailed:
            for name in processes.running:
                say(f"--- {name} log (tail) ---\n{processes.log_tail(name)}")
            raise
        finally:
            processes.stop_all()
    say("times: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=Path, default=ROOT, help="the build context (default: this repository)")
    parser.add_argument("--keep", action="store_true", help="keep the stand-in image directory")
    args = parser.parse_args()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="corral-image-proof-"))
    try:
        prove(args.context.resolve(), work)
    except ProofFailed as failure:
        say(f"IMAGE PROOF FAILED: {failure}")
        return 1
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    say(f"image proof passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
