"""Read a GitHub Actions workflow the way GitHub does, and run its jobs locally.

Reading: YAML 1.1 (``on:`` parses as True), matrices expanded with GitHub's
include/exclude rules, ``${{ }}`` expressions evaluated (contexts, string
literals, ``==``/``!=``, ``&&``/``||``/``!``, parentheses) and the ``run:``
scripts' calls of our CLI extracted after shell-variable expansion.

Running (:class:`Runner`): one job and one matrix cell at a time, each in a
fresh directory with its own workspace and HOME, as on a fresh runner. The
actions we use are stood in for: ``actions/checkout`` copies the project,
``actions/setup-python`` makes a venv of the current interpreter that sees the
running environment's site-packages (where the dependencies already are), a
``pip install -e .`` step installs the checkout into that venv the way an
editable install does (a .pth file and the console scripts, no network),
``actions/upload-artifact``/``download-artifact`` copy to and from a local
artifact store with v4's naming and layout rules. ``run:`` steps run as GitHub
runs them: ``bash -e`` in the workspace with the workflow, job and step
environments.
"""
from __future__ import annotations

import fnmatch
import glob
import itertools
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import yaml

EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}", re.S)
SCALARS = (str, int, float, bool)


# --- reading ------------------------------------------------------------------------------

def load_workflow(text: str) -> dict:
    doc = yaml.safe_load(text)
    if True in doc:  # YAML 1.1: the key `on` is the boolean true
        doc["on"] = doc.pop(True)
    return doc


def expand_matrix(job: dict) -> list[dict]:
    """The job's matrix cells, as GitHub computes them; [{}] for a job without a matrix."""
    matrix = (job.get("strategy") or {}).get("matrix")
    if matrix is None:
        return [{}]
    # (a dimension that is not a list, which GitHub refuses and check_matrices reports, counts as one value)
    dims = {k: v if isinstance(v, list) else [v] for k, v in matrix.items() if k not in ("include", "exclude")}
    cells = [dict(zip(dims, combo)) for combo in itertools.product(*dims.values())] if dims else []
    for ex in matrix.get("exclude") or []:
        cells = [c for c in cells if not all(c.get(k) == v for k, v in ex.items())]
    originals = [dict(c) for c in cells]
    extra = []
    for inc in matrix.get("include") or []:
        matched = False
        for orig, cell in zip(originals, cells):
            # an include extends every original combination it does not contradict
            if all(orig[k] == v for k, v in inc.items() if k in orig):
                cell.update({k: v for k, v in inc.items() if k not in orig})
                matched = True
        if not matched:
            extra.append(dict(inc))
    return cells + extra


# --- expressions --------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<op>==|!=|&&|\|\||!|\(|\))"
                    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_*][A-Za-z0-9_-]*)*))")


class ExprError(ValueError):
    pass


def _truthy(v: Any) -> bool:
    return v not in (None, "", 0, False)


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    if a is None or b is None:
        return (a if a is not None else "") == (b if b is not None else "")
    return a == b


def evaluate(expr: str, ctx: dict) -> Any:
    """Evaluate a GitHub expression (the part inside ``${{ }}``) against the contexts in ctx."""
    tokens, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise ExprError(f"cannot parse expression {expr!r} at {expr[pos:]!r}")
        tokens.append((m.lastgroup, m.group(m.lastgroup)))
        pos = m.end()
    tokens.append(("end", ""))
    i = 0

    def peek():
        return tokens[i]

    def take():
        nonlocal i
        i += 1
        return tokens[i - 1]

    def primary():
        kind, val = take()
        if kind == "str":
            return val[1:-1].replace("''", "'")
        if kind == "num":
            return float(val) if "." in val else int(val)
        if kind == "op" and val == "(":
            v = or_()
            if take() != ("op", ")"):
                raise ExprError(f"unbalanced parentheses in {expr!r}")
            return v
        if kind == "op" and val == "!":
            return not _truthy(primary())
        if kind == "ident":
            if val in ("true", "false", "null"):
                return {"true": True, "false": False, "null": None}[val]
            head, *rest = val.split(".")
            if head not in ctx:
                raise ExprError(f"unknown context {head!r} in {expr!r}")
            v = ctx[head]
            for part in rest:
                v = v.get(part) if isinstance(v, dict) else None
            return v
        raise ExprError(f"unexpected {val!r} in {expr!r}")

    def cmp():
        v = primary()
        while peek()[0] == "op" and peek()[1] in ("==", "!="):
            op = take()[1]
            w = primary()
            v = _eq(v, w) if op == "==" else not _eq(v, w)
        return v

    def and_():
        v = cmp()
        while peek() == ("op", "&&"):
            take()
            w = cmp()
            v = w if _truthy(v) else v
        return v

    def or_():
        v = and_()
        while peek() == ("op", "||"):
            take()
            w = and_()
            v = v if _truthy(v) else w
        return v

    out = or_()
    if peek()[0] != "end":
        raise ExprError(f"trailing {peek()[1]!r} in {expr!r}")
    return out


def _str(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def interpolate(value: Any, ctx: dict) -> Any:
    """Replace every ``${{ expr }}`` in a string (recursively in lists and dicts)."""
    if isinstance(value, str):
        return EXPR.sub(lambda m: _str(evaluate(m.group(1), ctx)), value)
    if isinstance(value, list):
        return [interpolate(v, ctx) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, ctx) for k, v in value.items()}
    return value


def expressions(value: Any) -> list[str]:
    """Every ``${{ }}`` expression in a (nested) value."""
    if isinstance(value, str):
        return EXPR.findall(value)
    if isinstance(value, list):
        return [e for v in value for e in expressions(v)]
    if isinstance(value, dict):
        return [e for k, v in value.items() for e in expressions(k) + expressions(v)]
    return []


def condition(value: Any, ctx: dict) -> bool:
    """A job's or step's ``if:`` (with or without ``${{ }}``)."""
    if value is None:
        return True
    if isinstance(value, bool):
        return value
    m = EXPR.fullmatch(value.strip())
    return _truthy(evaluate(m.group(1) if m else value, ctx))


def contexts(wf: dict, job: dict, cell: dict, vars: dict, secrets: dict, github: dict,
             step: Optional[dict] = None) -> tuple[dict, dict]:
    """(expression contexts, process environment from the workflow's, job's and step's env:)."""
    ctx = {"matrix": cell, "vars": vars, "secrets": dict(secrets), "github": github, "env": {},
           "runner": {"os": "Linux", "arch": "X64", "temp": "/tmp"}, "strategy": {}, "needs": {}, "inputs": {}}
    ctx["secrets"].setdefault("GITHUB_TOKEN", github.get("token", ""))
    env: dict[str, str] = {}
    for level in (wf, job, step or {}):
        for k, v in (level.get("env") or {}).items():
            env[k] = _str(interpolate(v, ctx))
        ctx["env"] = dict(env)
    return ctx, env


# --- run: scripts -------------------------------------------------------------------------

_SHELL_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
RUNNER_ENV = re.compile(r"^(GITHUB_|RUNNER_|HOME$|PATH$|CI$|PWD$)")
OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;", "\n"}


def expand_shell_vars(script: str, env: dict) -> str:
    """Expand $NAME and ${NAME} from env; a name no env defines (and the runner does not set) is an error."""
    def sub(m):
        name = m.group(1) or m.group(2)
        if name in env:
            return env[name]
        if RUNNER_ENV.match(name):
            return f"/runner/{name}"
        raise KeyError(f"${name} is not set by the workflow, job or step env")
    return _SHELL_VAR.sub(sub, script)


def simple_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script (split on newlines and ; && || | &)."""
    lex = shlex.shlex(script.replace("\\\n", " "), posix=True, punctuation_chars=True)
    lex.whitespace = " \t\r"
    lex.whitespace_split = True
    out, cur = [], []
    for tok in lex:
        if tok in OPERATORS or (tok and set(tok) <= set("&|;()\n")):
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(tok)
    if cur:
        out.append(cur)
    return out


def cli_argv(cmd: list[str]) -> Optional[list[str]]:
    """The arguments after `python -m builder` / `freebsd-images`, or None for any other command."""
    while cmd and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", cmd[0]):  # VAR=value cmd
        cmd = cmd[1:]
    if len(cmd) >= 3 and re.fullmatch(r"python[0-9.]*", os.path.basename(cmd[0])) and cmd[1:3] == ["-m", "builder"]:
        return cmd[3:]
    if cmd and os.path.basename(cmd[0]) == "freebsd-images":
        return cmd[1:]
    return None


# --- running ------------------------------------------------------------------------------

class StepFailed(AssertionError):
    def __init__(self, job: str, step: str, rc: int, output: str):
        super().__init__(f"{job}: step {step!r} exited {rc}:\n{output[-4000:]}")
        self.rc, self.output = rc, output


KEEP_ENV = ("PATH", "LANG", "LC_ALL", "TMPDIR")
COPY_IGNORE = shutil.ignore_patterns(".git", "build", "__pycache__", "*.egg-info", ".pytest_cache", "tests")


@dataclass
class Runner:
    """Runs jobs of one workflow run; artifacts persist across jobs like a run's artifact store."""
    workflow: dict
    project: Path                     # what actions/checkout checks out
    work: Path
    vars: dict = field(default_factory=dict)
    secrets: dict = field(default_factory=dict)
    github: dict = field(default_factory=dict)
    timeout: float = 120.0
    log: list = field(default_factory=list)  # (job, cell, what, output) for each step run or stood in for
    times: list = field(default_factory=list)  # (job, step, seconds) for each run: step

    def __post_init__(self):
        self.artifacts = self.work / "artifacts"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.github = {"actor": "ci-test", "token": "ghs_local_test_token", "repository": "local/freebsd-images",
                       "workflow": self.workflow.get("name", ""), "ref": "refs/heads/main", **self.github}

    def run_job(self, job_id: str, cell: dict) -> Optional[Path]:
        """Run one matrix cell of a job; returns its workspace, or None if its `if:` is false."""
        job = self.workflow["jobs"][job_id]
        ctx, _ = contexts(self.workflow, job, cell, self.vars, self.secrets, self.github)
        if not condition(job.get("if"), ctx):
            self.log.append((job_id, cell, "skipped by if:", ""))
            return None
        slug = "-".join(re.sub(r"[^A-Za-z0-9.]+", "_", str(v)) for v in cell.values()) or "job"
        root = self.work / f"{job_id}-{slug}"
        n = 1
        while root.exists():  # the same job again: a fresh runner
            n += 1
            root = self.work / f"{job_id}-{slug}-{n}"
        workspace, home, temp = root / "workspace", root / "home", root / "temp"
        for d in (workspace, home, temp):
            d.mkdir(parents=True)
        base = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
        base.update(CI="true", GITHUB_ACTIONS="true", GITHUB_WORKSPACE=str(workspace), HOME=str(home),
                    RUNNER_TEMP=str(temp), GITHUB_JOB=job_id)
        state = {"path": []}
        timeout = min(self.timeout, 60 * float(job.get("timeout-minutes", 360)))
        for n, step in enumerate(job.get("steps") or []):
            sctx, env = contexts(self.workflow, job, cell, self.vars, self.secrets, self.github, step)
            if not condition(step.get("if"), sctx):
                continue
            name = step.get("name") or step.get("uses") or step.get("run", "").splitlines()[0]
            if "uses" in step:
                self._action(job_id, cell, step["uses"], interpolate(step.get("with") or {}, sctx), workspace,
                             root, state)
                continue
            script = interpolate(step["run"], sctx)
            full_env = dict(base, **env)
            full_env["PATH"] = os.pathsep.join(state["path"] + [base.get("PATH", os.defpath)])
            if self._pip_install(job_id, cell, script, workspace, state):
                continue
            path = temp / f"step{n}.sh"
            path.write_text(script)
            cwd = workspace / step.get("working-directory", ".")
            t0 = time.monotonic()
            r = subprocess.run(["bash", "-e", str(path)], cwd=cwd, env=full_env, capture_output=True, text=True,
                               timeout=timeout)
            self.times.append((job_id, name, round(time.monotonic() - t0, 2)))
            self.log.append((job_id, cell, f"run: {script.strip()}", r.stdout + r.stderr))
            if r.returncode != 0:
                raise StepFailed(job_id, name, r.returncode, r.stdout + r.stderr)
        return workspace

    # -- stand-ins for the actions --

    def _action(self, job_id, cell, uses: str, with_: dict, workspace: Path, root: Path, state: dict) -> None:
        action = uses.split("@")[0]
        self.log.append((job_id, cell, f"uses: {action} {with_}", ""))
        if action == "actions/checkout":
            shutil.copytree(self.project, workspace, ignore=COPY_IGNORE, dirs_exist_ok=True)
        elif action == "actions/setup-python":
            venv = root / "python"
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
            # The runner's dependencies are the running environment's: a venv made from a venv's python
            # is based on the base interpreter, whose site-packages (--system-site-packages) may hold
            # nothing. A .pth naming this environment's site directories shows the new venv what the
            # test process has, and nothing else.
            purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
            purelib.mkdir(parents=True, exist_ok=True)
            (purelib / "_running_environment.pth").write_text("".join(f"{d}\n" for d in site.getsitepackages()))
            state["venv"] = venv
            state["path"].insert(0, str(venv / "bin"))
        elif action == "actions/upload-artifact":
            self._upload(with_, workspace)
        elif action == "actions/download-artifact":
            self._download(with_, workspace)
        else:
            raise AssertionError(f"{job_id}: no local stand-in for action {uses}")

    def _upload(self, with_: dict, workspace: Path) -> None:
        name = with_.get("name", "artifact")
        dest = self.artifacts / name
        if dest.exists():  # v4: artifact names are unique within a run
            raise AssertionError(f"artifact {name!r} uploaded twice in one run")
        paths = [p for line in str(with_["path"]).splitlines() if line.strip()
                 for p in sorted(glob.glob(str(workspace / line.strip())))]
        if not paths:
            raise AssertionError(f"upload-artifact {name!r}: no files at {with_['path']!r}")
        if len(paths) == 1 and Path(paths[0]).is_dir():
            shutil.copytree(paths[0], dest)  # a directory's contents are the artifact's root
            return
        common = Path(os.path.commonpath(paths))
        common = common if common.is_dir() else common.parent
        for p in map(Path, paths):
            target = dest / p.relative_to(common)
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, target)

    def _download(self, with_: dict, workspace: Path) -> None:
        dest = workspace / with_.get("path", ".")
        if "name" in with_:
            src = self.artifacts / with_["name"]
            if not src.is_dir():
                raise AssertionError(f"download-artifact: no artifact named {with_['name']!r} "
                                     f"(have {sorted(p.name for p in self.artifacts.iterdir())})")
            shutil.copytree(src, dest, dirs_exist_ok=True)
            return
        pattern = with_.get("pattern", "*")
        found = sorted(p for p in self.artifacts.iterdir() if fnmatch.fnmatchcase(p.name, pattern))
        if not found:
            raise AssertionError(f"download-artifact: no artifact matches {pattern!r}")
        merge = str(with_.get("merge-multiple", "false")).lower() == "true"
        for src in found:
            shutil.copytree(src, dest if merge else dest / src.name, dirs_exist_ok=True)

    def _pip_install(self, job_id, cell, script: str, workspace: Path, state: dict) -> bool:
        """Stand in for `python -m pip install -e .` (the dependencies are in the system site-packages)."""
        cmds = simple_commands(script)
        if not (len(cmds) == 1 and cmds[0][:4] == ["python", "-m", "pip", "install"]):
            return False
        args = cmds[0][4:]
        if args not in (["-c", "constraints.txt", "-e", "."], ["-c", "constraints.txt", "."]):
            # the pinned constraints are what makes two runners' builds byte-identical
            raise AssertionError(f"{job_id}: no stand-in for `{script.strip()}` (installs must use -c constraints.txt)")
        if not (workspace / "constraints.txt").is_file():
            raise AssertionError(f"{job_id}: constraints.txt is not in the checkout")
        if "venv" not in state:
            raise AssertionError(f"{job_id}: pip install before actions/setup-python")
        meta = pyproject(workspace / "pyproject.toml")["project"]
        for req in meta.get("dependencies", []):
            dist = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
            try:
                metadata.version(dist)
            except metadata.PackageNotFoundError:
                raise AssertionError(f"{job_id}: dependency {req} is not installed here; pip would fetch it") from None
        venv = state["venv"]
        site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
        site.mkdir(parents=True, exist_ok=True)
        (site / f"__editable__.{meta['name'].replace('-', '_')}.pth").write_text(f"{workspace}\n")
        for name, entry in (meta.get("scripts") or {}).items():
            module, func = entry.split(":")
            exe = venv / "bin" / name
            exe.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {module} import {func}\n"
                           f"sys.exit({func}())\n")
            exe.chmod(0o755)
        self.log.append((job_id, cell, f"stood in for: {script.strip()}", ""))
        return True


def pyproject(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ImportError:
            import pytest
            pytest.skip("reading pyproject.toml needs Python 3.11+ or the tomli package")
    return tomllib.loads(path.read_text())


# --- static checks (each returns a list of problems, empty when the workflow is right) ----

def needs(wf: dict, job_id: str) -> set[str]:
    """Every job this one needs, directly or through the jobs it needs."""
    out, todo = set(), [job_id]
    while todo:
        n = wf["jobs"][todo.pop()].get("needs") or []
        for j in [n] if isinstance(n, str) else n:
            if j not in out:
                out.add(j)
                todo.append(j)
    return out


def check_matrices(wf: dict) -> list[str]:
    problems = []
    for jid, job in wf["jobs"].items():
        matrix = (job.get("strategy") or {}).get("matrix")
        if matrix is None:
            continue
        if not isinstance(matrix, dict):
            problems.append(f"{jid}: matrix is not a mapping: {matrix!r}")
            continue
        for key, val in matrix.items():
            if key in ("include", "exclude"):
                if not (isinstance(val, list) and all(isinstance(e, dict) and e and
                                                      all(isinstance(x, SCALARS) for x in e.values()) for e in val)):
                    problems.append(f"{jid}: matrix.{key} is not a list of mappings of scalars: {val!r}")
            elif not (isinstance(val, list) and val and all(isinstance(x, SCALARS) for x in val)):
                problems.append(f"{jid}: matrix dimension {key!r} is not a non-empty list of scalars: {val!r}")
        cells = expand_matrix(job)
        if not cells:
            problems.append(f"{jid}: the matrix expands to no job at all")
        seen = [sorted(c.items(), key=str) for c in cells]
        if len({repr(s) for s in seen}) != len(seen):
            problems.append(f"{jid}: the matrix expands to duplicate cells: {cells}")
    return problems


def check_matrix_references(wf: dict) -> list[str]:
    """Every ${{ matrix.X }} a job uses is a key of every cell of that job's matrix."""
    problems = []
    for jid, job in wf["jobs"].items():
        has_matrix = (job.get("strategy") or {}).get("matrix") is not None
        cells = expand_matrix(job)
        common = set.intersection(*(set(c) for c in cells)) if cells else set()
        body = {k: v for k, v in job.items() if k != "strategy"}
        for expr in expressions(body):
            for m in re.finditer(r"\bmatrix\.([A-Za-z_][A-Za-z0-9_-]*)", expr):
                if not has_matrix:
                    problems.append(f"{jid}: uses matrix.{m.group(1)} but has no matrix")
                elif m.group(1) not in common:
                    problems.append(f"{jid}: uses matrix.{m.group(1)}, which not every cell of its matrix "
                                    f"defines (keys: {sorted(common)})")
    return problems


def artifact_steps(wf: dict, action: str, vars: dict, secrets: dict, github: dict):
    """(job, cell, interpolated with:) for every step using the action, over every matrix cell."""
    for jid, job in wf["jobs"].items():
        for cell in expand_matrix(job):
            for step in job.get("steps") or []:
                if str(step.get("uses", "")).split("@")[0] == action:
                    ctx, _ = contexts(wf, job, cell, vars, secrets, github, step)
                    yield jid, cell, interpolate(step.get("with") or {}, ctx)


def check_artifacts(wf: dict, vars: dict, secrets: dict, github: dict) -> list[str]:
    """Upload names are unique in a run; every download finds an upload of a job it needs."""
    problems = []
    uploads: dict[str, tuple[str, dict]] = {}
    for jid, cell, w in artifact_steps(wf, "actions/upload-artifact", vars, secrets, github):
        name = w.get("name", "artifact")
        if name in uploads:
            problems.append(f"{jid} {cell}: artifact {name!r} is also uploaded by {uploads[name]} (v4 refuses)")
        uploads[name] = (jid, cell)
    for jid, cell, w in artifact_steps(wf, "actions/download-artifact", vars, secrets, github):
        before = needs(wf, jid)
        available = {n for n, (j, _) in uploads.items() if j in before}
        if "name" in w:
            if w["name"] not in available:
                where = (f"by {uploads[w['name']][0]}, which {jid} does not need" if w["name"] in uploads
                         else "by no job")
                problems.append(f"{jid} {cell}: downloads artifact {w['name']!r}, uploaded {where}")
        else:
            pattern = w.get("pattern", "*")
            if not any(fnmatch.fnmatchcase(n, pattern) for n in available):
                problems.append(f"{jid} {cell}: downloads pattern {pattern!r}, which matches no artifact "
                                f"of a job it needs ({sorted(available)})")
    return problems


def matched_artifacts(wf: dict, job_id: str, cell: dict, vars: dict, secrets: dict, github: dict) -> list[str]:
    """The artifact names one cell of a job downloads (by name or pattern) from the jobs it needs."""
    before = needs(wf, job_id)
    names = [w.get("name", "artifact") for j, _, w in artifact_steps(wf, "actions/upload-artifact", vars, secrets,
                                                                        github) if j in before]
    out = []
    for j, c, w in artifact_steps(wf, "actions/download-artifact", vars, secrets, github):
        if j == job_id and c == cell:
            out += [w["name"]] if "name" in w else [n for n in names if fnmatch.fnmatchcase(n, w.get("pattern", "*"))]
    return sorted(out)


def check_cli_calls(wf: dict, parser_factory, releases, vars: dict, secrets: dict, github: dict):
    """Every call of our CLI in a run: step, for every matrix cell, parses with the real parser.

    Returns (problems, calls) where calls lists (job, cell, argv)."""
    import contextlib
    import io
    problems, calls = [], []
    for jid, job in wf["jobs"].items():
        for cell in expand_matrix(job):
            for step in job.get("steps") or []:
                if "run" not in step:
                    continue
                where = f"{jid} {cell} `{step['run'].strip()}`"
                try:
                    ctx, env = contexts(wf, job, cell, vars, secrets, github, step)
                    script = expand_shell_vars(interpolate(step["run"], ctx), env)
                except (ExprError, KeyError) as exc:
                    problems.append(f"{where}: {exc}")
                    continue
                argvs = [a for a in map(cli_argv, simple_commands(script)) if a is not None]
                if not argvs and re.search(r"-m\s+builder\b|freebsd-images", script):
                    problems.append(f"{where}: names the CLI but no call of it could be read")
                for argv in argvs:
                    err = io.StringIO()
                    try:
                        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                            ns = parser_factory().parse_args(argv)
                    except SystemExit:
                        problems.append(f"{where}: `{shlex.join(argv)}` does not parse: "
                                        f"{err.getvalue().strip().splitlines()[-1:]}")
                        continue
                    rel = getattr(ns, "release", None)
                    if isinstance(rel, str) and rel not in releases:
                        problems.append(f"{where}: `{shlex.join(argv)}` names release {rel!r}, not one of {list(releases)}")
                    calls.append((jid, cell, argv))
    return problems, calls
